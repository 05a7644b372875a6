"""The shard worker's hold on its PostgreSQL, and its health.

- waiting for PostgreSQL at start-up (_connect_waiting, _connect_writer_waiting);
- HeartbeatMixin, a part of ShardWorker: the fail-stop watchers (a lost connection, a
  pipeline task that ended, the commit heartbeat of a replicated database), each of which
  ends the process so that the restart reloads the truth;
- what `ping` reports (_read_ping: queue, relay, batch timings, a commit stall), a read op
  that ledger/reads.py lists with the others.
Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import asyncpg

from .rows import QUARANTINE
from .worker_base import WorkerBase
from .writable import (
    COMMIT_STALL_S,
    COMMIT_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    NoWritableHost,
    connect_writable,
    probe_commit,
)

__all__ = ["DB_WAIT_S", "HeartbeatMixin"]

log = logging.getLogger("quickpay.shard")

# A starting worker waits this long for its PostgreSQL to accept connections (it may
# be restarting after a crash and replaying its WAL) before it gives up and exits.
DB_WAIT_S = 60.0
_DB_NOT_YET = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)


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


class HeartbeatMixin(WorkerBase):
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


def _timing_summary(timings: Any) -> dict[str, Any]:
    """p50/p99 of each stage of the group-commit cycle over the recent batches, in ms."""
    rows = list(timings)
    if not rows:
        return {"count": 0}

    def pct(index: int, q: float) -> float:
        values: list[float] = sorted(row[index] for row in rows)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    summary: dict[str, Any] = {
        "count": len(rows),
        "commands_mean": round(sum(r[0] for r in rows) / len(rows), 1),
        "commands_max": max(r[0] for r in rows),
    }
    for index, stage in ((1, "decide_ms"), (2, "wait_writer_ms"), (3, "write_ms"), (4, "cycle_ms")):
        summary[stage] = {"p50": pct(index, 0.5), "p99": pct(index, 0.99)}
    return summary


def _relay_lag_ms(worker: WorkerBase) -> int:
    oldest = worker.relay.oldest_at_ms() if worker.relay is not None else None
    return max(0, worker.clock_ms() - oldest) if oldest is not None else 0


def _read_ping(worker: WorkerBase, args: Any) -> Any:
    return {
        "shard": worker.config.shard,
        "shard_count": worker.config.shard_count,
        # The slot map version this shard acts on (None before start-up loaded it).
        "slot_map_version": worker.held_slot_map.version if worker.held_slot_map is not None else None,
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


def _commit_stalled_s(worker: WorkerBase) -> float | None:
    if worker.heartbeat_conn is None:
        return None
    age_s = time.monotonic() - worker.last_commit_ok_s
    return round(age_s, 1) if age_s > COMMIT_STALL_S else None
