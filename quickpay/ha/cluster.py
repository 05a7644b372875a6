"""`HaCluster`: the HA topology of one state directory; its children (etcd, one Patroni per
member), their start and shutdown order, leaders, and securing etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from quickpay.ha.settings import (
    ensure_tools,
)
from quickpay.ha.status import Status


class HaCluster(Status):
    """The HA topology of one state directory: its members, configuration and children."""

    # ---- processes -----------------------------------------------------------------------
    def children(self) -> list[Any]:
        """etcd, then one Patroni per member, for the supervisor (all stopped after the workers)."""
        import importlib.util

        from quickpay.supervisor import Child

        if importlib.util.find_spec("patroni") is None:
            raise SystemExit("quickpay up --ha needs Patroni: pip install -e '.[ha]'")
        etcd = ensure_tools()
        url_client = f"http://127.0.0.1:{self.etcd_client_port}"
        url_peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        out = [
            Child(
                "etcd",
                [
                    str(etcd),
                    "--name",
                    "quickpay",
                    "--data-dir",
                    str(self.dir / "etcd"),
                    "--listen-client-urls",
                    url_client,
                    "--advertise-client-urls",
                    url_client,
                    "--listen-peer-urls",
                    url_peer,
                    "--initial-advertise-peer-urls",
                    url_peer,
                    "--initial-cluster",
                    f"quickpay={url_peer}",
                    "--initial-cluster-state",
                    "new",
                    # Patroni writes every second: without compaction etcd's history
                    # grows until its space quota (2 GB) stops all writes.
                    "--auto-compaction-mode",
                    "periodic",
                    "--auto-compaction-retention",
                    "1h",
                    "--log-level",
                    "warn",
                ],
                user=self.run_as,
                stop_rank=4,
                needed=False,
                output=self.dir / "etcd.log",
                new_session=True,
            )
        ]
        python, env = self._patroni_python()
        for member in self.members:
            home = self.member_dir(member)
            out.append(
                Child(
                    f"patroni-{member.name}",
                    [python, "-m", "patroni", str(home / "patroni.yml")],
                    env=env,
                    user=self.run_as,
                    stop_signal=signal.SIGTERM,
                    stop_rank=3,
                    output=home / "patroni.log",
                    needed=False,
                    new_session=True,
                )
            )
        return out

    def _patroni_python(self) -> tuple[str, dict[str, str]]:
        """An interpreter the server's user may run, that imports this environment's Patroni.

        Ours when that user can run it; otherwise (a Python under root's home, say pyenv's) the
        system's Python of the same version, given this environment's site-packages: the same
        interpreter ABI, so the same wheels load."""
        import sysconfig

        candidates: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
        paths = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for system in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
            if os.path.exists(system):
                candidates.append((system, {"PYTHONPATH": paths, "PYTHONNOUSERSITE": "1"}))
        for python, env in candidates:
            try:
                probe = subprocess.run(
                    [python, "-c", "import patroni.__main__, patroni.dcs.etcd3, psycopg, yaml"],
                    user=self.run_as,
                    env={**os.environ, **env},
                    capture_output=True,
                    cwd="/",
                )
            except PermissionError:
                continue
            if probe.returncode == 0:
                return python, env
        raise SystemExit(
            f"quickpay up --ha: user {self.run_as} can run no Python {version} that imports Patroni "
            f"(tried {', '.join(c[0] for c in candidates)}); install Python {version} where that user "
            "can reach it (e.g. Debian's python3)"
        )

    def order_shutdown(self, children: list[Any]) -> None:
        """Stop standbys before their leader, so that the leader stops last with the newest
        WAL and is started first next time (`start_order`): standbys rank 2, leaders and
        members whose role is unknown rank 3, etcd 4 (after the shard workers, rank 0)."""
        shards = self.status()["shards"]
        leaders = {shard["leader"] for shard in shards} - {None}
        standbys = {
            m["member"]
            for shard in shards
            for m in shard["members"]
            if m["role"] in ("replica", "sync_standby", "quorum_standby")
        }
        if leaders:
            (self.dir / "leaders.json").write_text(json.dumps(sorted(leaders)))
        for child in children:
            if child.name == "etcd":
                child.stop_rank = 4
            elif child.name.startswith("patroni-"):
                child.stop_rank = 2 if child.name.removeprefix("patroni-") in standbys else 3

    def stop_orphans(self) -> list[str]:
        """Patroni starts each postmaster detached: one whose Patroni was killed (it did not
        stop in time) keeps running unmanaged. Stop those (fast shutdown, as the server's
        user); returns the members stopped."""
        from quickpay.embedded_pg import BIN_PATH

        stopped = []
        for member in self.members:
            data = self.member_dir(member) / "data"
            if not (data / "postmaster.pid").exists():
                continue
            status = subprocess.run(
                [str(BIN_PATH / "pg_ctl"), "-D", str(data), "status"], capture_output=True, user=self.run_as, timeout=30
            )
            if status.returncode == 0:
                subprocess.run(
                    [str(BIN_PATH / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                    capture_output=True,
                    user=self.run_as,
                    timeout=90,
                )
                stopped.append(member.name)
        return stopped

    def start_order(self, members: list[Any]) -> tuple[list[Any], list[Any]]:
        """The members that were leaders when the stack last stopped (they stopped last, so
        they hold the newest WAL), and the others: started in that order, no standby is
        promoted at a restart."""
        try:
            leaders = set(json.loads((self.dir / "leaders.json").read_text()))
        except (OSError, ValueError):
            leaders = set()
        first = [c for c in members if c.name.removeprefix("patroni-") in leaders]
        return first, [c for c in members if c not in first]

    def wait_leaders(self, names: list[str], supervisor: Any, timeout_s: float = 30.0) -> None:
        """Until each of `names` holds its shard's leader key (or the time is up: then the
        others start anyway and Patroni elects among them)."""
        deadline = time.monotonic() + timeout_s
        shards = {m.shard for m in self.members if m.name in names}
        while shards and time.monotonic() < deadline:
            shards = {s for s in shards if self.leader(s) not in names}
            supervisor.poll_once()
            time.sleep(0.5)

    def leader(self, shard: int, *, avoid: str | None = None, running: bool = False) -> str | None:
        """The shard's leader as Patroni sees it (`running`: only once its PostgreSQL runs);
        members other than `avoid` are asked first (a frozen member's REST API hangs)."""
        view = self.cluster_view(shard, avoid=avoid) or {}
        return next(
            (
                str(m["name"])
                for m in view.get("members", [])
                if m.get("role") in ("leader", "primary") and (not running or m.get("state") == "running")
            ),
            None,
        )

    # ---- etcd ---------------------------------------------------------------------------
    def _etcd(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_client_port}/v3/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **({"Authorization": token} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer

    def secure_etcd(self, timeout_s: float = 60.0) -> None:
        """Once etcd answers: a root user with a password, and authentication on (idempotent)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._etcd("maintenance/status", {})
                break
            except urllib.error.HTTPError:
                break  # it answers (authentication already on, say)
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"etcd did not answer on port {self.etcd_client_port}: {exc}") from exc
                time.sleep(0.2)
        try:
            self._etcd("auth/authenticate", {"name": "root", "password": self.etcd_password})
            return  # the root user exists and authentication is on
        except urllib.error.HTTPError:
            pass
        try:
            for path, body in (
                ("auth/role/add", {"name": "root"}),
                ("auth/user/add", {"name": "root", "password": self.etcd_password}),
            ):
                try:
                    self._etcd(path, body)
                except urllib.error.HTTPError as exc:
                    if exc.code == 401:
                        raise
                    # made by a start that stopped half-way: set below
            self._etcd("auth/user/changepw", {"name": "root", "password": self.etcd_password})
            self._etcd("auth/user/grant", {"user": "root", "role": "root"})
            # Before authentication was on, anyone on the host could have added a user: only
            # ours may exist (checked as root, now that authentication is on).
            users = self._etcd("auth/user/list", {})
            roles = self._etcd("auth/role/list", {})
            self._etcd("auth/enable", {})
            if set(users.get("users", [])) != {"root"} or set(roles.get("roles", [])) - {"root"}:
                raise SystemExit(
                    f"etcd on port {self.etcd_client_port} has users or roles quickpay did not make "
                    f"({users.get('users')}, {roles.get('roles')}): someone else reached it first; "
                    f"remove {self.dir / 'etcd'} and start again"
                )
        except urllib.error.HTTPError as exc:
            raise SystemExit(
                f"etcd (port {self.etcd_client_port}) refuses the root password in "
                f"{self.dir / 'etcd-root.secret'} ({exc.code}); was that file replaced?"
            ) from None
