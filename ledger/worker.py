"""The shard worker: the single writer of one shard.

Pipeline: requests arrive over the socket protocol into a bounded queue; the
batcher takes up to `batch_size_max`, prefetches transfer ids it does not hold,
decides every command synchronously in ShardState, and hands the WriteSet to
the writer; the writer commits it in one transaction (fsync on) and only then
answers. While one batch commits, the next is decided, so CPU and fsync overlap.
A failed write stops the process: memory may be ahead of the database, and the
restart reloads the truth from PostgreSQL (fail-stop, like TigerBeetle).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from kernel.ids import is_striped, settlement_account_for

from . import pg
from . import validate as v
from .agreements import (
    ACTORS,
    ALIGNMENTS,
    PENDING_EXPIRY_S,
    PERIODIC_LIMITS_MAX,
    PERIODS,
    AgreementStatus,
    PeriodicLimit,
)
from .client import ShardClient
from .fraud_port import FraudAdapter
from .handshake import HANDSHAKE_TIMEOUT_S, HandshakeError, ServerHandshake, cluster_secret
from .idfilter import IdFilter
from .model import (
    Account,
    Agreement,
    Code,
    CreditLeg,
    FundingCommand,
    LedgerInvariantError,
    PaymentCommand,
    RefundCommand,
    Transfer,
)
from .protocol import FrameDecoder, FrameError, encode_frame, encode_frames, parse_address
from .relay import Relay
from .rows import QUARANTINE, RowError, check_windows, decode_alert
from .state import (
    PARTNER_ACTIONS,
    PENDING_PER_ACCOUNT_MAX,
    PENDING_PER_PARTNER_MAX,
    REFUND_WINDOW_DAYS,
    SECRET_OVERLAP_MAX_MS,
    ShardState,
    WriteSet,
)
from .storable import check_command
from .writable import (
    COMMIT_STALL_S,
    COMMIT_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    NoWritableHost,
    connect_writable,
    probe_commit,
    split_hosts,
)

__all__ = ["ShardWorker", "WorkerConfig", "run_worker"]

log = logging.getLogger("quickpay.shard")

TRANSACTIONS_PAGE_MAX = 200
# Batches whose timings `ping` summarises (a window, not a history).
BATCH_TIMINGS_MAX = 2_048
# Rows per round trip when the transfer id filter is built at start-up.
ID_FILTER_FETCH_ROWS = 50_000
# One batch committing while the next is prefetched and decided.
PIPELINE_DEPTH = 2
# How often long-lived objects are moved out of the garbage collector's sight.
GC_FREEZE_INTERVAL_S = 5.0
# asyncpg prepares every statement, and PostgreSQL may cache a generic plan made
# while a table was empty (a seq scan, a hash join over accounts) and keep using it
# once the table holds millions of rows. Reads replan every time; the two hot
# connections (prefetch, batch write) keep cached plans but may only use index paths,
# which is right for every statement they run after start-up.
_SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
# A starting worker waits this long for its PostgreSQL to accept connections (it may
# be restarting after a crash and replaying its WAL) before it gives up and exits.
DB_WAIT_S = 60.0
_DB_NOT_YET = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)
_HOT_PATH_SETTINGS = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"


# Bounds of the pending-agreement settings: a wait of at most 30 days, caps of at most 10 million.
PENDING_EXPIRY_S_MAX = 30 * 86_400
PENDING_MAX_LIMIT = 10_000_000


@dataclass(slots=True)
class WorkerConfig:
    shard: int
    shard_count: int
    dsn: str
    listen: str
    peers: dict[int, str]
    batch_size_max: int = 4_000
    batch_wait_ms: float = 3.0
    queue_max: int = 100_000
    transfer_cache_max: int = 1_000_000
    rules_path: str | None = None
    no_rules: bool = False
    ledger_mode: str = "batched"  # "naive": one transaction per payment (benchmark baseline)
    # Authenticates every shard-protocol connection, both ways; default QUICKPAY_CLUSTER_SECRET.
    cluster_secret: bytes | None = None
    refund_window_days: int = REFUND_WINDOW_DAYS
    # Agreements awaiting the customer: how long they wait, how many a partner may have.
    pending_expiry_s: int = PENDING_EXPIRY_S
    pending_per_account_max: int = PENDING_PER_ACCOUNT_MAX
    pending_per_partner_max: int = PENDING_PER_PARTNER_MAX

    def validate(self) -> None:
        problems = []
        if not 1 <= self.batch_size_max <= 50_000:
            problems.append("--batch-size-max must be between 1 and 50000")
        if not 0 <= self.batch_wait_ms <= 100:
            problems.append("--batch-wait-ms must be between 0 and 100")
        if not 100 <= self.queue_max <= 10_000_000:
            problems.append("--queue-max must be between 100 and 10000000")
        if self.ledger_mode not in ("batched", "naive"):
            problems.append("--ledger-mode must be batched or naive")
        if not 1 <= self.refund_window_days <= 3650:
            problems.append("--refund-window-days must be between 1 and 3650")
        if not 1 <= self.pending_expiry_s <= PENDING_EXPIRY_S_MAX:
            problems.append(f"--pending-expiry-s must be between 1 and {PENDING_EXPIRY_S_MAX}")
        if not 1 <= self.pending_per_account_max <= PENDING_MAX_LIMIT:
            problems.append(f"--pending-per-account-max must be between 1 and {PENDING_MAX_LIMIT}")
        if not 1 <= self.pending_per_partner_max <= PENDING_MAX_LIMIT:
            problems.append(f"--pending-per-partner-max must be between 1 and {PENDING_MAX_LIMIT}")
        if not 0 <= self.shard < self.shard_count:
            problems.append("--shard must be in [0, --shards)")
        if problems:
            raise SystemExit("bad shard worker configuration: " + "; ".join(problems))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _connect_waiting(dsn: str, wait_s: float = DB_WAIT_S) -> asyncpg.Connection:
    """Connect, waiting while the server is unreachable or still starting up. Other errors
    (authentication, no such database) are not transient: they raise at once."""
    deadline = time.monotonic() + wait_s
    delay_s = 0.05
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=10)
        except _DB_NOT_YET as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)


async def _connect_writer_waiting(dsn: str, wait_s: float = DB_WAIT_S) -> tuple[asyncpg.Connection, str]:
    """The writer's connection and the single-host DSN it chose (ledger.writable), waiting
    while no server is reachable, none is a primary that commits yet (a failover under way),
    or it is still starting up."""
    deadline = time.monotonic() + wait_s
    delay_s = 0.05
    while True:
        try:
            return await connect_writable(dsn)
        except (NoWritableHost, *_DB_NOT_YET) as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("waiting for a PostgreSQL that commits: %s", exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, worker: ShardWorker) -> None:
        self.worker = worker
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[Any] = []
        self.flush_scheduled = False
        self.authenticated = False
        self.handshake: ServerHandshake | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Nothing is decoded, let alone run, before the peer proves it holds the
        # cluster secret; a peer that does not within the timeout is cut off.
        self.handshake = ServerHandshake(self.worker.cluster_secret)
        self.handshake_timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_TIMEOUT_S, self._refuse, "no handshake within the timeout"
        )
        transport.write(self.handshake.hello())  # type: ignore[attr-defined]

    def _refuse(self, reason: str) -> None:
        log.warning("closing unauthenticated shard-protocol connection: %s", reason)
        self.handshake = None
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.transport is not None:
            self.transport.abort()

    def _authenticate(self, data: bytes) -> bytes:
        """Feed the handshake; the bytes that follow it once authenticated, else b""."""
        assert self.handshake is not None and self.transport is not None
        try:
            step = self.handshake.feed(data)
        except HandshakeError as exc:
            self._refuse(str(exc))
            return b""
        if not step.done:
            return b""
        self.handshake = None
        self.authenticated = True
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.transport.write(step.send)
        return step.leftover

    def data_received(self, data: bytes) -> None:
        if not self.authenticated:
            if self.handshake is None:
                return  # refused: ignore whatever is still buffered
            data = self._authenticate(data)
            if not data:
                return
        try:
            messages = self.decoder.feed(data)
        except FrameError as exc:
            log.warning("closing connection: %s", exc)
            assert self.transport is not None
            self.transport.close()
            return
        for message in messages:
            if (
                type(message) is not list
                or len(message) != 3
                or type(message[0]) is not int
                or type(message[1]) is not str
            ):
                # Not [request_id, op, args]: answer if it can be addressed, never raise here.
                if type(message) is list and message and type(message[0]) is int:
                    self._replier(message[0])(
                        False, {"code": "BAD_REQUEST", "message": "a request is [request_id, op, args]"}
                    )
                continue
            self.worker.dispatch(message[1], message[2], self._replier(message[0]))

    def _replier(self, request_id: int) -> Callable[[bool, Any], None]:
        def reply(ok: bool, result: Any) -> None:
            self.outgoing.append((request_id, ok, result))
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

        return reply

    def _flush(self) -> None:
        self.flush_scheduled = False
        outgoing, self.outgoing = self.outgoing, []
        if outgoing and self.transport is not None and not self.transport.is_closing():
            # One answer that cannot be encoded fails alone (as INTERNAL), not the frame.
            frames, failures = encode_frames(outgoing)
            for index, error in failures:
                log.error("answer to request %s cannot be encoded: %s", outgoing[index][0], error)
                frames.append(
                    encode_frame(
                        [
                            (
                                outgoing[index][0],
                                False,
                                {"code": "INTERNAL", "message": "the answer could not be encoded"},
                            )
                        ]
                    )
                )
            for frame in frames:
                self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None


Reply = Callable[[bool, Any], None]


class ShardWorker:
    def __init__(self, config: WorkerConfig, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        config.validate()
        self.config = config
        self.cluster_secret = cluster_secret(config.cluster_secret)
        self.clock_ms = clock_ms
        self.state = ShardState(
            config.shard,
            config.shard_count,
            transfer_cache_max=config.transfer_cache_max,
            refund_window_days=config.refund_window_days,
            pending_expiry_s=config.pending_expiry_s,
            pending_per_account_max=config.pending_per_account_max,
            pending_per_partner_max=config.pending_per_partner_max,
        )
        # Names this run of the worker in `partner_cutoffs` answers, so a gateway that last
        # saw version n of a previous run reads the markers again after a restart.
        self.cutoff_epoch = os.urandom(8).hex()
        self.queue: deque[tuple[str, Any, Reply]] = deque()
        self.work_ready = asyncio.Event()
        self.write_queue: asyncio.Queue[tuple[WriteSet, list[tuple[Reply, Any]], float, float]] = asyncio.Queue()
        # The group-commit cycle of the last BATCH_TIMINGS_MAX batches, for `ping`:
        # (commands, prefetch+decide s, wait for the writer s, write s, whole cycle s).
        self.batch_timings: deque[tuple[int, float, float, float, float]] = deque(maxlen=BATCH_TIMINGS_MAX)
        # Batches decided but not yet committed. The batcher takes a slot BEFORE it
        # drains the intake queue, so while the pipeline is full requests pile up
        # and the next batch is bigger: that is what makes the commit a group commit.
        self.pipeline_slots = asyncio.Semaphore(PIPELINE_DEPTH)
        self.write_conn: asyncpg.Connection | None = None
        self.read_pool: asyncpg.Pool | None = None
        self.relay: Relay | None = None
        self.peers: dict[int, ShardClient] = {}
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.fraud: Any = None
        self.fraud_admin: Any = None
        self.committed_batches = 0
        self.naive_pool: asyncpg.Pool | None = None
        self.prefetch_conn: asyncpg.Connection | None = None
        # Replicated (several hosts) only: the commit heartbeat's own connection, and when its
        # last probe committed (ping reports a stall: /readyz is 503 before the worker stops).
        self.heartbeat_conn: asyncpg.Connection | None = None
        self.last_commit_ok_s = time.monotonic()
        # Ids that are certainly new skip the prefetch (ledger/idfilter.py); None: off.
        self.id_filter: IdFilter | None = None
        self.prefetch_lookups = 0  # ids looked up in PostgreSQL
        self.prefetch_skipped = 0  # ids the filter proved new
        self.decide_failures = 0  # commands rolled back because deciding or checking them raised
        self.effect_failures = 0  # deferred effects (fraud window records) that raised
        self.committed_transfers = 0
        self.closing = False
        # Stored transfer ids whose rows cannot be read (ledger/rows.py): they exist, so a
        # command naming one is refused, never decided as new (its insert would fail the batch).
        self.unreadable_ids: set[str] = set()

    # ---- start-up ------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        # Several hosts (a Patroni cluster): the one that commits; every connection below
        # goes to that same host.
        self.write_conn, dsn = await _connect_writer_waiting(cfg.dsn)
        self.write_conn.add_termination_listener(self._on_connection_lost)
        if len(split_hosts(cfg.dsn)) > 1:
            # From here on: a start-up write (schema, fraud registry) on a server cut off
            # meanwhile would otherwise wait for ever. No termination listener: the heartbeat
            # closes this connection itself when a commit hangs, and says why before it stops.
            self.heartbeat_conn = await _connect_waiting(dsn)
            self.tasks.append(asyncio.get_running_loop().create_task(self._commit_heartbeat()))
        got_lock = await self.write_conn.fetchval("SELECT pg_try_advisory_lock($1)", pg.ADVISORY_LOCK_BASE + cfg.shard)
        if not got_lock:
            self.closing = True  # our own close: not a lost connection
            await self.write_conn.close()
            raise SystemExit(f"shard {cfg.shard} already has a writer (advisory lock held); refusing to start")
        await pg.ensure_schema(self.write_conn, cfg.shard, cfg.shard_count)
        self.read_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, server_settings=_SERVER_SETTINGS)
        # The batcher's own connection: a pool's acquire/reset would cost two more
        # round trips on every batch.
        self.prefetch_conn = await _connect_waiting(dsn)
        self.prefetch_conn.add_termination_listener(self._on_connection_lost)
        await self.prefetch_conn.execute(_HOT_PATH_SETTINGS)
        await pg.load_state(self.write_conn, self.state, self.clock_ms())
        if cfg.ledger_mode == "naive":
            from .naive import NAIVE_POOL_SIZE

            # The journal's seq is otherwise assigned by the single writer; naive
            # transactions run concurrently and take it from a sequence instead.
            await self.write_conn.execute(
                f"CREATE SEQUENCE IF NOT EXISTS naive_seq START {self.state.next_seq + 1_000_000_000}"
            )
            self.naive_pool = await asyncpg.create_pool(
                dsn, min_size=NAIVE_POOL_SIZE, max_size=NAIVE_POOL_SIZE, server_settings=_SERVER_SETTINGS
            )
        else:
            if os.environ.get("QUICKPAY_ID_FILTER", "on") != "off":
                await self._load_id_filter()
            await self._start_fraud()
        for shard, address in cfg.peers.items():
            if shard != cfg.shard:
                self.peers[shard] = ShardClient(address, call_timeout_s=10.0, secret=self.cluster_secret)
        self.relay = Relay(cfg.shard, self.peers, self._on_delivered, self._reload_outbox)
        self.relay.start()
        self.relay.enqueue(await pg.load_outbox(self.write_conn))
        await self.write_conn.execute(_HOT_PATH_SETTINGS)  # after the full-table loads above
        loop = asyncio.get_running_loop()
        gc.freeze()
        # Fewer young-generation collections: the hot path allocates many short-lived
        # objects per batch (what fraud.microbench calls "tuned" GC).
        gc.set_threshold(50_000, 50, 100)
        self.tasks.append(loop.create_task(self._freeze_gc()))
        for coroutine in (self._batcher(), self._writer()):
            task = loop.create_task(coroutine)
            task.add_done_callback(self._on_pipeline_task_done)
            self.tasks.append(task)
        kind, where = parse_address(cfg.listen)
        if kind == "unix":
            path = str(where)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # we hold the advisory lock, so no live worker owns a stale socket
            self.server = await loop.create_unix_server(lambda: _ServerProtocol(self), path)
            os.chmod(path, 0o600)  # only this user may connect (the directory is 0700 too)
        else:
            self.server = await loop.create_server(lambda: _ServerProtocol(self), kind, int(where))
        log.info(
            "shard %s ready on %s: %d accounts, %d agreements, next seq %d",
            cfg.shard,
            cfg.listen,
            len(self.state.accounts),
            len(self.state.agreements),
            self.state.next_seq,
        )

    async def _load_id_filter(self) -> None:
        assert self.write_conn is not None
        started = time.monotonic()
        ids = IdFilter(expected_ids=self.state.next_seq)
        async with self.write_conn.transaction():
            async for row in self.write_conn.cursor("SELECT id FROM transfers", prefetch=ID_FILTER_FETCH_ROWS):
                ids.add(row[0])
        self.id_filter = ids
        log.info(
            "shard %s: transfer id filter of %d ids built in %.2fs (%s)",
            self.config.shard,
            len(ids),
            time.monotonic() - started,
            ids.stats(),
        )

    async def _start_fraud(self) -> None:
        self.fraud_admin = FraudAdapter(self)
        await self.fraud_admin.start()

    def _on_pipeline_task_done(self, task: asyncio.Task[None]) -> None:
        # The batcher and the writer never return. If one dies (a broken invariant in a
        # decision, say), memory may hold half-applied work: stop, and let the restart
        # reload the truth from PostgreSQL, instead of lingering without serving.
        if task.cancelled():
            return
        log.error("shard %s pipeline task ended: %r; stopping", self.config.shard, task.exception())
        logging.shutdown()
        os._exit(70)

    def _on_connection_lost(self, conn: Any) -> None:
        # The write connection holds the shard's advisory lock and the batcher's prefetch
        # needs its own: without either the worker could only answer 503s while looking
        # alive (PostgreSQL restarted, say). Stop; the supervisor's restart waits for the
        # database and reloads the truth, and callers retry with the same key.
        if self.closing:
            return
        log.error("shard %s lost its PostgreSQL connection; stopping so that the restart reconnects", self.config.shard)
        logging.shutdown()
        os._exit(70)

    async def _commit_heartbeat(self) -> None:
        # Replicated (several hosts): a server that was primary when chosen may stop being
        # able to commit while still answering (cut off from its cluster, a standby promoted
        # elsewhere; strict synchronous replication then holds every commit). Nothing it
        # holds back was acknowledged; stop, and the restart chooses the server that commits.
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            try:
                assert self.heartbeat_conn is not None
                await probe_commit(self.heartbeat_conn, COMMIT_TIMEOUT_S)
                self.last_commit_ok_s = time.monotonic()
            except Exception as exc:
                if self.closing:
                    return
                log.error(
                    "shard %s: its PostgreSQL did not commit within %.0fs (%r); stopping so that "
                    "the restart finds the server that commits",
                    self.config.shard,
                    COMMIT_TIMEOUT_S,
                    exc,
                )
                # (A lost connection ends here too: the same remedy.)
                logging.shutdown()
                os._exit(70)

    async def _freeze_gc(self) -> None:
        # The worker holds millions of long-lived objects (accounts, the transfer
        # cache); a full collection walking them all stalls every payment for tens
        # of milliseconds. Frozen objects are still freed by reference counting when
        # dropped, and ledger objects form no cycles.
        while True:
            await asyncio.sleep(GC_FREEZE_INTERVAL_S)
            gc.freeze()

    async def _reload_outbox(self) -> list[tuple[CreditLeg, int]]:
        assert self.read_pool is not None
        async with self.read_pool.acquire() as conn:
            return await pg.load_outbox(conn)

    async def _on_delivered(self, ids: list[str], held_ids: list[str]) -> None:
        held = set(held_ids)
        delivered = [i for i in ids if i not in held]
        if delivered:
            self.enqueue("delivered", delivered, lambda ok, result: None, internal=True)
        if held:
            self.enqueue("delivered_held", [i for i in ids if i in held], lambda ok, result: None, internal=True)

    # ---- intake --------------------------------------------------------------
    def enqueue(self, op: str, args: Any, reply: Reply, *, internal: bool = False) -> None:
        if not internal and len(self.queue) >= self.config.queue_max:
            reply(False, {"code": "OVERLOADED", "message": f"shard {self.config.shard} queue is full"})
            return
        self.queue.append((op, args, reply))
        self.work_ready.set()

    def dispatch(self, op: str, args: Any, reply: Reply) -> None:
        if op in _WRITE_OPS:
            try:
                _CHECKS[op](self, args)
            except v.BadCommand as exc:  # refused alone, before it can reach a batch
                reply(False, {"code": "BAD_REQUEST", "message": str(exc)})
                return
            if op == "pay" and self.naive_pool is not None:
                from .naive import naive_pay

                asyncio.get_running_loop().create_task(
                    self._finish(naive_pay(self.naive_pool, self.config.shard, args, self.clock_ms()), reply)
                )
                return
            self.enqueue(op, args, reply)
            return
        handler = _READ_OPS.get(op)
        if handler is None:
            reply(False, {"code": "UNKNOWN_OP", "message": f"unknown op {op!r}"})
            return
        try:
            result = handler(self, args)
        except Exception as exc:  # a bad read request must not kill the worker
            log.exception("read op %s failed", op)
            reply(False, {"code": "INTERNAL", "message": str(exc)})
            return
        if asyncio.iscoroutine(result):
            asyncio.get_running_loop().create_task(self._finish(result, reply))
        else:
            reply(True, result)

    async def _finish(self, coro: Any, reply: Reply) -> None:
        try:
            reply(True, await coro)
        except Exception as exc:
            log.exception("async read failed")
            reply(False, {"code": "INTERNAL", "message": str(exc)})

    # ---- batcher: prefetch, then decide without I/O ---------------------------
    async def _batcher(self) -> None:
        cfg = self.config
        while True:
            if not self.queue:
                self.work_ready.clear()
                await self.work_ready.wait()
                if cfg.batch_wait_ms:
                    await asyncio.sleep(cfg.batch_wait_ms / 1000)
            await self.pipeline_slots.acquire()
            count = min(len(self.queue), cfg.batch_size_max)
            items = [self.queue.popleft() for _ in range(count)]
            started = time.monotonic()
            await self._prefetch(items)
            ws = WriteSet()
            replies: list[tuple[Reply, Any]] = []
            now_ms = self.clock_ms()
            for op, args, reply in items:
                if self.unreadable_ids and any(i in self.unreadable_ids for i in _referenced_ids(op, args)):
                    replies.append(
                        (
                            reply,
                            (
                                False,
                                {
                                    "code": "STORED_ROW_UNREADABLE",
                                    "message": "a stored transfer this names cannot be read (quarantined)",
                                },
                            ),
                        )
                    )
                    continue
                replies.append((reply, self._decide_one(op, args, ws, now_ms)))
            # Only now, with every command of the batch decided: evicting while deciding
            # could drop an id the prefetch vouched for and decide its retry as new.
            self.state.evict()
            if self.id_filter is not None:
                for transfer in ws.transfers:
                    self.id_filter.add(transfer.id)
            await self.write_queue.put((ws, replies, started, time.monotonic()))

    def _decide_one(self, op: str, args: Any, ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
        """Decide one command atomically: it keeps every change it made to memory and to
        `ws`, or none. A decider that raises, answers an error (ok False), or produces a
        row or an answer that does not round-trip (ledger/storable.py) is rolled back
        whole, and its caller is told that nothing was stored, which is then the truth."""
        state = self.state
        mark = state.begin(ws)
        try:
            ok, result = _DECIDERS[op](self, args, ws, now_ms)
            if ok:
                check_command(ws, mark, result, now_ms, state.undo)
        except LedgerInvariantError:
            # Fail-stop (ARCHITECTURE.md): a broken invariant is a defect, not an input to
            # refuse; the process ends and the supervisor restarts it from PostgreSQL.
            state.rollback(ws)
            raise
        except Exception as exc:
            state.rollback(ws)
            self.decide_failures += 1
            if isinstance(exc, _CLIENT_VALUE_ERRORS):
                log.warning("shard %s refused %s: %r (rolled back)", self.config.shard, op, exc)
                return False, {"code": "BAD_REQUEST", "message": f"the ledger cannot store this {op}: {exc}"}
            log.exception("shard %s: deciding %s failed (rolled back)", self.config.shard, op)
            return False, {"code": "INTERNAL", "message": f"deciding {op} failed; nothing was stored"}
        if not ok:
            state.rollback(ws)
            return ok, result
        for effect, effect_args in state.commit():
            try:
                effect(*effect_args)
            except Exception:  # a derived, rebuilt-at-start view (fraud windows): log, go on
                self.effect_failures += 1
                log.exception("shard %s: an effect of %s failed after it was decided", self.config.shard, op)
        return ok, result

    async def _prefetch(self, items: list[tuple[str, Any, Reply]]) -> None:
        ids: list[str] = []
        for op, args, _ in items:
            ids.extend(_referenced_ids(op, args))
        # Cached ids become most recently used, so they are the last to go when the
        # cache is trimmed after this batch (state.evict); nothing is evicted before.
        missing = self.state.touch(ids)
        id_filter = self.id_filter
        if id_filter is not None and missing:
            maybe = [transfer_id for transfer_id in missing if transfer_id in id_filter]
            self.prefetch_skipped += len(missing) - len(maybe)
            missing = maybe
        if missing:
            self.prefetch_lookups += len(missing)
            assert self.prefetch_conn is not None
            transfers = self.state.transfers
            if len(self.unreadable_ids) >= UNREADABLE_IDS_MAX:
                self.unreadable_ids.clear()  # found again by the next prefetch that needs one
            for transfer in await pg.prefetch_transfers(self.prefetch_conn, missing, self.unreadable_ids):
                if transfer.id not in transfers:
                    self.state.remember(transfer)

    # ---- writer: one transaction per batch -----------------------------------
    async def _writer(self) -> None:
        assert self.write_conn is not None
        while True:
            ws, replies, started, decided = await self.write_queue.get()
            writing = time.monotonic()
            if not ws.is_empty():
                try:
                    await pg.write_batch(self.write_conn, ws)
                except BaseException:
                    log.exception("batch write failed; stopping so that the restart reloads the truth")
                    logging.shutdown()
                    os._exit(70)
                for transfer in ws.transfers:
                    transfer.committed = True
                accounts = self.state.accounts
                for account_id, delta_minor in ws.deltas.items():
                    accounts[account_id].committed_balance_minor += delta_minor
                self.committed_batches += 1
                self.committed_transfers += len(ws.transfers)
            written = time.monotonic()
            self.pipeline_slots.release()
            for reply, (ok, result) in replies:
                reply(ok, result)
            self.batch_timings.append(
                (len(replies), decided - started, writing - decided, written - writing, time.monotonic() - started)
            )
            if ws.outbox and self.relay is not None:
                self.relay.enqueue([(leg, ws.targets[leg.transfer_id]) for leg in ws.outbox])

    async def close(self) -> None:
        self.closing = True
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        if self.relay is not None:
            await self.relay.close()
        for client in self.peers.values():
            await client.close()
        if self.read_pool is not None:
            await self.read_pool.close()
        if self.naive_pool is not None:
            await self.naive_pool.close()
        if self.prefetch_conn is not None:
            await self.prefetch_conn.close()
        if self.heartbeat_conn is not None:
            await self.heartbeat_conn.close()
        if self.write_conn is not None:
            await self.write_conn.close()


# ---- deciders (synchronous; called only by the batcher) ------------------------
def _payment_result(code: str, transfer: Transfer | None) -> tuple[bool, Any]:
    return True, {"code": code, "transfer": transfer.to_wire() if transfer is not None else None}


# ---- intake checks: what a shard can store (ledger/validate.py) ------------------
# Run by dispatch() before a write command is queued, so a value PostgreSQL would
# refuse (a NUL, a surrogate, an int beyond int64, an unknown currency) never reaches
# the prefetch, the decision or the batch write: it is answered BAD_REQUEST alone.
def _check_pay(worker: ShardWorker, args: Any) -> None:
    v.fields(
        args,
        "payment_id",
        "partner_id",
        "agreement_id",
        "amount_minor",
        "currency",
        "creditor_account",
        "creditor_shard",
        "reference",
        "body_hash",
    )
    for key in ("payment_id", "partner_id", "agreement_id", "creditor_account"):
        v.ident(args, key)
    v.amount(args, "amount_minor")
    v.currency(args)
    if v.int64(args, "creditor_shard", 0, worker.config.shard_count - 1) != worker.config.shard and is_striped(
        args["creditor_account"]
    ):
        # A striped account is credited on the debtor's shard; a leg to another shard's
        # clearing stripe would write a transfer from clearing to clearing there.
        raise v.BadCommand("a striped account is never credited across shards")
    v.text(args, "reference", v.REFERENCE_MAX)
    v.text(args, "body_hash", v.HASH_MAX)
    v.text(args, "device_id", v.DEVICE_ID_MAX, optional=True)
    v.text(args, "ip", v.IP_MAX, optional=True)


def _check_fund(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "transfer_id", "account_id", "amount_minor", "currency", "reference", "body_hash")
    v.ident(args, "transfer_id")
    v.ident(args, "account_id")
    v.amount(args, "amount_minor")
    v.currency(args)
    v.text(args, "reference", v.REFERENCE_MAX)
    v.text(args, "body_hash", v.HASH_MAX)


CREDIT_LEGS_MAX = 100_000
_LEG_FIELDS = ("transfer_id", "source_shard", "creditor", "amount_minor", "currency", "at_ms")


def _check_credit(worker: ShardWorker, args: Any) -> None:
    # All legs are checked before any is applied: a malformed call is refused whole.
    if type(args) is not list or len(args) > CREDIT_LEGS_MAX:
        raise v.BadCommand(f"credit takes a list of at most {CREDIT_LEGS_MAX} legs")
    for leg in args:
        if type(leg) is not list or len(leg) != 6:
            raise v.BadCommand("a credit leg is [" + ", ".join(_LEG_FIELDS) + "]")
        named = dict(zip(_LEG_FIELDS, leg))
        v.ident(named, "transfer_id")
        v.int64(named, "source_shard", 0, worker.config.shard_count - 1)
        if is_striped(v.ident(named, "creditor")):  # type: ignore[arg-type]
            raise v.BadCommand("a credit leg never credits a striped account")
        v.amount(named, "amount_minor")
        v.currency(named)
        v.timestamp_ms(named, "at_ms")


def _check_delivered(worker: ShardWorker, args: Any) -> None:
    if type(args) is not list:
        raise v.BadCommand("delivered takes a list of transfer ids")
    for transfer_id in args:
        v.ident({"transfer_id": transfer_id}, "transfer_id")


OPEN_ACCOUNTS_MAX = 10_000


def _check_open_accounts(worker: ShardWorker, args: Any) -> None:
    if type(args) is not list or len(args) > OPEN_ACCOUNTS_MAX:
        raise v.BadCommand(f"open_accounts takes a list of at most {OPEN_ACCOUNTS_MAX} accounts")
    for a in args:
        v.fields(a, "id", "currency")
        v.ident(a, "id")
        v.currency(a)
        v.ident(a, "partner_id", optional=True)
        if a.get("kind", "customer") not in ("customer", "settlement"):
            raise v.BadCommand("only customer and settlement accounts can be opened")


def _check_create_partner(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "id", "name", "secret_sha256", "settlement_account")
    v.ident(args, "id")
    v.text(args, "name", v.NAME_MAX)
    v.text(args, "secret_sha256", v.HASH_MAX)
    v.ident(args, "settlement_account")


def _check_create_agreement(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "id", "partner_id", "debtor_account", "currency", "per_payment_limit_minor", "periodic_limits")
    for key in ("id", "partner_id", "debtor_account"):
        v.ident(args, key)
    v.currency(args)
    v.amount(args, "per_payment_limit_minor")
    limits = args["periodic_limits"]
    if type(limits) is not list or len(limits) > PERIODIC_LIMITS_MAX:
        raise v.BadCommand(f"periodic_limits is a list of at most {PERIODIC_LIMITS_MAX} [period, alignment, amount]")
    seen = set()
    for limit in limits:
        if type(limit) is not list or len(limit) != 3 or limit[0] not in PERIODS or limit[1] not in ALIGNMENTS:
            raise v.BadCommand("a periodic limit is [Day|Week|Month|Year, Calendar|Consent, amount_minor]")
        v.amount({"amount_minor": limit[2]}, "amount_minor")
        if (limit[0], limit[1]) in seen:
            raise v.BadCommand("one periodic limit per period and alignment")
        seen.add((limit[0], limit[1]))
    window = [args.get(key) for key in ("valid_from_ms", "valid_to_ms")]
    for key in ("valid_from_ms", "valid_to_ms"):
        v.timestamp_ms(args, key, optional=True)
    if window[0] is not None and window[1] is not None and window[0] > window[1]:
        raise v.BadCommand("valid_from_ms is after valid_to_ms")


def _check_agreement_action(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "id", "action", "actor")
    v.ident(args, "id")
    v.ident(args, "partner_id", optional=True)
    if args["actor"] not in ACTORS or type(args["action"]) is not str:
        raise v.BadCommand(f"actor is one of {', '.join(ACTORS)}; action is text")


RATE_LIMIT_MAX = 10_000_000


def _check_partner_rate_limit(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "id", "requests_per_s", "burst")
    v.ident(args, "id")
    v.int64(args, "requests_per_s", 1, RATE_LIMIT_MAX)
    v.int64(args, "burst", 1, RATE_LIMIT_MAX)


def _check_partner_action(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "id", "action", "actor")
    v.ident(args, "id")
    if args["action"] not in PARTNER_ACTIONS:
        raise v.BadCommand(f"action is one of {', '.join(PARTNER_ACTIONS)}")
    v.text(args, "actor", v.NAME_MAX)
    v.text(args, "reason", v.REFERENCE_MAX, optional=True)
    if args["action"] == "rotate_secret":
        v.fields(args, "secret_sha256", "overlap_ms")
        v.text(args, "secret_sha256", v.HASH_MAX)
        v.int64(args, "overlap_ms", 0, SECRET_OVERLAP_MAX_MS)


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def _check_refund(worker: ShardWorker, args: Any) -> None:
    v.fields(args, "refund_id", "partner_id", "payment_id", "body_hash")
    for key in ("refund_id", "partner_id", "payment_id"):
        v.ident(args, key)
    if args.get("amount_minor") is not None:
        v.amount(args, "amount_minor")
    if args.get("reason") is not None and args["reason"] not in REFUND_REASONS:
        raise v.BadCommand(f"reason is one of {', '.join(REFUND_REASONS)}")
    v.text(args, "reference", v.REFERENCE_MAX, optional=True)
    v.text(args, "body_hash", v.HASH_MAX)


def _check_settings(worker: ShardWorker, args: Any) -> None:
    if type(args) is not dict or not all(
        v.is_safe_text(key, 200) and v.is_storable_text(value) for key, value in args.items()
    ):
        raise v.BadCommand("settings take a map of text keys to text values without NUL")


def _check_fraud(worker: ShardWorker, args: Any) -> None:
    # The fraud adapter checks what a change means; here, only that its text can be stored.
    if type(args) is not dict:
        raise v.BadCommand("fraud takes a map")
    for key, value in args.items():
        for item in value if type(value) is list else (value,):
            if type(item) is str and not v.is_storable_text(item):
                raise v.BadCommand(f"{key} holds a NUL or a lone surrogate")


_CHECKS: dict[str, Callable[[ShardWorker, Any], None]] = {
    "pay": _check_pay,
    "fund": _check_fund,
    "credit": _check_credit,
    "delivered": _check_delivered,
    "delivered_held": _check_delivered,
    "open_accounts": _check_open_accounts,
    "create_partner": _check_create_partner,
    "create_agreement": _check_create_agreement,
    "settings": _check_settings,
    "fraud": _check_fraud,
    "agreement_action": _check_agreement_action,
    "refund": _check_refund,
    "partner_rate_limit": _check_partner_rate_limit,
    "partner_action": _check_partner_action,
}


# ---- deciders (synchronous; called only by the batcher, on checked commands) -----
def _decide_pay(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = PaymentCommand(
        payment_id=args["payment_id"],
        partner_id=args["partner_id"],
        agreement_id=args["agreement_id"],
        amount_minor=args["amount_minor"],
        currency=args["currency"],
        creditor_account=args["creditor_account"],
        creditor_shard=args["creditor_shard"],
        reference=args["reference"],
        body_hash=args["body_hash"],
        at_ms=now_ms,
        device_id=args.get("device_id"),
        ip=args.get("ip"),
    )
    return _payment_result(*worker.state.execute_payment(cmd, ws))


def _decide_fund(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = FundingCommand(
        args["transfer_id"],
        args["account_id"],
        args["amount_minor"],
        args["currency"],
        args["reference"],
        args["body_hash"],
        now_ms,
    )
    return _payment_result(*worker.state.execute_funding(cmd, ws))


def _decide_credit(worker: ShardWorker, args: list[Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    codes = []
    held_ids = []
    for transfer_id, source, creditor, amount_minor, currency, at_ms in args:
        code = worker.state.execute_credit(CreditLeg(transfer_id, source, creditor, amount_minor, currency, at_ms), ws)
        codes.append(code)
        if code == Code.HELD:
            held_ids.append(transfer_id)
    # IN_FLIGHT means a duplicate of a leg in this very batch: it commits with it.
    # HELD legs are recorded (acknowledged) but moved nothing: see Code.HELD. Their ids go
    # back to the debtor shard, whose payment then stays InProcess instead of Completed.
    applied, held = codes.count(Code.OK), len(held_ids)
    return True, {"applied": applied, "held": held, "held_ids": held_ids, "replayed": len(codes) - applied - held}


def _decide_delivered(worker: ShardWorker, args: list[str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for transfer_id in args:
        worker.state.mark_delivered(transfer_id, ws)
    return True, None


def _decide_delivered_held(worker: ShardWorker, args: list[str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for transfer_id in args:
        worker.state.mark_delivered(transfer_id, ws, held=True)
    return True, None


def _decide_open_accounts(
    worker: ShardWorker, args: list[dict[str, Any]], ws: WriteSet, now_ms: int
) -> tuple[bool, Any]:
    created = 0
    for a in args:
        account = Account(a["id"], a.get("kind", "customer"), a["currency"], 0, False, a.get("partner_id"), now_ms)
        created += worker.state.open_account(account, ws)
    return True, {"created": created}


def _decide_create_partner(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    partner = {
        "id": args["id"],
        "name": args["name"],
        "secret_sha256": args["secret_sha256"],
        "settlement_account": args["settlement_account"],
        "created_at_ms": now_ms,
        "rate_limit_rps": None,
        "rate_limit_burst": None,
        "previous_secret_sha256": None,
        "previous_secret_until_ms": None,
        "disabled_at_ms": None,
        "tokens_valid_after_ms": None,
    }
    ws.partners.append(partner)
    worker.state.undo.setitem(worker.state.partners_cache, args["id"], partner)
    return True, {"id": args["id"]}


def _decide_create_agreement(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    existing = worker.state.agreements.get(args["id"])
    if existing is not None:
        return True, {"code": "EXISTS", "agreement": existing.to_wire(now_ms)}
    agreement = Agreement(
        args["id"],
        args["partner_id"],
        args["debtor_account"],
        args["currency"],
        args["per_payment_limit_minor"],
        [PeriodicLimit(period, alignment, amount) for period, alignment, amount in args["periodic_limits"]],
        AgreementStatus.AWAITING,
        now_ms,
        args.get("valid_from_ms"),
        args.get("valid_to_ms"),
    )
    code = worker.state.create_agreement(agreement, ws)
    if code == Code.OK:
        ws.agreement_events.append((agreement.id, None, AgreementStatus.AWAITING, "partner", now_ms))
    return True, {"code": code, "agreement": agreement.to_wire(now_ms) if code == Code.OK else None}


def _decide_agreement_action(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    code, agreement = worker.state.transition_agreement(
        args["id"], args.get("partner_id"), args["action"], args["actor"], now_ms, ws
    )
    return True, {"code": code, "agreement": agreement.to_wire(now_ms) if agreement is not None else None}


def _decide_partner_rate_limit(
    worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int
) -> tuple[bool, Any]:
    undo = worker.state.undo
    undo.setitem(ws.partner_limits, args["id"], (args["requests_per_s"], args["burst"]))
    cached = worker.state.partners_cache.get(args["id"])
    if cached is not None:
        undo.setitem(cached, "rate_limit_rps", args["requests_per_s"])
        undo.setitem(cached, "rate_limit_burst", args["burst"])
    return True, {"id": args["id"], "requests_per_s": args["requests_per_s"], "burst": args["burst"]}


def _decide_partner_action(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    code, status = worker.state.partner_action(
        args["id"],
        args["action"],
        args["actor"],
        now_ms,
        ws,
        secret_sha256=args.get("secret_sha256"),
        overlap_ms=args.get("overlap_ms", 0),
        reason=args.get("reason"),
    )
    return True, {"code": code, "partner": status}


def _decide_refund(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = RefundCommand(
        args["refund_id"],
        args["partner_id"],
        args["payment_id"],
        args.get("amount_minor"),
        args.get("reason"),
        args.get("reference"),
        args["body_hash"],
        now_ms,
    )
    return _payment_result(*worker.state.execute_refund(cmd, ws))


def _decide_settings(worker: ShardWorker, args: dict[str, str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for key, value in args.items():
        worker.state.undo.setitem(ws.settings, key, value)
    return True, None


def _decide_fraud(worker: ShardWorker, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    # Rule-set changes go through the batcher so that a switch happens between two
    # payments, never inside a batch's decision of one payment.
    return worker.fraud_admin.decide(args, ws, now_ms, worker.state.undo)


_DECIDERS: dict[str, Callable[[ShardWorker, Any, WriteSet, int], tuple[bool, Any]]] = {
    "pay": _decide_pay,
    "fund": _decide_fund,
    "credit": _decide_credit,
    "delivered": _decide_delivered,
    "delivered_held": _decide_delivered_held,
    "open_accounts": _decide_open_accounts,
    "create_partner": _decide_create_partner,
    "create_agreement": _decide_create_agreement,
    "settings": _decide_settings,
    "fraud": _decide_fraud,
    "agreement_action": _decide_agreement_action,
    "refund": _decide_refund,
    "partner_rate_limit": _decide_partner_rate_limit,
    "partner_action": _decide_partner_action,
}
_WRITE_OPS = frozenset(_DECIDERS)
# A decider raising one of these met a value it cannot decide or store: the command's own
# fault (400, nothing stored). Anything else is the ledger's (500, nothing stored).
_CLIENT_VALUE_ERRORS = (ArithmeticError, KeyError, TypeError, ValueError, IndexError, msgspec.EncodeError)


UNREADABLE_IDS_MAX = 10_000


def _referenced_ids(op: str, args: Any) -> list[str]:
    """The stored transfer ids a write command may name (the prefetch looks them up)."""
    try:
        if op == "pay" or op == "fund":
            transfer_id = args.get("payment_id") or args.get("transfer_id")
            return [transfer_id] if isinstance(transfer_id, str) else []
        if op == "credit":
            return [leg[0] for leg in args if isinstance(leg[0], str)]
        if op == "refund":
            # The refund's own id (a retry?) and the payment it returns money from.
            return [i for i in (args.get("refund_id"), args.get("payment_id")) if isinstance(i, str)]
    except (AttributeError, IndexError, KeyError, TypeError):
        pass  # malformed: its decider answers BAD_REQUEST
    return []


# ---- reads (answered from memory, or from PostgreSQL's committed rows) ----------
def _timing_summary(timings: Any) -> dict[str, Any]:
    """p50/p99 of each stage of the group-commit cycle over the recent batches, in ms."""
    rows = list(timings)
    if not rows:
        return {"count": 0}

    def pct(index: int, q: float) -> float:
        values = sorted(row[index] for row in rows)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    summary: dict[str, Any] = {
        "count": len(rows),
        "commands_mean": round(sum(r[0] for r in rows) / len(rows), 1),
        "commands_max": max(r[0] for r in rows),
    }
    for index, stage in ((1, "decide_ms"), (2, "wait_writer_ms"), (3, "write_ms"), (4, "cycle_ms")):
        summary[stage] = {"p50": pct(index, 0.5), "p99": pct(index, 0.99)}
    return summary


def _relay_lag_ms(worker: ShardWorker) -> int:
    oldest = worker.relay.oldest_at_ms() if worker.relay is not None else None
    return max(0, worker.clock_ms() - oldest) if oldest is not None else 0


def _read_ping(worker: ShardWorker, args: Any) -> Any:
    return {
        "shard": worker.config.shard,
        "shard_count": worker.config.shard_count,
        "queue": len(worker.queue),
        "relay_pending": worker.relay.pending if worker.relay else 0,
        "relay_lag_ms": _relay_lag_ms(worker),
        # The relay's tasks are supervised in-process: their restarts, a crash loop.
        "relay": worker.relay.health() if worker.relay is not None else None,
        "committed_batches": worker.committed_batches,
        "committed_transfers": worker.committed_transfers,
        # Commands refused whole after their decision or its round-trip check raised.
        "decide_failures": worker.decide_failures,
        "effect_failures": worker.effect_failures,
        "batches": _timing_summary(worker.batch_timings),
        "prefetch": {
            "looked_up": worker.prefetch_lookups,
            "proved_new": worker.prefetch_skipped,
            "id_filter": worker.id_filter.stats() if worker.id_filter is not None else None,
        },
        # Which rule set this shard enforces, and whether a stored one failed to build.
        "fraud": worker.fraud_admin.status() if worker.fraud_admin is not None else None,
        # Replicated: seconds since the heartbeat last committed, when that is too long
        # (its server may be cut off; the worker stops at COMMIT_TIMEOUT_S).
        "commit_stalled_s": _commit_stalled_s(worker),
        # Rows this worker's readers skipped (ledger/rows.py): [[reader, table, count], ...].
        "quarantined": QUARANTINE.summary(),
    }


def _commit_stalled_s(worker: ShardWorker) -> float | None:
    if worker.heartbeat_conn is None:
        return None
    age_s = time.monotonic() - worker.last_commit_ok_s
    return round(age_s, 1) if age_s > COMMIT_STALL_S else None


def _read_lookup_account(worker: ShardWorker, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    if account is None:
        return None
    return {"id": account.id, "kind": account.kind, "currency": account.currency}


def _read_balance(worker: ShardWorker, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    partner = args.get("partner_id")
    if account is None or (partner is not None and not worker.state.can_see(partner, account.id, worker.clock_ms())):
        return None
    return {
        "id": account.id,
        "kind": account.kind,
        "currency": account.currency,
        "balance_minor": account.committed_balance_minor,
    }


AGREEMENT_HISTORY_MAX = 50
AGREEMENTS_PAGE_MAX = 201  # the gateway asks for its page size (200 at most) plus one


async def _read_agreement_async(worker: ShardWorker, wire: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        wire["history"] = await pg.fetch_agreement_events(conn, wire["id"], AGREEMENT_HISTORY_MAX)
    return wire


def _read_agreement(worker: ShardWorker, args: dict[str, Any]) -> Any:
    agreement = worker.state.agreements.get(args["id"])
    if agreement is None or agreement.partner_id != args.get("partner_id", agreement.partner_id):
        return None
    now_ms = worker.clock_ms()
    try:
        check_windows(agreement, now_ms)
    except RowError as exc:  # answered as an error (500), not as "no such agreement"
        QUARANTINE.skip("shard_read", exc, worker.config.shard)
        raise
    wire = agreement.to_wire(now_ms)
    return _read_agreement_async(worker, wire) if args.get("history") else wire


def _read_agreements(worker: ShardWorker, args: dict[str, Any]) -> Any:
    """A partner's (or a debtor account's) agreements, newest first: see ShardState.list_agreements."""
    partner_id, debtor = args.get("partner_id"), args.get("debtor_account")
    if (partner_id is None) == (debtor is None):
        raise ValueError("give exactly one of partner_id and debtor_account")
    status = args.get("status")
    if status is not None and status not in AgreementStatus.ALL:
        raise ValueError("unknown status")
    before = args.get("before")
    key = (int(before[0]), str(before[1])) if before is not None else None
    now_ms = worker.clock_ms()
    found, stopped_at = worker.state.list_agreements(
        partner_id=partner_id,
        debtor_account=debtor,
        status=status,
        before=key,
        limit=max(1, min(int(args.get("limit", 50)), AGREEMENTS_PAGE_MAX)),
        at_ms=now_ms,
    )
    return {
        "agreements": [a.to_wire(now_ms) for a in found if _readable_at(worker, a, now_ms)],
        "stopped_at": list(stopped_at) if stopped_at is not None else None,
    }


def _readable_at(worker: ShardWorker, agreement: Any, at_ms: int) -> bool:
    """Whether the agreement can be shown at at_ms (its limit windows computed); if not, quarantined."""
    try:
        check_windows(agreement, at_ms)
    except RowError as exc:
        QUARANTINE.skip("shard_read", exc, worker.config.shard)
        return False
    return True


async def _read_payment_async(worker: ShardWorker, transfer_id: str) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        transfer = await pg.fetch_transfer(conn, transfer_id)
    return transfer.to_wire() if transfer is not None else None


def _read_payment(worker: ShardWorker, args: dict[str, Any]) -> Any:
    transfer = worker.state.transfers.get(args["id"])
    if transfer is not None:
        return transfer.to_wire() if transfer.committed else None
    return _read_payment_async(worker, args["id"])


async def _read_transactions_async(worker: ShardWorker, args: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    limit = max(1, min(int(args.get("limit", 50)), TRANSACTIONS_PAGE_MAX))
    # No cursor for this shard: from the newest row. 0 is a position (nothing below it),
    # not "no cursor", and the bound keeps any value inside bigint.
    before = args.get("before_seq")
    before_seq = 2**62 if before is None else max(0, min(int(before), 2**62))
    async with worker.read_pool.acquire() as conn:
        rows = await pg.list_account_transfers(conn, args["id"], before_seq, limit)
    return [t.to_wire() for t in rows]


def _read_transactions(worker: ShardWorker, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    partner = args.get("partner_id")
    if account is None or (partner is not None and not worker.state.can_see(partner, account.id, worker.clock_ms())):
        return None
    return _read_transactions_async(worker, args)


async def _read_partner_async(worker: ShardWorker, partner_id: str) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM partners WHERE id = $1", partner_id)
    return dict(row) if row else None


def _read_partner(worker: ShardWorker, args: dict[str, Any]) -> Any:
    cached = worker.state.partners_cache.get(args["id"])
    if cached is not None:
        return cached
    return _read_partner_async(worker, args["id"])


def _read_partner_cutoffs(worker: ShardWorker, args: Any) -> Any:
    """Every partner's cut-off markers (ShardState.partner_cutoffs), or only the version when the
    caller's `since` ([epoch, version] of its last answer) is still current: the gateways poll
    this twice a second, so an unchanged answer costs a comparison."""
    version = [worker.cutoff_epoch, worker.state.cutoff_version]
    since = args.get("since") if isinstance(args, dict) else None
    if since == version:
        return {"version": version}
    return {"version": version, "cutoffs": worker.state.partner_cutoffs()}


PARTNER_AUDIT_MAX = 200


async def _read_partner_audit_async(worker: ShardWorker, partner_id: str, after: int, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        return await pg.partner_audit(conn, partner_id, after, limit)


def _read_partner_audit(worker: ShardWorker, args: dict[str, Any]) -> Any:
    v.ident(args, "id")
    after = v.int64(args, "after", 0)
    limit = v.int64(args, "limit", 1, PARTNER_AUDIT_MAX)
    return _read_partner_audit_async(worker, args["id"], after, limit)


async def _read_alerts_async(worker: ShardWorker, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, rule, account, at_ms, details FROM alerts ORDER BY at_ms DESC LIMIT $1", limit
        )
    return [
        {"alert_id": r["id"], "rule": r["rule"], "account": r["account"], "at_ms": r["at_ms"], "details": r["details"]}
        for r in QUARANTINE.decode_all("shard_read", rows, decode_alert)
    ]


def _read_alerts(worker: ShardWorker, args: dict[str, Any]) -> Any:
    return _read_alerts_async(worker, max(1, min(int(args.get("limit", 100)), 1000)))


# What one decisions call looks at, newest first, so that a filter matching nothing stops
# there instead of reading the whole journal: flagged payments (a rule fired or not allowed:
# the partial index transfers_flagged), or journal rows when every payment may match.
DECISIONS_SCAN_MAX = 10_000
DECISIONS_JOURNAL_SCAN_MAX = 100_000
_DECISION_FILTERS = (
    " ($1::text IS NULL OR coalesce(fraud->>'decision', 'allow') = $1)"
    " AND ($2::text IS NULL OR fraud->'reasons' @> jsonb_build_array(jsonb_build_object('rule_id', $2::text)))"
    " ORDER BY seq DESC LIMIT $3"
)


async def _read_decisions_async(worker: ShardWorker, decision: str | None, rule_id: str | None, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        if rule_id is not None or decision not in (None, "allow"):
            # Only a flagged payment (fraud stored, not NULL) can match.
            rows = await conn.fetch(
                "SELECT * FROM (" + pg.SELECT_TRANSFER + " WHERE fraud IS NOT NULL ORDER BY seq DESC LIMIT $4) f"
                " WHERE kind = 'payment' AND" + _DECISION_FILTERS,
                decision,
                rule_id,
                limit,
                DECISIONS_SCAN_MAX,
            )
        else:
            rows = await conn.fetch(
                pg.SELECT_TRANSFER + " WHERE seq >= $4 AND kind = 'payment' AND" + _DECISION_FILTERS,
                decision,
                rule_id,
                limit,
                worker.state.next_seq - DECISIONS_JOURNAL_SCAN_MAX,
            )
    return [t.to_wire() for t in QUARANTINE.decode_all("shard_read", rows, pg.row_to_transfer)]


def _read_decisions(worker: ShardWorker, args: dict[str, Any]) -> Any:
    limit = max(1, min(int(args.get("limit", 50)), TRANSACTIONS_PAGE_MAX))
    return _read_decisions_async(worker, args.get("decision"), args.get("rule_id"), limit)


FEED_RETENTION_MS = 30 * 86_400_000
RECON_PAGE_MAX = 5_000


async def _read_recon_async(worker: ShardWorker, args: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    limit = max(1, min(int(args.get("limit", RECON_PAGE_MAX)), RECON_PAGE_MAX))
    after = args.get("after")  # [created_at_ms, seq] of the previous page's last row
    async with worker.read_pool.acquire() as conn:
        rows = await pg.partner_day_transfers(
            conn,
            args["partner_id"],
            int(args["from_ms"]),
            int(args["to_ms"]),
            (int(after[0]), int(after[1])) if after is not None else None,
            limit,
        )
    return [[key, wire] for key, wire in rows]


def _read_recon(worker: ShardWorker, args: dict[str, Any]) -> Any:
    return _read_recon_async(worker, args)


async def _read_notify_async(worker: ShardWorker, args: dict[str, Any]) -> Any:
    """Webhook endpoints and the event feed (ledger/notify_store.py), in this shard's database:
    the gateway asks shard 0, the control database the notifier writes."""
    from . import notify_store as store

    assert worker.read_pool is not None
    action, partner_id, now_ms = args["action"], args["partner_id"], worker.clock_ms()
    async with worker.read_pool.acquire() as conn:
        if action == "create":
            return await store.create_endpoint(
                conn, args["id"], partner_id, args["url"], args["events"], args["secret"], now_ms
            )
        if action == "list":
            return await store.list_endpoints(conn, partner_id)
        if action == "get":
            return await store.get_endpoint(conn, partner_id, args["id"])
        if action == "delete":
            return await store.delete_endpoint(conn, partner_id, args["id"], now_ms)
        if action == "rotate":
            return await store.rotate_secret(conn, partner_id, args["id"], args["secret"], args["overlap_ms"], now_ms)
        if action == "stats":
            return await store.delivery_stats(conn)
        if action == "events":
            return await store.list_events(
                conn, partner_id, args["after"], args.get("type"), args["limit"], now_ms - FEED_RETENTION_MS
            )
    raise ValueError(f"unknown notify action {action!r}")


def _read_notify(worker: ShardWorker, args: dict[str, Any]) -> Any:
    return _read_notify_async(worker, args)


def _read_fraud(worker: ShardWorker, args: dict[str, Any]) -> Any:
    return worker.fraud_admin.read(args)


_READ_OPS: dict[str, Callable[[ShardWorker, Any], Any]] = {
    "ping": _read_ping,
    "lookup_account": _read_lookup_account,
    "balance": _read_balance,
    "agreement": _read_agreement,
    "agreements": _read_agreements,
    "payment": _read_payment,
    "transactions": _read_transactions,
    "partner": _read_partner,
    "partner_cutoffs": _read_partner_cutoffs,
    "partner_audit": _read_partner_audit,
    "fraud_read": _read_fraud,
    "alerts": _read_alerts,
    "decisions": _read_decisions,
    "notify": _read_notify,
    "recon": _read_recon,
}


async def run_worker(config: WorkerConfig) -> None:
    worker = ShardWorker(config)
    await worker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await worker.close()


def settlement_stripe(partner_id: str, currency: str) -> dict[str, Any]:
    return {
        "id": settlement_account_for(partner_id),
        "kind": "settlement",
        "currency": currency,
        "partner_id": partner_id,
    }
