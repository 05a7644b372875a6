"""Delivers the credit legs of cross-shard payments from this shard's outbox.

At-least-once: a leg stays in the outbox (PostgreSQL) until the creditor shard
has committed it; the creditor applies each transfer id once, so resending is
safe. After a restart the outbox is read back and sent again.

Each per-target task is supervised: one that ends with an exception (a bug, an
on_delivered that raised) is logged, counted and started again with a doubling backoff;
its in-memory queue is rebuilt from the outbox. RELAY_CRASH_LOOP_AFTER deaths in a row,
each before the task had run RELAY_HEALTHY_AFTER_S, make the relay *crash-looping*: the
shard's ping reports it (`health()`), and so do /readyz (degraded) and /admin/v1/health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .client import ShardClient
from .model import CreditLeg

__all__ = ["RELAY_CRASH_LOOP_AFTER", "Relay"]

log = logging.getLogger("quickpay.relay")

# As quickpay.supervisor does for processes: deaths in a row that make a task crash-looping,
# the uptime that clears them, and the restart backoff.
RELAY_CRASH_LOOP_AFTER = 3
RELAY_HEALTHY_AFTER_S = 30.0
RELAY_RESTART_MIN_S = 0.2
RELAY_RESTART_MAX_S = 5.0


class Relay:
    def __init__(
        self,
        shard: int,
        peers: dict[int, ShardClient],
        on_delivered: Callable[[list[str], list[str]], Awaitable[None]],
        reload_outbox: Callable[[], Awaitable[list[tuple[CreditLeg, int]]]],
        *,
        batch_size_max: int = 2_000,
        queue_max: int = 200_000,
        retry_backoff_max_s: float = 2.0,
    ) -> None:
        self.shard = shard
        self.peers = peers
        self.on_delivered = on_delivered
        self.reload_outbox = reload_outbox
        self.batch_size_max = batch_size_max
        self.queue_max = queue_max
        self.retry_backoff_max_s = retry_backoff_max_s
        self.queues: dict[int, deque[CreditLeg]] = {s: deque() for s in peers}
        self.queued: set[str] = set()
        self.wakeups: dict[int, asyncio.Event] = {s: asyncio.Event() for s in peers}
        self.overflowed = False
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False
        # Supervision (per target): when its task started, deaths in a row, the next backoff.
        self.started_at: dict[int, float] = {}
        self.failures: dict[int, int] = {s: 0 for s in peers}
        self.backoff_s: dict[int, float] = {s: RELAY_RESTART_MIN_S for s in peers}
        self.restarts = 0
        self.last_error: str | None = None

    def start(self) -> None:
        for target in self.peers:
            self._spawn(target)

    def _spawn(self, target: int) -> None:
        if self.closed:
            return
        task = asyncio.get_running_loop().create_task(self._run(target))
        self.started_at[target] = time.monotonic()
        self.tasks = [t for t in self.tasks if not t.done()] + [task]
        task.add_done_callback(lambda done: self._on_task_done(target, done))

    def _on_task_done(self, target: int, task: asyncio.Task[None]) -> None:
        """A task never ends by itself: an exception is a crash, restarted with a backoff."""
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if time.monotonic() - self.started_at.get(target, 0.0) > RELAY_HEALTHY_AFTER_S:
            self.failures[target] = 0
            self.backoff_s[target] = RELAY_RESTART_MIN_S
        self.failures[target] += 1
        self.last_error = f"to shard {target}: {exc!r}"[:300]
        delay = self.backoff_s[target]
        self.backoff_s[target] = min(delay * 2, RELAY_RESTART_MAX_S)
        log.error(
            "relay task to shard %s crashed (%r), %s in a row; restarting in %.1fs",
            target,
            exc,
            self.failures[target],
            delay,
            exc_info=exc,
        )
        # Legs popped but not acknowledged are still in the outbox: forget what the queues
        # no longer hold and read the outbox back (resending is safe: the creditor dedupes).
        self.queued = {leg.transfer_id for queue in self.queues.values() for leg in queue}
        self.overflowed = True
        asyncio.get_running_loop().call_later(delay, self._restart, target)

    def _restart(self, target: int) -> None:
        if self.closed:
            return
        self.restarts += 1
        self._spawn(target)
        self.wakeups[target].set()

    @property
    def crash_looping(self) -> bool:
        return any(count >= RELAY_CRASH_LOOP_AFTER for count in self.failures.values())

    def health(self) -> dict[str, Any]:
        """For the shard's ping: restarts of its tasks, and whether one is crash-looping."""
        return {
            "restarts": self.restarts,
            "crash_looping": self.crash_looping,
            "failures_in_a_row": max(self.failures.values(), default=0),
            "last_error": self.last_error,
        }

    def enqueue(self, legs: list[tuple[CreditLeg, int]]) -> None:
        for leg, target in legs:
            if leg.transfer_id in self.queued:
                continue
            if len(self.queued) >= self.queue_max:
                # The leg is safe in the outbox table; it is read back once the queue drains.
                self.overflowed = True
                continue
            leg.source_shard = self.shard
            self.queues[target].append(leg)
            self.queued.add(leg.transfer_id)
            self.wakeups[target].set()

    @property
    def pending(self) -> int:
        return len(self.queued)

    def oldest_at_ms(self) -> int | None:
        """The time of the oldest leg still to deliver (queues are in commit order)."""
        heads = [queue[0].at_ms for queue in self.queues.values() if queue]
        return min(heads) if heads else None

    async def _run(self, target: int) -> None:
        queue, wakeup, client = self.queues[target], self.wakeups[target], self.peers[target]
        backoff_s = 0.05
        while True:
            if not queue:
                if self.overflowed:
                    self.overflowed = False
                    try:
                        legs = await self.reload_outbox()
                    except Exception as exc:  # the database restarting: retry, never end the task
                        self.overflowed = True
                        log.warning("relay could not re-read the outbox (%s); retrying in %.2fs", exc, backoff_s)
                        await asyncio.sleep(backoff_s)
                        backoff_s = min(backoff_s * 2, self.retry_backoff_max_s)
                        continue
                    self.enqueue(legs)
                    continue
                wakeup.clear()
                await wakeup.wait()
                continue
            batch = [queue[i] for i in range(min(len(queue), self.batch_size_max))]
            try:
                answer = await client.call(
                    "credit",
                    [
                        [
                            leg.transfer_id,
                            leg.source_shard,
                            leg.creditor_account,
                            leg.amount_minor,
                            leg.currency,
                            leg.at_ms,
                        ]
                        for leg in batch
                    ],
                )
            except Exception as exc:  # any failure: keep the legs and retry later
                log.warning("relay to shard %s failed (%s); retrying in %.2fs", target, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.retry_backoff_max_s)
                continue
            backoff_s = 0.05
            for _ in batch:
                queue.popleft()
            ids = [leg.transfer_id for leg in batch]
            # Legs the creditor shard held (a balance beyond int64) are acknowledged but not
            # credited: the debtor shard keeps those payments InProcess.
            held = answer.get("held_ids") if isinstance(answer, dict) else None
            await self.on_delivered(ids, [i for i in held if isinstance(i, str)] if isinstance(held, list) else [])
            for transfer_id in ids:
                self.queued.discard(transfer_id)

    async def close(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
