"""`quickpay up` as a subprocess, and the CPU of the system under test (psutil)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.bench.common import READY_TIMEOUT_S, STOP_TIMEOUT_S


# ---- the stack -------------------------------------------------------------------------
class StackProcess:
    """`quickpay up` as a subprocess; stopped with SIGTERM (then SIGKILL) on exit, always."""

    def __init__(
        self,
        state_dir: Path,
        port: int,
        shards: int,
        workers: int,
        log_path: Path,
        *,
        no_rules: bool = False,
        rules: Path | None = None,
        ledger_mode: str | None = None,
        dsns: list[str] | None = None,
        topology: str = "gateway",
        batch_wait_ms: float | None = None,
        pipeline_depth: int | None = None,
        notifier: bool = False,
        ha: bool = False,
        monitor: bool = False,
        extra_argv: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.shards = shards
        self.workers = workers
        self.log_path = log_path
        self.argv = [
            sys.executable,
            "-m",
            "quickpay.cli",
            "up",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(port),
            "--shards",
            str(shards),
            "--workers",
            str(workers),
        ]
        if not monitor:
            self.argv.append("--no-monitor")
        if not notifier:
            self.argv.append("--no-notifier")
        if no_rules:
            self.argv.append("--no-rules")
        elif rules is not None:
            self.argv += ["--rules", str(rules)]
        if ledger_mode and ledger_mode != "batched":
            self.argv += ["--ledger-mode", ledger_mode]
        if topology != "gateway":
            self.argv += ["--topology", topology]
        if batch_wait_ms is not None:
            self.argv += ["--batch-wait-ms", str(batch_wait_ms)]
        if pipeline_depth is not None:
            self.argv += ["--pipeline-depth", str(pipeline_depth)]
        for dsn in dsns or []:
            self.argv += ["--dsn", dsn]
        self.ha = ha
        if ha:
            self.argv.append("--ha")
        self.argv += list(extra_argv)  # e.g. `quickpay soak`: --webhooks-allow-private
        self.external_dsns = list(dsns or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> StackProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("QUICKPAY_TOKEN_KEY", None)
        env.pop("QUICKPAY_ADMIN_TOKEN", None)
        root = Path(__file__).resolve().parents[2]
        with open(self.log_path, "wb") as handle:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "quickpay ready" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_text()[-3000:]
                self.stop()
                raise RuntimeError(f"`quickpay up` did not become ready (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def dsns(self) -> list[str]:
        if self.external_dsns:
            return list(self.external_dsns)
        if self.ha:
            from quickpay.ha import HaCluster

            return HaCluster.attach(self.state_dir).dsns()
        from quickpay.embedded_pg import EmbeddedPostgres, shard_database

        pg = EmbeddedPostgres(self.state_dir)
        return [pg.dsn(shard_database(i)) for i in range(self.shards)]

    def child_pid(self, marker: str, shard: int | None = None) -> int | None:
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if marker not in cmd:
                continue
            if shard is not None:
                if "--shard" not in cmd or cmd[cmd.index("--shard") + 1] != str(shard):
                    continue
            return int(child.pid)
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.external_dsns:
            # `up` stops PostgreSQL on a clean exit; make sure after a kill too.
            try:
                from quickpay.embedded_pg import EmbeddedPostgres

                EmbeddedPostgres(self.state_dir).stop()
            except Exception:
                pass

    def __enter__(self) -> StackProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- CPU of the system under test ------------------------------------------------------
class SutCpu:
    """user+sys CPU seconds of the `up` process tree plus the PostgreSQL server's processes."""

    def __init__(self, up_pid: int, state_dir: Path | None) -> None:
        self.up_pid = up_pid
        self.state_dir = Path(state_dir) if state_dir is not None else None

    def _postmasters(self) -> list[tuple[int, str | None]]:
        """The embedded server's postmaster, or with `up --ha` every member's, each with its
        member's name (None: the one embedded server). Patroni starts them detached
        (re-parented to init), so they are not in the `up` tree."""
        if self.state_dir is None:
            return []
        found: list[tuple[int, str | None]] = []
        pid_files: list[tuple[Path, str | None]] = [(self.state_dir / "pg" / "postmaster.pid", None)]
        for pid_file in sorted((self.state_dir / "ha").glob("*/data/postmaster.pid")):
            pid_files.append((pid_file, pid_file.parent.parent.name))  # STATE/ha/<member>/data
        for pid_file, member in pid_files:
            try:
                found.append((int(pid_file.read_text().splitlines()[0]), member))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def processes(self) -> dict[int, Any]:
        import psutil

        found: dict[int, Any] = {}
        # pid -> the HA member whose PostgreSQL it is part of (its postmaster's tree).
        self.member_of: dict[int, str] = {}
        for root, member in [(self.up_pid, None), *self._postmasters()]:
            try:
                proc = psutil.Process(root)
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for each in tree:
                found[each.pid] = each
                if member is not None:
                    self.member_of[each.pid] = member
        return found

    def sample(self) -> dict[int, float]:
        """CPU seconds per process now; also notes each process's group and, with `up --ha`,
        each member's role now (self.roles, from its PostgreSQL's process titles)."""
        import psutil

        times: dict[int, float] = {}
        self.groups: dict[int, str] = getattr(self, "groups", {})
        titles: dict[str, list[str]] = {}
        for pid, proc in self.processes().items():
            try:
                t = proc.cpu_times()
                times[pid] = t.user + t.system
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            if pid not in self.groups:
                self.groups[pid] = process_group(cmdline)
            member = self.member_of.get(pid)
            if member is None and self.groups[pid] == "patroni":
                member = patroni_member(cmdline)
                if member is not None:
                    self.member_of[pid] = member
            elif member is not None:
                titles.setdefault(member, []).append(" ".join(cmdline))
        self.roles: dict[str, str] = {member: member_role(each) for member, each in titles.items()}
        return times

    def delta_by_role(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds per role (cpu_by_role), the members' roles as `after` was sampled."""
        return cpu_by_role(
            before, after, getattr(self, "groups", {}), getattr(self, "member_of", {}), getattr(self, "roles", {})
        )

    def delta_by_group(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds per process group: gateway, shard, postgres, other."""
        groups: dict[str, float] = {}
        for pid, value in after.items():
            group = getattr(self, "groups", {}).get(pid, "other")
            groups[group] = groups.get(group, 0.0) + max(0.0, value - before.get(pid, 0.0))
        return groups

    @staticmethod
    def machine() -> tuple[float, float]:
        """(busy CPU seconds of the whole machine, monotonic time): everything, kernel
        softirq work that no process is charged for included (idle and iowait excluded)."""
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0)), time.monotonic()

    @staticmethod
    def machine_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
        return (after[0] - before[0]) / max(after[1] - before[1], 1e-9)

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU used between two samples; a process started in between counts from zero."""
        return sum(max(0.0, value - before.get(pid, 0.0)) for pid, value in after.items())


def process_group(cmdline: list[str]) -> str:
    if "gateway-worker" in cmdline:
        return "gateway"
    if "node" in cmdline and "quickpay.cli" in cmdline:
        return "node"
    if "shard-worker" in cmdline:
        return "shard"
    if "notifier" in cmdline and "quickpay.cli" in cmdline:
        return "notifier"
    if cmdline and (cmdline[0].startswith("postgres") or cmdline[0].endswith("/postgres")):
        return "postgres"  # with --ha: every member's, standbys included
    if any("patroni" in part for part in cmdline[:3]):
        return "patroni"
    if cmdline and cmdline[0].endswith("/etcd"):
        return "etcd"
    return "other"


def member_role(titles: list[str]) -> str:
    """An HA member's role from its PostgreSQL processes' titles: a standby replays WAL (its
    startup process says "recovering") and has a walreceiver; the leader has neither."""
    if any("recovering" in title or "walreceiver" in title for title in titles):
        return "standby"
    return "leader"


def patroni_member(cmdline: list[str]) -> str | None:
    """The member a Patroni process runs (`python -m patroni STATE/ha/<member>/patroni.yml`)."""
    if cmdline and cmdline[-1].endswith("patroni.yml"):
        return Path(cmdline[-1]).parent.name
    return None


def cpu_by_role(
    before: dict[int, float],
    after: dict[int, float],
    groups: dict[int, str],
    member_of: dict[int, str],
    roles: dict[str, str],
) -> dict[str, float]:
    """CPU seconds between two samples per role: the process groups (gateway, shard, etcd, ...),
    with an HA member's PostgreSQL and Patroni split by its role: postgres_leader,
    postgres_standby, patroni_leader, patroni_standby (standbys added up). The one embedded
    server stays "postgres". A process started in between counts from zero."""
    out: dict[str, float] = {}
    for pid, value in after.items():
        group = groups.get(pid, "other")
        member = member_of.get(pid)
        key = (
            f"{group}_{roles.get(member, 'unknown')}"
            if member is not None and group in ("postgres", "patroni")
            else group
        )
        out[key] = out.get(key, 0.0) + max(0.0, value - before.get(pid, 0.0))
    return out
