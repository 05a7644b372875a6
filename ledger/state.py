"""The shard's in-memory state and its pure, synchronous decisions.

TigerBeetle's shape: the worker first makes sure everything a batch needs is in
memory (the prefetch), then decides each command here without I/O, applying its
effects to memory and to a WriteSet, and only then writes the WriteSet to
PostgreSQL in one transaction. Nothing in this module imports asyncpg or awaits.

ShardState holds the state (its __init__), makes each decision atomic (begin, rollback,
commit) and keeps the accounts; its other concerns are mixins, each in its own module:
the decisions that move money (ledger/balance_state.py), the transfer cache and the answers
to retries (ledger/transfer_cache.py), the agreements and their index
(ledger/agreement_state.py), partner cut-off (ledger/partner_state.py). WriteSet is
ledger/writeset.py's. The names other modules import from here are re-exported (__all__).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from sortedcontainers import SortedList

from kernel.limits import MS_PER_DAY, REFUND_WINDOW_DAYS

from . import agreements as mandates
from .agreement_state import (
    AGREEMENT_SCAN_MAX,
    PENDING_PER_ACCOUNT_MAX,
    PENDING_PER_PARTNER_MAX,
    AgreementStateMixin,
    pending_share,
)
from .balance_state import BalanceStateMixin, FraudPort
from .model import Account, Agreement, Transfer, invariant
from .partner_state import (
    PARTNER_ACTIONS,
    PARTNER_CUTOFF_FIELDS,
    SECRET_OVERLAP_MAX_MS,
    PartnerStateMixin,
    partner_status,
)
from .undo import UndoLog
from .writeset import WriteSet

__all__ = [
    "AGREEMENT_SCAN_MAX",
    "MS_PER_DAY",
    "PARTNER_ACTIONS",
    "PARTNER_CUTOFF_FIELDS",
    "PENDING_PER_ACCOUNT_MAX",
    "PENDING_PER_PARTNER_MAX",
    "REFUND_WINDOW_DAYS",
    "SECRET_OVERLAP_MAX_MS",
    "FraudPort",
    "ShardState",
    "WriteSet",
    "partner_status",
    "pending_share",
]


class ShardState(BalanceStateMixin, AgreementStateMixin, PartnerStateMixin):
    def __init__(
        self,
        shard: int,
        shard_count: int,
        *,
        transfer_cache_max: int = 1_000_000,
        fraud: FraudPort | None = None,
        make_facts: Any = None,
        refund_window_days: int = REFUND_WINDOW_DAYS,
        pending_expiry_s: int = mandates.PENDING_EXPIRY_S,
        pending_per_account_max: int = PENDING_PER_ACCOUNT_MAX,
        pending_per_partner_max: int = PENDING_PER_PARTNER_MAX,
    ) -> None:
        invariant(0 <= shard < shard_count, "shard out of range")
        self.shard = shard
        self.shard_count = shard_count
        self.accounts: dict[str, Account] = {}
        self.agreements: dict[str, Agreement] = {}
        # For listing, newest first: (created_at_ms, id) keys sorted ascending, per partner
        # and per debtor account.
        self.agreements_by_partner: dict[str, list[tuple[int, str]]] = {}
        self.agreements_by_debtor: dict[str, list[tuple[int, str]]] = {}
        self.refund_window_ms = refund_window_days * MS_PER_DAY
        # settlement account id -> the partner that owns it (always visible to it); customer
        # accounts are visible through an agreement the customer consented to (can_see)
        self.visibility: dict[str, set[str]] = {}
        # The agreement index, kept exact by load_agreement and transition_agreement (the
        # only places an agreement's stored status is set), so that no per-request check
        # walks a list of agreements. Expiry is derived at read time (valid_to,
        # authorise_by), so each entry holds the agreement's end and the question compares
        # it with the time asked about: (debtor account, partner) -> the sorted valid_to
        # (_NO_END for none) of every Authorised or Suspended agreement (a bare int for one):
        # can_see is "the largest is not past", O(1).
        self.visible_ends: dict[tuple[str, str], int | list[int]] = {}
        # AwaitingAuthorisation agreements' ends (ends_at_ms: the earlier of valid_to and
        # authorise_by), sorted, per (debtor account, partner) and per partner: how many have
        # not expired at a time is one bisection, O(log n). Expired ones stay until their
        # agreement leaves AwaitingAuthorisation (revoked), so a clock stepped back still
        # counts exactly what effective_status reads.
        self.pending_ends: dict[tuple[str, str], int | list[int]] = {}
        self.pending_ends_by_partner: dict[str, SortedList] = {}
        self.pending_expiry_ms = pending_expiry_s * 1000
        self.pending_per_account_max = pending_per_account_max
        self.pending_per_partner_max = pending_share(pending_per_partner_max, shard_count)
        # Every partner record of this shard (loaded at start, extended by create_partner):
        # the token endpoint and the cut-off decisions read it from memory.
        self.partners_cache: dict[str, dict[str, Any]] = {}
        # Raised by every change to a partner's cut-off markers (disabled, tokens valid
        # after), so a gateway polling `partner_cutoffs` gets the markers only when they changed.
        self.cutoff_version = 0
        # Recent transfers by id, least recently used first. Uncommitted ones are never
        # evicted; older ones are found again in PostgreSQL by the prefetch. Eviction
        # happens only between batches (`evict`, called by the batcher once a batch is
        # decided): an id a batch's prefetch found cached, or loaded, must still be here
        # when that batch decides it, or a retry would be decided as a new payment.
        self.transfers: OrderedDict[str, Transfer] = OrderedDict()
        self.transfer_cache_max = transfer_cache_max
        self.next_seq = 1
        self.fraud = fraud
        self.make_facts = make_facts
        # Every change a decision makes to the state above goes through this log, so that
        # a command that fails half-way is undone whole (begin / commit / rollback).
        self.undo = UndoLog()
        self._mark: tuple[tuple[int, ...], int] = ((), 0)
        # Transfer -> the facts it was recorded with (ledger.fraud_port.facts_of_payment),
        # for refunds to take a payment back out of the fraud windows.
        self.payment_facts: Any = None

    # ---- atomic decisions ----------------------------------------------------------
    def begin(self, ws: WriteSet) -> tuple[int, ...]:
        """Start deciding one command into `ws`; returns where `ws` stood."""
        self.undo.begin()
        mark = ws.mark()
        self._mark = (mark, self.next_seq)
        return mark

    def rollback(self, ws: WriteSet) -> None:
        """Leave memory and `ws` exactly as `begin` found them."""
        ws_mark, next_seq = self._mark
        self.undo.rollback()
        # New transfers were absent from the cache (a decision only creates an id it did
        # not find), so taking them out restores it.
        for transfer in ws.transfers[ws_mark[4] :]:
            self.transfers.pop(transfer.id, None)
        ws.truncate(ws_mark)
        self.next_seq = next_seq

    def commit(self) -> list[Any]:
        """The command succeeded (checks included): keep its changes; returns its deferred
        effects, which the caller runs before the next command is decided."""
        return self.undo.commit()

    # ---- loading -------------------------------------------------------------
    def load_account(self, account: Account) -> None:
        self.accounts[account.id] = account
        if account.partner_id is not None:
            self.visibility.setdefault(account.id, set()).add(account.partner_id)

    def total_balance_minor(self) -> int:
        return sum(a.balance_minor for a in self.accounts.values())

    def open_account(self, account: Account, ws: WriteSet) -> bool:
        if account.id in self.accounts:
            return False
        undo = self.undo
        undo.setitem(self.accounts, account.id, account)
        if account.partner_id is not None:
            seen = self.visibility.get(account.id)
            if seen is None:
                undo.setitem(self.visibility, account.id, {account.partner_id})
            elif account.partner_id not in seen:
                partner_id = account.partner_id
                undo.on_undo(lambda: seen.discard(partner_id))
                seen.add(account.partner_id)
        ws.accounts.append(account)
        return True
