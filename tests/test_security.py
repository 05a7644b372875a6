"""Security of the infrastructure (issue 7, section 4).

Proves: the embedded PostgreSQL refuses password-less and wrong-password connections on
TCP and on its unix socket (no `trust` in pg_hba.conf), its socket directory is private
(0700), nothing under the state directory is world-writable and no run directory sits at a
predictable /tmp name; secret files are 0600 before their first byte is written, whatever
the umask; weak or placeholder secrets stop the gateway, shard worker, monitor and `up` with
a message naming `quickpay secrets`, which writes a private .env and never overwrites one
by accident; the shard protocol (TCP or unix) runs no operation for a peer that has not
proven it holds the cluster secret, and the client refuses a server that cannot prove it;
no secret appears on a process command line; secret comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pwd
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Stack, free_port, start_stack, stop_stack

from ledger import handshake
from ledger.client import ShardAuthenticationError, ShardClient, ShardUnavailable
from ledger.protocol import encode_frame
from quickpay import secret_policy
from quickpay.config import StateDir, ensure_private_dir, private_socket_dir, read_private_file, write_private_file
from quickpay.embedded_pg import EmbeddedPostgres, shard_database

# The values docker-compose.yml shipped before this change: anyone who read the file
# could sign partner tokens and call the admin API.
OLD_COMPOSE_TOKEN_KEY = "change-me-to-64-hex-characters-of-randomness-0123456789abcdef"
OLD_COMPOSE_ADMIN_TOKEN = "change-me-admin-token"
OLD_COMPOSE_DSN = "postgresql://postgres:quickpay@pg0:5432/quickpay_shard_0"


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- the secret policy ------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, why",
    [
        (OLD_COMPOSE_TOKEN_KEY, "characters long"),
        (OLD_COMPOSE_TOKEN_KEY + "00112233", "placeholder word 'change'"),
        ("example-" + secrets.token_hex(32), "placeholder word 'example'"),
        ("MySecret" + secrets.token_hex(32), "placeholder word 'secret'"),
        ("a" * 64, "distinct characters"),
        ("0123456789abcdef" * 4, "repeats a shorter pattern"),
        ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#", "neighbouring characters"),
        ("iemuaayqaiqaqeaammaeaqmayqaeuuqaqqmaeaqyeimeqaqiqyueaqqueiaquaqa", "distinct characters"),
        ("qqaqqqqqqaaqaaqaqaaqqaqqqaqqqaaaqaqqaqaaaaaqaaqqaqqaqaqqcegikmos", "entropy"),
    ],
    # Fixed ids: two of the values are random, and pytest-xdist's workers must collect the same ids.
    ids=[
        "old-compose-key",
        "old-compose-key-longer",
        "example-word",
        "secret-word",
        "one-character",
        "repeated-pattern",
        "neighbouring",
        "few-distinct",
        "low-entropy",
    ],
)
def test_weak_keys_are_refused_with_the_reason(value: str, why: str) -> None:
    problem = secret_policy.secret_problem(value, secret_policy.KEY)
    assert problem is not None and why in problem, (value, problem)


def test_generated_and_usual_random_secrets_pass() -> None:
    for _ in range(200):
        assert secret_policy.secret_problem(secret_policy.generate(), secret_policy.KEY) is None
        assert secret_policy.secret_problem(secrets.token_hex(20), secret_policy.TOKEN) is None
        assert secret_policy.secret_problem(secrets.token_urlsafe(32), secret_policy.TOKEN) is None
    # An admin token made by an older state directory (24 random bytes as hex) still passes.
    assert secret_policy.secret_problem(secrets.token_hex(24), secret_policy.TOKEN) is None
    assert secret_policy.secret_problem(OLD_COMPOSE_ADMIN_TOKEN, secret_policy.TOKEN) is not None
    assert secret_policy.secret_problem(secrets.token_hex(16), secret_policy.TOKEN) is not None  # 32 < 40


def test_require_strong_says_how_to_make_one() -> None:
    with pytest.raises(SystemExit) as refused:
        secret_policy.require_strong("QUICKPAY_TOKEN_KEY", OLD_COMPOSE_TOKEN_KEY, secret_policy.KEY)
    assert "QUICKPAY_TOKEN_KEY" in str(refused.value) and "quickpay secrets" in str(refused.value)


# ---- secret files -----------------------------------------------------------------------
@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def write_modes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, int]]:
    """The mode of every file under tmp_path at the moment content is written to it."""
    seen: list[tuple[str, int]] = []
    real_write, real_open = os.write, io.open

    def checked_write(fd: int, data: Any) -> int:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(os.fstat(fd).st_mode)))
        return real_write(fd, data)

    class CheckedFile:
        def __init__(self, handle: Any) -> None:
            self._handle = handle

        def write(self, data: Any) -> int:
            seen.append((self._handle.name, stat.S_IMODE(os.fstat(self._handle.fileno()).st_mode)))
            return int(self._handle.write(data))

        def __enter__(self) -> CheckedFile:
            return self

        def __exit__(self, *exc: Any) -> None:
            self._handle.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._handle, name)

    def checked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and str(tmp_path) in str(file):
            return CheckedFile(handle)
        return handle

    monkeypatch.setattr(os, "write", checked_write)
    monkeypatch.setattr(io, "open", checked_open)
    return seen


def test_state_secrets_are_private_before_their_first_byte(
    tmp_path: Path, umask_zero: None, write_modes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in ("QUICKPAY_TOKEN_KEY", "QUICKPAY_ADMIN_TOKEN", "QUICKPAY_CLUSTER_SECRET"):
        monkeypatch.delenv(env, raising=False)
    state = StateDir(tmp_path / "state").ensure()
    values = [state.token_key.decode(), state.admin_token, state.cluster_secret, EmbeddedPostgres(state.path).password]
    writes = [(name, mode) for name, mode in write_modes if "/state/" in name]
    assert len(writes) >= 4, write_modes
    assert all(mode == 0o600 for _, mode in writes), writes
    for name in ("token.key", "admin.token", "cluster.secret", "pg.pgpass"):
        assert _mode(state.path / name) == 0o600
    for value in values:
        assert secret_policy.secret_problem(value, secret_policy.KEY) is None
    # read again: the same secrets, not new ones
    assert state.token_key.decode() == values[0] and StateDir(state.path).cluster_secret == values[2]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_private_file_mode_does_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_private_file(tmp_path / "new", "s3cr3t")
        write_private_file(tmp_path / "new", "replaced", replace=True)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o600 and (tmp_path / "new").read_text() == "replaced"


def test_private_file_never_follows_or_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("untouched")
    (tmp_path / "planted").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_private_file(tmp_path / "planted", "secret")
    with pytest.raises(FileExistsError):
        write_private_file(target, "secret")
    assert target.read_text() == "untouched"


def test_readable_secret_file_is_refused(tmp_path: Path) -> None:
    write_private_file(tmp_path / "token.key", secret_policy.generate())
    os.chmod(tmp_path / "token.key", 0o644)
    with pytest.raises(SystemExit, match="chmod 600"):
        read_private_file(tmp_path / "token.key")


# ---- private directories -------------------------------------------------------------
def test_private_dir_checks_what_it_finds(tmp_path: Path) -> None:
    made = ensure_private_dir(tmp_path / "made")
    assert _mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert _mode(ensure_private_dir(loose)) == 0o700  # ours and safe: tightened
    for bad_mode in (0o777, 0o770, 0o1777):
        writable = tmp_path / f"writable-{bad_mode:o}"
        writable.mkdir()
        os.chmod(writable, bad_mode)
        with pytest.raises(SystemExit, match="other users can write"):
            ensure_private_dir(writable)
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(SystemExit, match="not a directory"):
        ensure_private_dir(tmp_path / "link")
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(SystemExit, match="belongs to uid 65534"):
            ensure_private_dir(foreign)


def test_socket_dir_for_a_long_state_path_is_a_fresh_recorded_tempdir(tmp_path: Path) -> None:
    state = tmp_path / ("d" * 60) / ("e" * 60)
    state.mkdir(parents=True)
    first = private_socket_dir(state, "run", "shard-63.sock")
    try:
        assert not str(first).startswith(str(state)) and len(str(first / "shard-63.sock")) <= 107
        assert _mode(first) == 0o700 and os.lstat(first).st_uid == os.geteuid()
        assert read_private_file(state / "run.path").strip() == str(first)
        assert private_socket_dir(state, "run", "shard-63.sock") == first  # recorded, reused
        assert private_socket_dir(state, "run", "shard-63.sock", create=False) == first
        os.chmod(first, 0o777)  # someone loosened it: refuse, do not use it
        with pytest.raises(SystemExit, match="other users can write"):
            private_socket_dir(state, "run", "shard-63.sock")
    finally:
        os.chmod(first, 0o700)
        first.rmdir()
    again = private_socket_dir(state, "run", "shard-63.sock")  # vanished (reboot): a new one
    try:
        assert again != first and read_private_file(state / "run.path").strip() == str(again)
    finally:
        again.rmdir()


# ---- quickpay secrets ---------------------------------------------------------------------
def _quickpay(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else dict(os.environ),
    )


def _read_env(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_secrets_command_writes_a_private_env_and_never_overwrites_by_accident(
    tmp_path: Path, umask_zero: None
) -> None:
    from quickpay.cli import main

    out = tmp_path / ".env"
    assert main(["secrets", "--out", str(out)]) == 0
    assert _mode(out) == 0o600
    first = _read_env(out)
    assert set(first) == {
        "QUICKPAY_TOKEN_KEY",
        "QUICKPAY_ADMIN_TOKEN",
        "QUICKPAY_CLUSTER_SECRET",
        "POSTGRES_PASSWORD",
        "QUICKPAY_REPLICATION_PASSWORD",
        "QUICKPAY_PATRONI_PASSWORD",
        "QUICKPAY_ETCD_PASSWORD",
    }
    assert len(set(first.values())) == 7
    for value in first.values():
        assert secret_policy.secret_problem(value, secret_policy.KEY) is None
    with pytest.raises(SystemExit, match="--force"):
        main(["secrets", "--out", str(out)])
    assert _read_env(out) == first
    assert main(["secrets", "--out", str(out), "--force"]) == 0
    second = _read_env(out)
    assert _mode(out) == 0o600 and set(second) == set(first)
    assert all(second[k] != first[k] for k in first)


def test_secrets_command_default_is_dot_env_in_the_working_directory(tmp_path: Path) -> None:
    result = _quickpay("secrets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _mode(tmp_path / ".env") == 0o600
    # The secrets are not printed.
    for value in _read_env(tmp_path / ".env").values():
        assert value not in result.stdout + result.stderr


# ---- processes refuse weak secrets at start -------------------------------------------
def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}
    env.update(extra)
    return env


def _assert_refused(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert name in result.stderr and "quickpay secrets" in result.stderr, result.stderr[-2000:]


def test_gateway_refuses_the_old_compose_placeholders() -> None:
    good = secret_policy.generate
    result = _quickpay(
        "gateway-worker",
        "--port",
        str(free_port()),
        "--shard-addrs",
        "tcp:127.0.0.1:1",
        env=_clean_env(
            QUICKPAY_TOKEN_KEY=OLD_COMPOSE_TOKEN_KEY, QUICKPAY_ADMIN_TOKEN=good(), QUICKPAY_CLUSTER_SECRET=good()
        ),
    )
    _assert_refused(result, "QUICKPAY_TOKEN_KEY")
    result = _quickpay(
        "gateway-worker",
        "--port",
        str(free_port()),
        "--shard-addrs",
        "tcp:127.0.0.1:1",
        env=_clean_env(
            QUICKPAY_TOKEN_KEY=good(), QUICKPAY_ADMIN_TOKEN=OLD_COMPOSE_ADMIN_TOKEN, QUICKPAY_CLUSTER_SECRET=good()
        ),
    )
    _assert_refused(result, "QUICKPAY_ADMIN_TOKEN")
    result = _quickpay(
        "gateway-worker",
        "--port",
        str(free_port()),
        "--shard-addrs",
        "tcp:127.0.0.1:1",
        env=_clean_env(QUICKPAY_TOKEN_KEY=good(), QUICKPAY_ADMIN_TOKEN=good(), QUICKPAY_CLUSTER_SECRET="x" * 64),
    )
    _assert_refused(result, "QUICKPAY_CLUSTER_SECRET")


def test_shard_worker_refuses_a_missing_or_weak_cluster_secret_or_db_password() -> None:
    args = (
        "shard-worker",
        "--shard",
        "0",
        "--shards",
        "1",
        "--listen",
        "tcp:127.0.0.1:1",
        "--shard-addrs",
        "tcp:127.0.0.1:1",
    )
    dsn = "postgresql://postgres@127.0.0.1:1/quickpay_shard_0"
    _assert_refused(_quickpay(*args, "--dsn", dsn, env=_clean_env()), "QUICKPAY_CLUSTER_SECRET")
    _assert_refused(
        _quickpay(*args, "--dsn", dsn, env=_clean_env(QUICKPAY_CLUSTER_SECRET="change-me")), "QUICKPAY_CLUSTER_SECRET"
    )
    _assert_refused(
        _quickpay(
            *args, env=_clean_env(QUICKPAY_CLUSTER_SECRET=secret_policy.generate(), QUICKPAY_DSNS=OLD_COMPOSE_DSN)
        ),
        "database password",
    )


def test_monitor_refuses_a_placeholder_db_password_or_cluster_secret() -> None:
    _assert_refused(_quickpay("monitor", env=_clean_env(QUICKPAY_DSNS=OLD_COMPOSE_DSN)), "database password")
    good_dsn = f"postgresql://postgres:{secret_policy.generate()}@127.0.0.1:1/quickpay_shard_0"
    _assert_refused(
        _quickpay("monitor", "--dsn", good_dsn, env=_clean_env(QUICKPAY_CLUSTER_SECRET="placeholder" * 6)),
        "QUICKPAY_CLUSTER_SECRET",
    )


def test_up_refuses_weak_secrets_before_starting_anything(tmp_path: Path) -> None:
    result = _quickpay(
        "up",
        "--state-dir",
        str(tmp_path / "state"),
        "--port",
        str(free_port()),
        env=_clean_env(QUICKPAY_TOKEN_KEY=OLD_COMPOSE_TOKEN_KEY),
    )
    _assert_refused(result, "QUICKPAY_TOKEN_KEY")
    assert not (tmp_path / "state" / "pg").exists()


# ---- the shard-protocol handshake, in process -----------------------------------------------
class FakeWorker:
    """Stands in for ShardWorker behind the real server protocol: records every op run."""

    def __init__(self, secret: bytes) -> None:
        self.cluster_secret = secret
        self.ran: list[str] = []

    def dispatch(self, op: str, args: Any, reply: Any) -> None:
        self.ran.append(op)
        reply(True, {"op": op})


async def _serve(worker: FakeWorker, unix_path: str | None = None) -> tuple[asyncio.AbstractServer, str]:
    from ledger.worker import _ServerProtocol

    loop = asyncio.get_running_loop()
    if unix_path is not None:
        server = await loop.create_unix_server(lambda: _ServerProtocol(worker), unix_path)  # type: ignore[arg-type]
        return server, f"unix:{unix_path}"
    server = await loop.create_server(lambda: _ServerProtocol(worker), "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp:127.0.0.1:{port}"


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), timeout)
        if not chunk:
            return data
        data += chunk


def _fund_frame() -> bytes:
    return encode_frame(
        [
            (
                1,
                "fund",
                {
                    "transfer_id": "pay_x_0",
                    "account_id": "acc_x",
                    "amount_minor": 10**9,
                    "currency": "CNY",
                    "reference": "free money",
                    "body_hash": "x",
                },
            )
        ]
    )


def test_a_raw_frame_before_the_handshake_is_cut_off_and_runs_nothing() -> None:
    async def main() -> None:
        worker = FakeWorker(secret_policy.generate().encode())
        server, address = await _serve(worker)
        port = int(address.rsplit(":", 1)[1])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_fund_frame())
            received = await _read_until_closed(reader)
            writer.close()
            assert received == received[: handshake.SERVER_HELLO_BYTES]  # the hello, then the door shuts
            assert worker.ran == []
        finally:
            server.close()

    asyncio.run(main())


def test_a_silent_peer_is_disconnected_after_the_handshake_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.worker

    monkeypatch.setattr(ledger.worker, "HANDSHAKE_TIMEOUT_S", 0.3)

    async def main() -> None:
        worker = FakeWorker(secret_policy.generate().encode())
        server, address = await _serve(worker)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(address.rsplit(":", 1)[1]))
            writer.write(handshake.MAGIC)  # starts, never finishes
            received = await _read_until_closed(reader, timeout=30)
            assert len(received) == handshake.SERVER_HELLO_BYTES
            writer.close()
        finally:
            server.close()

    asyncio.run(main())


def test_wrong_secret_is_refused_and_right_one_works_over_tcp_and_unix(tmp_path: Path) -> None:
    async def main() -> None:
        secret = secret_policy.generate()
        worker = FakeWorker(secret.encode())
        tcp, tcp_address = await _serve(worker)
        unix, unix_address = await _serve(worker, str(tmp_path / "s.sock"))
        try:
            for address in (tcp_address, unix_address):
                wrong = ShardClient(address, secret=secret_policy.generate(), call_timeout_s=5)
                with pytest.raises(ShardAuthenticationError):
                    await wrong.call("fund", {"amount_minor": 1})
                await wrong.close()
                assert worker.ran == []
                right = ShardClient(address, secret=secret, call_timeout_s=5)
                assert await right.call("ping") == {"op": "ping"}
                await right.close()
                assert worker.ran == ["ping"]
                worker.ran.clear()
        finally:
            tcp.close()
            unix.close()

    asyncio.run(main())


def test_a_client_proof_cannot_be_replayed_on_another_connection() -> None:
    async def main() -> None:
        secret = secret_policy.generate().encode()
        worker = FakeWorker(secret)
        server, address = await _serve(worker)
        port = int(address.rsplit(":", 1)[1])
        try:
            # An honest client's handshake, recorded by an eavesdropper.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = handshake.ClientHandshake(secret)
            step = client.feed(await reader.readexactly(handshake.SERVER_HELLO_BYTES))
            recorded = step.send
            writer.write(recorded)
            assert client.feed(await reader.readexactly(handshake.SERVER_PROOF_BYTES)).done
            writer.close()
            # Replayed on a new connection (a fresh server nonce): refused, nothing runs.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readexactly(handshake.SERVER_HELLO_BYTES)
            writer.write(recorded + _fund_frame())
            assert await _read_until_closed(reader) == b""
            writer.close()
            assert worker.ran == []
        finally:
            server.close()

    asyncio.run(main())


def test_the_client_refuses_a_server_that_cannot_prove_the_secret() -> None:
    """An impostor shard (no secret) gets no request: the client checks the server's proof."""
    received_after_proof: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(handshake.MAGIC + os.urandom(handshake.NONCE_BYTES))
        await reader.readexactly(handshake.CLIENT_PROOF_BYTES)
        writer.write(os.urandom(handshake.SERVER_PROOF_BYTES))  # a guess
        received_after_proof.append(await _read_until_closed(reader))
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ShardClient(f"tcp:127.0.0.1:{port}", secret=secret_policy.generate(), call_timeout_s=5)
        try:
            with pytest.raises(ShardAuthenticationError, match="proof"):
                await client.call("credit", [["pay_x", 1, "acc_x", 100, "CNY", 0]])
            for _ in range(100):
                if received_after_proof:
                    break
                await asyncio.sleep(0.05)
            assert received_after_proof == [b""]
        finally:
            await client.close()
            server.close()

    asyncio.run(main())


def test_a_client_without_a_cluster_secret_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUICKPAY_CLUSTER_SECRET", raising=False)

    async def main() -> None:
        client = ShardClient("tcp:127.0.0.1:1")
        with pytest.raises(ShardUnavailable, match="QUICKPAY_CLUSTER_SECRET"):
            await client.call("ping")
        await client.close()

    asyncio.run(main())


# ---- constant-time comparisons ----------------------------------------------------------
def test_token_cache_holds_no_tokens_and_admin_check_takes_any_input() -> None:
    from gateway.auth import TokenService, admin_token_matches, hash_secret, secret_matches

    service = TokenService(secret_policy.generate().encode())
    token = service.issue("ptn_x", 1_000)
    assert service.verify(token, 1_001) == "ptn_x"
    assert service.verify(token, 1_002) == "ptn_x"  # from the cache
    assert all(isinstance(k, bytes) and token.encode() not in k for k in service._verified)
    assert service.verify(token[:-2] + "xx", 1_001) is None
    admin = secret_policy.generate()
    assert admin_token_matches(admin, admin)
    assert not admin_token_matches(admin[:-1], admin) and not admin_token_matches("", admin)
    assert not admin_token_matches("\udcff\ud800", admin)  # undecodable header bytes: no exception
    assert secret_matches("s", hash_secret("s")) and not secret_matches("t", hash_secret("s"))


# ---- a real shard worker over TCP ------------------------------------------------------------
@pytest.fixture(scope="module")
def tcp_shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real shard worker (its own embedded PostgreSQL) listening on TCP, as in compose."""
    base = tmp_path_factory.mktemp("tcp-shard")
    pg = EmbeddedPostgres(base / "state")
    pg.start()
    pg.create_databases([shard_database(0)])
    secret = secret_policy.generate()
    port = free_port()
    address = f"tcp:127.0.0.1:{port}"
    log = open(base / "worker.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quickpay.cli",
            "shard-worker",
            "--shard",
            "0",
            "--shards",
            "1",
            "--dsn",
            pg.dsn(shard_database(0)),
            "--listen",
            address,
            "--shard-addrs",
            address,
            "--no-rules",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_clean_env(QUICKPAY_CLUSTER_SECRET=secret),
    )

    async def ping() -> Any:
        client = ShardClient(address, secret=secret, call_timeout_s=5)
        try:
            return await client.call("ping")
        finally:
            await client.close()

    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                asyncio.run(ping())
                break
            except ShardUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((base / "worker.log").read_text()[-4000:]) from None
                time.sleep(0.2)
        yield {"address": address, "port": port, "secret": secret, "pg": pg, "proc": proc, "log": base / "worker.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        pg.stop()


async def _transfer_rows(pg: EmbeddedPostgres, transfer_id: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn(shard_database(0)))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM transfers WHERE id = $1", transfer_id))
    finally:
        await conn.close()


def test_unauthenticated_tcp_peer_cannot_fund(tcp_shard: dict[str, Any]) -> None:
    from kernel.ids import new_account_id, payment_id_for

    account = new_account_id()
    transfer_id = payment_id_for("attacker", account, 0)

    async def main() -> None:
        owner = ShardClient(tcp_shard["address"], secret=tcp_shard["secret"], call_timeout_s=10)
        await owner.call("open_accounts", [{"id": account, "currency": "CNY"}])
        frame = encode_frame(
            [
                (
                    1,
                    "fund",
                    {
                        "transfer_id": transfer_id,
                        "account_id": account,
                        "amount_minor": 10**12,
                        "currency": "CNY",
                        "reference": "free money",
                        "body_hash": "x",
                    },
                )
            ]
        )
        # 1. a raw peer that skips the handshake
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_shard["port"])
        writer.write(frame)
        received = await _read_until_closed(reader)
        writer.close()
        assert len(received) <= handshake.SERVER_HELLO_BYTES
        # 2. a peer that knows the protocol but not the secret
        intruder = ShardClient(tcp_shard["address"], secret=secret_policy.generate(), call_timeout_s=10)
        with pytest.raises(ShardAuthenticationError):
            await intruder.call(
                "fund",
                {
                    "transfer_id": transfer_id,
                    "account_id": account,
                    "amount_minor": 10**12,
                    "currency": "CNY",
                    "reference": "free money",
                    "body_hash": "x",
                },
            )
        await intruder.close()
        await asyncio.sleep(0.5)  # anything that had been queued would have committed by now
        balance = await owner.call("balance", {"id": account})
        assert balance["balance_minor"] == 0
        assert await _transfer_rows(tcp_shard["pg"], transfer_id) == 0
        # 3. the right secret works
        funded = await owner.call(
            "fund",
            {
                "transfer_id": transfer_id,
                "account_id": account,
                "amount_minor": 500,
                "currency": "CNY",
                "reference": "real funding",
                "body_hash": "y",
            },
        )
        assert funded is not None
        assert (await owner.call("balance", {"id": account}))["balance_minor"] == 500
        assert await _transfer_rows(tcp_shard["pg"], transfer_id) == 1
        await owner.close()

    asyncio.run(main())
    assert tcp_shard["proc"].poll() is None, "the worker must survive intruders"
    assert "closing unauthenticated shard-protocol connection" in tcp_shard["log"].read_text()


# ---- the embedded PostgreSQL and a whole stack ---------------------------------------------
def _connect_error(**kwargs: Any) -> str | None:
    import asyncpg

    async def main() -> str | None:
        try:
            conn = await asyncpg.connect(
                user="postgres", database="postgres", passfile="/nonexistent", timeout=10, **kwargs
            )
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            return type(exc).__name__
        await conn.close()
        return None

    return asyncio.run(main())


def _assert_password_required(pg: EmbeddedPostgres) -> None:
    for where in ({"host": "127.0.0.1", "port": pg.port}, {"host": str(pg.socket_dir), "port": pg.port}):
        assert _connect_error(**where) is not None, f"password-less connection accepted at {where}"
        assert _connect_error(password="wrong", **where) is not None, f"wrong password accepted at {where}"
        assert _connect_error(password=pg.password, **where) is None
    hba = (pg.data_dir / "pg_hba.conf").read_text()
    lines = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert lines and all(line[-1] == "scram-sha-256" for line in lines), hba


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack started as an operator would: no secrets in the environment."""
    saved = os.environ.pop("QUICKPAY_CLUSTER_SECRET", None)
    try:
        s = start_stack(tmp_path_factory.mktemp("security"), demo=True)
    finally:
        if saved is not None:
            os.environ["QUICKPAY_CLUSTER_SECRET"] = saved
    try:
        yield s
    finally:
        stop_stack(s)


def test_stack_postgres_requires_a_password_on_tcp_and_socket(own: Stack) -> None:
    pg = EmbeddedPostgres(own.state_dir)
    _assert_password_required(pg)
    assert _mode(pg.passfile) == 0o600
    socket_dir = pg.socket_dir
    assert _mode(socket_dir) == 0o700
    expected_owner = pwd.getpwnam("embedded_postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert os.lstat(socket_dir).st_uid == expected_owner


def test_stack_files_are_private_and_nothing_is_world_writable(own: Stack) -> None:
    state = own.state_dir
    # demo.json holds the demo partner's client secret and the admin token: it was 0644.
    for name in ("token.key", "admin.token", "cluster.secret", "pg.pgpass", "demo.json"):
        assert _mode(state / name) == 0o600, name
    run_dir = Path(own.shard_socket(0).removeprefix("unix:")).parent
    assert _mode(run_dir) == 0o700
    assert _mode(own.shard_socket(0).removeprefix("unix:")) & 0o077 == 0
    writable = []
    for root, dirs, files in os.walk(state):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            if _mode(path) & 0o002:
                writable.append(path)
    assert writable == []
    # The predictable /tmp names of before are not used.
    digest = hashlib.blake2b(str(state).encode(), digest_size=6).hexdigest()
    assert not Path(f"/tmp/qp-pg-{digest}").exists() and not Path(f"/tmp/qp-run-{digest}").exists()


def test_no_secret_on_any_command_line(own: Stack) -> None:
    import psutil

    state = own.state_dir
    values = [read_private_file(state / n).strip() for n in ("token.key", "admin.token", "cluster.secret")]
    values.append(EmbeddedPostgres(state).password)
    lines = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(state) in cmdline or "quickpay.cli" in cmdline or "postgres" in cmdline:
            lines.append(cmdline)
    assert any("shard-worker" in line for line in lines)
    for value in values:
        assert not any(value in line for line in lines)


def test_stack_shard_socket_needs_the_cluster_secret(own: Stack) -> None:
    address = own.shard_socket(0)
    secret = read_private_file(own.state_dir / "cluster.secret").strip()

    async def main() -> None:
        intruder = ShardClient(address, secret=secret_policy.generate(), call_timeout_s=5)
        with pytest.raises(ShardAuthenticationError):
            await intruder.call("ping")
        await intruder.close()
        member = ShardClient(address, secret=secret, call_timeout_s=5)
        assert (await member.call("ping"))["shard"] == 0
        await member.close()

    asyncio.run(main())
    # and the stack's own gateway and relay got it too: a payment goes through
    demo = own.demo
    paid = own.pay({"token": own.partner_token()}, demo["example"]["agreement_id"], demo["settlement_account"], "1.00")
    assert paid.status == 201, paid.body
    check = _quickpay("check", "--state-dir", str(own.state_dir))
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_trust_cluster_of_an_older_version_gets_a_password(tmp_path: Path) -> None:
    """State directories made before passwords are upgraded at the next start."""
    from quickpay.embedded_pg import BIN_PATH

    pg = EmbeddedPostgres(tmp_path / "state")
    pg.state_dir.mkdir(parents=True)
    pg.data_dir.mkdir()
    pg._chown(pg.data_dir)
    pg._prepare_permissions()
    pg._run(
        [
            str(BIN_PATH / "initdb"),
            "-D",
            str(pg.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]
    )
    assert not pg.passfile.exists()
    pg.start()
    try:
        _assert_password_required(pg)
        assert _mode(pg.passfile) == 0o600
    finally:
        pg.stop()


def test_admin_token_check_answers_401_for_undecodable_header_bytes(own: Stack) -> None:
    """aiohttp hands undecodable header bytes over as surrogates; the admin check once
    encoded them as UTF-8 and failed with a 500."""
    with socket.create_connection(("127.0.0.1", own.port), timeout=10) as conn:
        conn.sendall(
            b"GET /admin/v1/fraud/rules HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe" + own.admin_token.encode() + b"\r\n\r\n"
        )
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"401", response[:500]


def test_postgres_under_a_long_state_path_gets_a_private_tempdir_socket(tmp_path: Path) -> None:
    state = tmp_path / ("x" * 60) / ("y" * 60)
    pg = EmbeddedPostgres(state)
    pg.start()
    socket_dir = pg.socket_dir
    try:
        assert socket_dir != state / "pg-socket" and len(str(socket_dir / ".s.PGSQL.65535")) <= 107
        assert read_private_file(state / "pg-socket.path").strip() == str(socket_dir)
        assert _mode(socket_dir) == 0o700
        expected_owner = pwd.getpwnam("embedded_postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert os.lstat(socket_dir).st_uid == expected_owner
        _assert_password_required(pg)
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(socket_dir, ignore_errors=True)
