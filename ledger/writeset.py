"""WriteSet: everything one batch writes, in one transaction.

The shard's decisions (ledger/state.py) fill it; ledger/pg.py writes it. Split out of
ledger/state.py (issue 18, a pure move); ledger.state re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import Account, Agreement, CreditLeg, Transfer, invariant

__all__ = ["WriteSet"]


@dataclass(slots=True)
class WriteSet:
    """Everything one batch writes, in one transaction."""

    accounts: list[Account] = field(default_factory=list)
    partners: list[dict[str, Any]] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    # Status changes of existing agreements (id -> the agreement, written as it is after
    # the batch) and their history rows (agreement_id, from, to, actor, at_ms).
    agreement_updates: dict[str, Agreement] = field(default_factory=dict)
    agreement_events: list[tuple[str, str | None, str, str, int]] = field(default_factory=list)
    # Payments whose refunded_minor changed: payment id -> the new total.
    refunded: dict[str, int] = field(default_factory=dict)
    # Partners' rate-limit overrides: partner id -> (requests per s, burst).
    partner_limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Cut-off changes (ShardState.partner_action): partner id -> its PARTNER_CUTOFF_FIELDS as
    # they are after the batch; and their audit rows (partner_id, action, actor, at_ms, details).
    partner_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    partner_events: list[tuple[str, str, str, int, dict[str, Any]]] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    deltas: dict[str, int] = field(default_factory=dict)
    outbox: list[CreditLeg] = field(default_factory=list)
    targets: dict[str, int] = field(default_factory=dict)  # transfer_id -> target shard for outbox rows
    delivered: list[str] = field(default_factory=list)
    # Outbox rows whose credit leg the creditor shard held (Code.HELD): the row goes, and the
    # payment stays AcceptedSettlementInProcess, because its money never reached the creditor.
    delivered_held: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.transfers or self.deltas or self.outbox or self.needs_transaction())

    def needs_transaction(self) -> bool:
        """Anything beyond transfers, deltas and outbox rows (the one-statement fast path)."""
        return bool(
            self.accounts
            or self.partners
            or self.agreements
            or self.delivered
            or self.delivered_held
            or self.settings
            or self.agreement_updates
            or self.refunded
            or self.partner_limits
            or self.partner_updates
            or self.partner_events
        )

    def add_delta(self, account_id: str, delta_minor: int) -> None:
        """Aggregate a balance change (outside a decision; decisions record theirs in the
        state's undo log, ShardState._move)."""
        self.deltas[account_id] = self.deltas.get(account_id, 0) + delta_minor

    def mark(self) -> tuple[int, ...]:
        """Where each list stands before a command is decided: lists only grow during a
        batch, so `truncate(mark)` takes a failed command's rows out again."""
        return (
            len(self.accounts),
            len(self.partners),
            len(self.agreements),
            len(self.agreement_events),
            len(self.transfers),
            len(self.outbox),
            len(self.delivered),
            len(self.delivered_held),
            len(self.partner_events),
        )

    def truncate(self, mark: tuple[int, ...]) -> None:
        lists: tuple[list[Any], ...] = (
            self.accounts,
            self.partners,
            self.agreements,
            self.agreement_events,
            self.transfers,
            self.outbox,
            self.delivered,
            self.delivered_held,
            self.partner_events,
        )
        for rows, length in zip(lists, mark):
            del rows[length:]

    def check_balanced(self) -> None:
        invariant(sum(self.deltas.values()) == 0, f"batch deltas do not sum to zero: {sum(self.deltas.values())}")
