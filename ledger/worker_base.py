"""The state every part of the shard worker shares: WorkerBase, set up once by its __init__.

ShardWorker (ledger/worker.py) is put together from mixins, one per concern (intake and
dispatch, the batcher, the writer, the heartbeat), and each of them is a WorkerBase, so
that the attributes they read and write are declared, and typed, in this one place. The
per-command functions (the intake checks and deciders, ledger/dispatch.py and
ledger/deciders.py; the reads, ledger/reads.py) take a WorkerBase as their first argument.
Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg

from kernel.config import WorkerConfig
from kernel.limits import PIPELINE_DEPTH_DEFAULT
from kernel.slots import SlotMap

from .client import ShardClient
from .handshake import cluster_secret
from .idfilter import IdFilter
from .relay import Relay
from .state import ShardState, WriteSet

__all__ = ["BATCH_TIMINGS_MAX", "PIPELINE_DEPTH", "Reply", "WorkerBase"]

# Batches whose timings `ping` summarises (a window, not a history).
BATCH_TIMINGS_MAX = 2_048
# One batch committing while the next is prefetched and decided: the default of
# WorkerConfig.pipeline_depth (quickpay up --pipeline-depth).
PIPELINE_DEPTH = PIPELINE_DEPTH_DEFAULT


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


Reply = Callable[[bool, Any], None]


class WorkerBase:
    # The slot map this shard acts on (ledger/slot_map_store.py), loaded at start-up; None for a
    # ledger without one (a shard count that does not divide SLOT_COUNT): no slot guard then.
    held_slot_map: SlotMap | None = None

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
        # Commands in `queue`, a pay_many entry counting one per item (ledger/dispatch.py).
        self.queued_weight = 0
        self.work_ready = asyncio.Event()
        # (write set, answers, commands decided (a pay_many counts one per item), started, decided)
        self.write_queue: asyncio.Queue[tuple[WriteSet, list[tuple[Reply, Any]], int, float, float]] = asyncio.Queue()
        # The group-commit cycle of the last BATCH_TIMINGS_MAX batches, for `ping`:
        # (commands, prefetch+decide s, wait for the writer s, write s, whole cycle s).
        self.batch_timings: deque[tuple[int, float, float, float, float]] = deque(maxlen=BATCH_TIMINGS_MAX)
        # Batches decided but not yet committed (config.pipeline_depth). The batcher takes a
        # slot BEFORE it drains the intake queue, so while the pipeline is full requests pile
        # up and the next batch is bigger: that is what makes the commit a group commit. The
        # one writer commits them one at a time in the order decided (ledger/writer.py), so a
        # deeper pipeline means more batches decided ahead, never two commits at once.
        self.pipeline_slots = asyncio.Semaphore(config.pipeline_depth)
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
        # While the filter is being built (ledger/worker.py): the ids decided meanwhile.
        self.id_filter_pending: list[str] | None = None
        self.prefetch_lookups = 0  # ids looked up in PostgreSQL
        self.prefetch_skipped = 0  # ids the filter proved new
        self.decide_failures = 0  # commands rolled back because deciding or checking them raised
        self.effect_failures = 0  # deferred effects (fraud window records) that raised
        self.committed_transfers = 0
        self.closing = False
        # Stored transfer ids whose rows cannot be read (ledger/rows.py): they exist, so a
        # command naming one is refused, never decided as new (its insert would fail the batch).
        self.unreadable_ids: set[str] = set()
