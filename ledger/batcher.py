"""The batcher: it collects queued commands, prefetches what they name, and decides them in memory.

BatcherMixin, a part of ShardWorker: takes up to batch_size_max commands, looks up the
stored transfers they name that memory does not hold (the prefetch), decides each one
atomically (the deciders, ledger/deciders.py) and hands the batch's WriteSet to the writer
(ledger/writer.py). Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import pg
from .deciders import _CLIENT_VALUE_ERRORS, _DECIDERS
from .dispatch import queue_weight
from .model import LedgerInvariantError
from .state import WriteSet
from .storable import check_command
from .worker_base import Reply, WorkerBase

__all__ = ["ID_FILTER_PENDING_MAX", "UNREADABLE_IDS_MAX", "BatcherMixin"]

log = logging.getLogger("quickpay.shard")


class BatcherMixin(WorkerBase):
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
            items, commands = self._take_batch(cfg.batch_size_max)
            started = time.monotonic()
            await self._prefetch(items)
            ws = WriteSet()
            replies: list[tuple[Reply, Any]] = []
            now_ms = self.clock_ms()
            unreadable = self.unreadable_ids
            for op, args, reply in items:
                if op == "pay_many":  # one column of payments: each decided as a lone pay, one answer
                    results = args.results
                    for index, item in args.pending:
                        if unreadable and item["payment_id"] in unreadable:
                            results[index] = [False, _UNREADABLE]
                        else:
                            results[index] = list(self._decide_one("pay", item, ws, now_ms))
                    replies.append((reply, (True, results)))
                    continue
                if unreadable and any(i in unreadable for i in _referenced_ids(op, args)):
                    replies.append((reply, (False, _UNREADABLE)))
                    continue
                replies.append((reply, self._decide_one(op, args, ws, now_ms)))
            # Only now, with every command of the batch decided: evicting while deciding
            # could drop an id the prefetch vouched for and decide its retry as new.
            self.state.evict()
            if self.id_filter is not None:
                for transfer in ws.transfers:
                    self.id_filter.add(transfer.id)
            elif self.id_filter_pending is not None:  # the filter is being built: it gets these
                self.id_filter_pending.extend(transfer.id for transfer in ws.transfers)
                if len(self.id_filter_pending) > ID_FILTER_PENDING_MAX:
                    # Bounded: a build that takes this long is abandoned (the shard serves
                    # without a filter, correct and slower), and never installed short of ids.
                    self.id_filter_pending = None
            await self.write_queue.put((ws, replies, commands, started, time.monotonic()))

    def _take_batch(self, commands_max: int) -> tuple[list[tuple[str, Any, Reply]], int]:
        """The next batch and the commands it holds: queue entries while they hold at most
        `commands_max` commands (a pay_many entry counts one per item), and always the first,
        so a batch holds at most max(batch_size_max, PAY_MANY_ITEMS_MAX) commands."""
        queue = self.queue
        items = [queue.popleft()]
        taken = queue_weight(*items[0][:2])
        while queue:
            weight = queue_weight(*queue[0][:2])
            if taken + weight > commands_max:
                break
            items.append(queue.popleft())
            taken += weight
        self.queued_weight -= taken
        return items, taken

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


UNREADABLE_IDS_MAX = 10_000
_UNREADABLE = {"code": "STORED_ROW_UNREADABLE", "message": "a stored transfer this names cannot be read (quarantined)"}
# Ids decided while the id filter is being built, at most (ledger/worker.py _build_id_filter).
ID_FILTER_PENDING_MAX = 2_000_000


def _referenced_ids(op: str, args: Any) -> list[str]:
    """The stored transfer ids a write command may name (the prefetch looks them up)."""
    try:
        if op == "pay_many":
            return [item["payment_id"] for _, item in args.pending]
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
