"""The shard worker: the single writer of one shard.

Pipeline: requests arrive over the socket protocol into a bounded queue; the
batcher takes up to `batch_size_max`, prefetches transfer ids it does not hold,
decides every command synchronously in ShardState, and hands the WriteSet to
the writer; the writer commits it in one transaction (fsync on) and only then
answers. While one batch commits, the next is decided, so CPU and fsync overlap.
A failed write stops the process: memory may be ahead of the database, and the
restart reloads the truth from PostgreSQL (fail-stop, like TigerBeetle).

This module holds the process lifecycle: the socket server (_ServerProtocol), start-up
and close, and run_worker. ShardWorker is put together from mixins, one per concern,
each a WorkerBase (ledger/worker_base.py: the state they share, set up by its __init__):

- ledger/dispatch.py: intake (enqueue, dispatch) and the per-command intake checks;
- ledger/batcher.py: the batcher (prefetch, then decide each command atomically), with
  the per-command deciders in ledger/deciders.py;
- ledger/writer.py: the group-commit writer;
- ledger/heartbeat.py: waiting for PostgreSQL, the fail-stop watchers, and `ping`;
- ledger/reads.py: the read ops; kernel/config.py: WorkerConfig.

The names other packages and the tests import from here are re-exported below.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from kernel.config import WorkerConfig
from kernel.ids import settlement_account_for

from . import pg, slot_map_store
from .batcher import BatcherMixin
from .client import ShardClient
from .deciders import _DECIDERS as _DECIDERS
from .dispatch import _CHECKS as _CHECKS
from .dispatch import DispatchMixin
from .fraud_port import FraudAdapter
from .handshake import HANDSHAKE_TIMEOUT_S, HandshakeError, ServerHandshake
from .heartbeat import HeartbeatMixin, _connect_waiting, _connect_writer_waiting
from .idfilter import IdFilter
from .model import CreditLeg
from .protocol import FrameDecoder, FrameError, encode_frame, encode_frames, parse_address
from .reads import DECISIONS_JOURNAL_SCAN_MAX as DECISIONS_JOURNAL_SCAN_MAX
from .reads import DECISIONS_SCAN_MAX as DECISIONS_SCAN_MAX
from .reads import _read_decisions_async as _read_decisions_async
from .relay import Relay
from .writable import split_hosts
from .writer import WriterMixin

__all__ = ["ShardWorker", "WorkerConfig", "run_worker"]

log = logging.getLogger("quickpay.shard")

# Rows per round trip when the transfer id filter is built at start-up.
ID_FILTER_FETCH_ROWS = 5_000
# How often long-lived objects are moved out of the garbage collector's sight.
GC_FREEZE_INTERVAL_S = 5.0
# asyncpg prepares every statement, and PostgreSQL may cache a generic plan made
# while a table was empty (a seq scan, a hash join over accounts) and keep using it
# once the table holds millions of rows. Reads replan every time; the two hot
# connections (prefetch, batch write) keep cached plans but may only use index paths,
# which is right for every statement they run after start-up.
_SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
_HOT_PATH_SETTINGS = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"


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


class ShardWorker(DispatchMixin, BatcherMixin, WriterMixin, HeartbeatMixin):
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
        self.held_slot_map = await slot_map_store.ensure_slot_map(
            self.write_conn, cfg.shard, cfg.shard_count, self.clock_ms()
        )
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
                # Built while the shard serves: without it every id is looked up in
                # PostgreSQL (the prefetch), which is correct, only slower; a restart
                # does not wait for a scan of the whole journal (10M ids: tens of seconds).
                self.id_filter_pending = []
                self.tasks.append(asyncio.get_running_loop().create_task(self._build_id_filter()))
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

    async def _build_id_filter(self) -> None:
        """The transfer id filter, from every id in the journal, then installed. Ids the
        batcher decides meanwhile go to `id_filter_pending` (ledger/batcher.py) and are
        added before the filter is installed, in the same step: the event loop runs one
        thing at a time, so no id decided before the install is missing from the filter.
        The scan's snapshot holds every id committed before it began; none was decided
        before it began (the task starts before the shard listens)."""
        assert self.read_pool is not None
        started = time.monotonic()
        ids = IdFilter(expected_ids=self.state.next_seq)
        try:
            async with self.read_pool.acquire() as conn, conn.transaction(readonly=True):
                # The cursor's snapshot is taken here (DECLARE); what commits later is not in
                # the scan, and reaches the filter through id_filter_pending.
                cursor = await conn.cursor("SELECT id FROM transfers")
                if self.config.id_filter_build_delay_s:  # tests: decisions land after the snapshot
                    await asyncio.sleep(self.config.id_filter_build_delay_s)
                # Small fetches, each added in bulk: the shard is serving meanwhile, and no
                # chunk may hold its event loop for long (50,000 rows held it ~50 ms).
                while rows := await cursor.fetch(ID_FILTER_FETCH_ROWS):
                    ids.update([row[0] for row in rows])
                    await asyncio.sleep(0)
        except Exception:
            # Without a filter the shard is only slower (every id looked up): go on without.
            self.id_filter_pending = None
            log.exception("shard %s: building the transfer id filter failed; serving without it", self.config.shard)
            return
        if self.id_filter_pending is None:  # abandoned: more ids were decided than it may hold
            log.warning("shard %s: the transfer id filter was abandoned; serving without it", self.config.shard)
            return
        pending = self.id_filter_pending
        for transfer_id in pending:
            ids.add(transfer_id)
        self.id_filter_pending = None
        self.id_filter = ids
        log.info(
            "shard %s: transfer id filter of %d ids built in %.2fs (%s; %d decided while it was built)",
            self.config.shard,
            len(ids),
            time.monotonic() - started,
            ids.stats(),
            len(pending),
        )

    async def _start_fraud(self) -> None:
        self.fraud_admin = FraudAdapter(self)
        await self.fraud_admin.start()

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
