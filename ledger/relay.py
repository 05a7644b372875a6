"""Delivers the credit legs of cross-shard payments from this shard's outbox.

At-least-once: a leg stays in the outbox (PostgreSQL) until the creditor shard
has committed it; the creditor applies each transfer id once, so resending is
safe. After a restart the outbox is read back and sent again.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from .client import ShardClient
from .model import CreditLeg

__all__ = ["Relay"]

log = logging.getLogger("quickpay.relay")


class Relay:
    def __init__(self, shard: int, peers: dict[int, ShardClient],
                 on_delivered: Callable[[list[str], list[str]], Awaitable[None]],
                 reload_outbox: Callable[[], Awaitable[list[tuple[CreditLeg, int]]]],
                 *, batch_size_max: int = 2_000, queue_max: int = 200_000,
                 retry_backoff_max_s: float = 2.0) -> None:
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

    def start(self) -> None:
        for target in self.peers:
            self.tasks.append(asyncio.get_running_loop().create_task(self._run(target)))

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
                answer = await client.call("credit", [
                    [leg.transfer_id, leg.source_shard, leg.creditor_account, leg.amount_minor,
                     leg.currency, leg.at_ms] for leg in batch])
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
        for task in self.tasks:
            task.cancel()
