"""The soak's open-loop timetable: request k of a partner at t0 + phase + k / rate."""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Any

from loadtest.soak.client import Partner
from loadtest.soak.good import GoodTraffic
from loadtest.soak.hostile import HostileTraffic
from loadtest.soak.options import DRAIN_S, INFLIGHT_MAX


# ---- the soak ------------------------------------------------------------------------------
class Soak(GoodTraffic, HostileTraffic):
    """Every partner on its own open-loop timetable; in-flight requests bounded by INFLIGHT_MAX."""

    # -- the timetable
    async def _run_one(self, partner: Partner, scheduled: float) -> None:
        await self.refresh_token(partner)
        if partner.hostile:
            await self.hostile_op(partner, scheduled)
        else:
            op = self.rng.choices(self._ops, self._weights)[0]
            await self.good_op(partner, op, scheduled)

    async def drive(self, duration_s: float) -> dict[str, Any]:
        t0 = time.monotonic() + 0.5
        end = t0 + duration_s
        heap: list[tuple[float, int]] = []
        for partner in self.partners:
            heapq.heappush(heap, (t0 + self.rng.random() / partner.rate, partner.index))
        by_index = {p.index: p for p in self.partners}
        scheduled_count = 0
        while heap and heap[0][0] < end:  # bounded: every entry moves forward by 1/rate
            scheduled, index = heapq.heappop(heap)
            partner = by_index[index]
            heapq.heappush(heap, (scheduled + 1.0 / partner.rate, index))
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            partner.sent += 1
            scheduled_count += 1
            if len(self.inflight) >= INFLIGHT_MAX:
                partner.skipped += 1  # the generator's own bound, reported
                continue
            task = asyncio.create_task(self._run_one(partner, scheduled))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        drained = True
        if self.inflight:
            done, pending = await asyncio.wait(set(self.inflight), timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            drained = not pending
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        return {"scheduled": scheduled_count, "wall_s": round(time.monotonic() - t0, 1), "drained": drained}
