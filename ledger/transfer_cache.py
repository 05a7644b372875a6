"""The shard's recent transfers by id, and what a retry of one is answered (idempotency).

TransferCacheMixin, a part of ShardState (ledger/state.py): the least-recently-used cache
the prefetch fills and the batcher trims between batches, the answer to a command whose id
is already taken (_existing: in flight, replayed, or the same id with a different body), and
the one place a decision adds a new transfer (_new_transfer). The attributes it uses are set
by ShardState.__init__. Split out of ledger/state.py (issue 18, a pure move).
"""

from __future__ import annotations

from collections import OrderedDict

from .model import Code, Transfer
from .undo import UndoLog
from .writeset import WriteSet

__all__ = ["TransferCacheMixin"]


class TransferCacheMixin:
    # Set by ShardState.__init__.
    transfers: OrderedDict[str, Transfer]
    transfer_cache_max: int
    next_seq: int
    undo: UndoLog

    def remember(self, transfer: Transfer) -> None:
        """Cache a transfer as most recently used. Never evicts (see `evict`)."""
        self.transfers[transfer.id] = transfer
        self.transfers.move_to_end(transfer.id)

    def touch(self, transfer_ids: list[str]) -> list[str]:
        """Mark the cached ids a batch refers to as recently used; return the others
        (the ones the prefetch must look up in PostgreSQL)."""
        transfers = self.transfers
        missing = []
        for transfer_id in transfer_ids:
            if transfer_id in transfers:
                transfers.move_to_end(transfer_id)
            else:
                missing.append(transfer_id)
        return missing

    def evict(self) -> None:
        """Drop least recently used committed transfers down to `transfer_cache_max`.

        Called between batches only, so the cache may exceed its bound by what one
        batch refers to, but never loses an id a batch still has to decide."""
        transfers = self.transfers
        while len(transfers) > self.transfer_cache_max:
            oldest_id, oldest = next(iter(transfers.items()))
            if not oldest.committed:
                break
            del transfers[oldest_id]

    def _existing(self, transfer_id: str, body_hash: str) -> tuple[str, Transfer] | None:
        existing = self.transfers.get(transfer_id)
        if existing is None:
            return None
        if not existing.committed:
            return Code.IN_FLIGHT, existing
        if existing.body_hash != body_hash:
            return Code.EXISTS_WITH_DIFFERENT_BODY, existing
        return Code.REPLAY, existing

    def _new_transfer(self, ws: WriteSet, transfer: Transfer) -> Transfer:
        # next_seq, ws.transfers and the cache entry are restored by rollback().
        self.undo.step()
        transfer.seq = self.next_seq
        self.next_seq += 1
        ws.transfers.append(transfer)
        self.remember(transfer)
        return transfer
