"""Which PostgreSQL server may this shard's writer use: the one that can commit.

With one host in the DSN there is nothing to choose. With several (a Patroni cluster:
`postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write`) `target_session_attrs`
is not enough: a primary cut off from its cluster (its Patroni frozen or partitioned) still
says it is read-write, while a standby has been promoted elsewhere. Under synchronous
replication in strict mode such a server cannot commit, so the test here is a commit: every
host is tried at once, and the writer takes the first whose probe transaction returns within
COMMIT_PROBE_TIMEOUT_S. The probe writes WAL in a transaction (a transactional logical
message: no table needed), so its commit waits for the synchronous standby like a batch's;
a transaction that only takes an xid writes its commit record without waiting. All of the worker's connections then use
that one host (its reads must see what its writes wrote).

The same probe, repeated every HEARTBEAT_INTERVAL_S, tells a running worker that its server
stopped being able to commit (ledger.worker stops, and its restart chooses again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

__all__ = [
    "COMMIT_PROBE_TIMEOUT_S",
    "COMMIT_STALL_S",
    "COMMIT_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "NoWritableHost",
    "connect_writable",
    "probe_commit",
    "resolve_writable",
    "split_hosts",
]

log = logging.getLogger("quickpay.shard")

COMMIT_PROBE_TIMEOUT_S = 3.0
HEARTBEAT_INTERVAL_S = 1.0
# A batch or heartbeat commit that takes longer than this means the server cannot commit
# (no synchronous standby acknowledges it): the worker stops and its restart chooses again.
COMMIT_TIMEOUT_S = 5.0
# No heartbeat commit for this long: the shard reports itself stalled (/readyz 503).
COMMIT_STALL_S = 2.5
PROBE_SQL = "SELECT pg_logical_emit_message(true, 'quickpay', 'commit probe')"


class NoWritableHost(Exception):
    pass


def split_hosts(dsn: str) -> list[str]:
    """One single-host DSN per host of a multi-host URL DSN, in order; [dsn] otherwise."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or "," not in parts.netloc:
        return [dsn]
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "target_session_attrs"]
    out = []
    for host in hostlist.split(","):
        netloc = f"{userinfo}@{host}" if userinfo else host
        out.append(urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment)))
    return out


async def probe_commit(conn: asyncpg.Connection, timeout_s: float = COMMIT_PROBE_TIMEOUT_S) -> None:
    """A transaction that writes WAL; raises asyncio.TimeoutError if it does not commit within
    `timeout_s` (no synchronous standby acknowledges it), or a database error.

    On a timeout the connection is closed, not the query cancelled: a cancelled wait for the
    synchronous standby makes the commit visible on that server although no standby has it
    (PostgreSQL's documented caveat). Nothing of ours relies on that for a probe, which writes
    no row, but the rule is kept everywhere: quickpay never cancels a commit's wait."""
    task = asyncio.ensure_future(conn.fetchval(PROBE_SQL))
    # Its outcome is read here, or dropped on purpose when we gave up on it (closed, or the
    # caller was cancelled): never an "exception was never retrieved" at exit.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    if not done:
        conn.terminate()
        raise TimeoutError(f"no commit within {timeout_s:g}s")
    task.result()


async def _try_host(
    dsn: str, connect_timeout_s: float, server_settings: dict[str, str] | None = None
) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=connect_timeout_s, server_settings=server_settings)
    try:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            raise NoWritableHost("a standby")
        await probe_commit(conn)
        return conn
    except BaseException:
        conn.terminate()
        raise


async def connect_writable(
    dsn: str, *, connect_timeout_s: float = 10.0, server_settings: dict[str, str] | None = None
) -> tuple[asyncpg.Connection, str]:
    """A connection to the host that commits, and that host's single-host DSN.

    One host: a plain connect (errors as asyncpg raises them). Several: all tried at once;
    NoWritableHost if none is a primary that commits (the caller waits and tries again)."""
    hosts = split_hosts(dsn)
    if len(hosts) == 1:
        return await asyncpg.connect(dsn, timeout=connect_timeout_s, server_settings=server_settings), dsn
    started = time.monotonic()
    tasks = {asyncio.ensure_future(_try_host(h, connect_timeout_s, server_settings)): h for h in hosts}
    errors: list[str] = []
    chosen: tuple[asyncpg.Connection, str] | None = None
    try:
        pending = set(tasks)
        while pending and chosen is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                host = urlsplit(tasks[task]).netloc.rpartition("@")[2]
                exc = task.exception()
                if exc is None and chosen is None:
                    chosen = (task.result(), tasks[task])
                    log.info("writer chose %s (commits; %.2fs)", host, time.monotonic() - started)
                elif exc is None:
                    task.result().terminate()
                else:
                    errors.append(f"{host}: {type(exc).__name__} {exc}".strip())
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            if (
                task.done()
                and not task.cancelled()
                and task.exception() is None
                and (chosen is None or task.result() is not chosen[0])
            ):
                task.result().terminate()
    if chosen is None:
        raise NoWritableHost("; ".join(errors) or "no host")
    return chosen


async def resolve_writable(dsns: list[str]) -> list[str]:
    """Each DSN narrowed to the host that commits now (multi-host DSNs only): for readers
    that must not read a cut-off primary's stale journal (quickpay check, recon)."""
    out = []
    for dsn in dsns:
        if len(split_hosts(dsn)) == 1:
            out.append(dsn)
            continue
        conn, chosen = await connect_writable(dsn)
        await conn.close()
        out.append(chosen)
    return out
