"""Ledger types shared by the pure decision code, the PostgreSQL adapter and the protocol.

Nothing here does I/O. Amounts are int minor units; times are int milliseconds
since the Unix epoch (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernel.errors import Code

from .agreements import PeriodicLimit, effective_status, remaining

__all__ = [
    "Account",
    "Agreement",
    "Code",
    "CreditLeg",
    "FundingCommand",
    "Kind",
    "LedgerInvariantError",
    "PaymentCommand",
    "RefundCommand",
    "Status",
    "Transfer",
    "invariant",
]


class LedgerInvariantError(RuntimeError):
    """A broken ledger invariant. The shard worker stops rather than write past one."""


def invariant(condition: bool, message: str) -> None:
    # A helper instead of `assert`, which vanishes under `python -O`.
    if not condition:
        raise LedgerInvariantError(message)


class Status:
    COMPLETED = "AcceptedSettlementCompleted"
    IN_PROCESS = "AcceptedSettlementInProcess"
    REJECTED = "Rejected"
    SUCCEEDED = "Succeeded"  # a refund that moved its money


class Kind:
    """What a journal row is. Every row debits one account and credits another by one amount."""

    PAYMENT = "payment"  # quick-payment debtor -> creditor (or -> clearing when cross-shard)
    FUNDING = "funding"  # bank funding stripe -> customer account
    CREDIT_LEG = "credit_leg"  # clearing stripe -> creditor, the second half of a cross-shard payment
    REFUND = "refund"  # partner's settlement stripe -> the refunded payment's debtor (same shard)


@dataclass(slots=True)
class Account:
    id: str
    kind: str  # customer | settlement | funding | clearing
    currency: str
    balance_minor: int
    allow_negative: bool
    partner_id: str | None = None  # owner of a settlement account
    created_at_ms: int = 0
    # What PostgreSQL holds: balance_minor runs ahead by the batches being decided
    # and committed; reads answer with this one.
    committed_balance_minor: int = 0


@dataclass(slots=True)
class Agreement:
    """A customer's mandate for a partner (ledger/agreements.py decides its lifecycle and limits)."""

    id: str
    partner_id: str
    debtor_account: str
    currency: str
    per_payment_limit_minor: int
    periodic_limits: list[PeriodicLimit]
    status: str
    created_at_ms: int
    valid_from_ms: int | None = None
    valid_to_ms: int | None = None
    status_updated_at_ms: int = 0
    # AwaitingAuthorisation past this reads Expired (created_at + the pending expiry; None:
    # no pending expiry, as for agreements stored before it existed).
    authorise_by_ms: int | None = None

    @property
    def anchor_ms(self) -> int:
        """Where Consent-aligned periods start."""
        return self.valid_from_ms if self.valid_from_ms is not None else self.created_at_ms

    def to_wire(self, at_ms: int | None = None) -> dict[str, Any]:
        """The agreement as stored, plus (given the time of the question) its effective
        status and what remains of each limit in the current window."""
        wire: dict[str, Any] = {
            "id": self.id,
            "partner_id": self.partner_id,
            "debtor_account": self.debtor_account,
            "currency": self.currency,
            "per_payment_limit_minor": self.per_payment_limit_minor,
            "periodic_limits": [limit.to_wire() for limit in self.periodic_limits],
            "status": self.status,
            "created_at_ms": self.created_at_ms,
            "valid_from_ms": self.valid_from_ms,
            "valid_to_ms": self.valid_to_ms,
            "status_updated_at_ms": self.status_updated_at_ms,
            "authorise_by_ms": self.authorise_by_ms,
        }
        if at_ms is not None:
            wire["status"] = effective_status(self.status, self.valid_to_ms, at_ms, self.authorise_by_ms)
            for out, limit in zip(wire["periodic_limits"], self.periodic_limits):
                left, start, end = remaining(limit, self.anchor_ms, at_ms)
                out.update(remaining_minor=left, period_start_ms=start, period_end_ms=end)
        return wire


@dataclass(slots=True)
class Transfer:
    """One immutable journal row (its status may advance InProcess -> Completed once)."""

    id: str
    seq: int
    kind: str
    debit_account: str
    credit_account: str
    amount_minor: int
    currency: str
    status: str
    created_at_ms: int
    partner_id: str | None = None
    agreement_id: str | None = None
    reference: str | None = None
    creditor_account: str | None = None  # the payment's creditor (differs from credit_account when cross-shard)
    reasons: tuple[str, ...] = ()
    fraud: dict[str, Any] | None = None
    body_hash: str | None = None
    device_id: str | None = None
    ip: str | None = None
    # What succeeded refunds have returned of this payment (refunds only ever raise it,
    # never past amount_minor: a CHECK in the schema, and `quickpay check`).
    refunded_minor: int = 0
    # A Rejected payment's limit and period (reason_details); a refund's payment_id and reason.
    details: dict[str, Any] | None = None
    committed: bool = False

    def to_wire(self) -> dict[str, Any]:
        # A literal dict, field by field: on the hot path, and faster than dataclasses.asdict.
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "status": self.status,
            "created_at_ms": self.created_at_ms,
            "partner_id": self.partner_id,
            "agreement_id": self.agreement_id,
            "reference": self.reference,
            "creditor_account": self.creditor_account,
            "reasons": list(self.reasons),
            "fraud": self.fraud,
            "device_id": self.device_id,
            "ip": self.ip,
            "refunded_minor": self.refunded_minor,
            "details": self.details,
        }


@dataclass(slots=True)
class PaymentCommand:
    payment_id: str
    partner_id: str
    agreement_id: str
    amount_minor: int
    currency: str
    creditor_account: str
    creditor_shard: int  # routed by the gateway; equal to this shard for local and striped creditors
    reference: str
    body_hash: str
    at_ms: int
    device_id: str | None = None
    ip: str | None = None


@dataclass(slots=True)
class RefundCommand:
    refund_id: str
    partner_id: str
    payment_id: str
    amount_minor: int | None  # None: what remains of the payment
    reason: str | None
    reference: str | None
    body_hash: str
    at_ms: int


@dataclass(slots=True)
class FundingCommand:
    transfer_id: str
    account_id: str
    amount_minor: int
    currency: str
    reference: str
    body_hash: str
    at_ms: int


@dataclass(slots=True)
class CreditLeg:
    """The creditor half of a cross-shard payment, delivered by the debtor shard's relay."""

    transfer_id: str
    source_shard: int
    creditor_account: str
    amount_minor: int
    currency: str
    at_ms: int
    extra: dict[str, Any] = field(default_factory=dict)
