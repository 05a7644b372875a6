"""Ledger types shared by the pure decision code, the PostgreSQL adapter and the protocol.

Nothing here does I/O. Amounts are int minor units; times are int milliseconds
since the Unix epoch (UTC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Account", "Agreement", "Transfer", "PaymentCommand", "CreditLeg", "FundingCommand",
    "Status", "Code", "Kind", "LedgerInvariantError", "invariant",
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


class Kind:
    """What a journal row is. Every row debits one account and credits another by one amount."""
    PAYMENT = "payment"          # quick-payment debtor -> creditor (or -> clearing when cross-shard)
    FUNDING = "funding"          # bank funding stripe -> customer account
    CREDIT_LEG = "credit_leg"    # clearing stripe -> creditor, the second half of a cross-shard payment


class Code:
    """Result codes of a decision. OK and the Rejected reasons are recorded; the rest write nothing."""
    OK = "OK"
    REPLAY = "REPLAY"                                  # same key, same body: answer with the original
    EXISTS_WITH_DIFFERENT_BODY = "EXISTS_WITH_DIFFERENT_BODY"
    IN_FLIGHT = "IN_FLIGHT"                            # same key, original not yet committed
    AGREEMENT_NOT_FOUND = "AGREEMENT_NOT_FOUND"
    AGREEMENT_INACTIVE = "AGREEMENT_INACTIVE"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    CREDITOR_NOT_FOUND = "CREDITOR_NOT_FOUND"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    # Reasons recorded on a Rejected payment:
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    AGREEMENT_PER_PAYMENT_LIMIT = "AGREEMENT_PER_PAYMENT_LIMIT"
    AGREEMENT_DAILY_LIMIT = "AGREEMENT_DAILY_LIMIT"
    BALANCE_OVERFLOW = "BALANCE_OVERFLOW"
    # A credit leg the creditor shard cannot apply without leaving int64 (the creditor's
    # balance, or its clearing stripe's): recorded as a Rejected credit_leg row with reason
    # BALANCE_OVERFLOW, moving nothing; its amount stays in the debtor shard's clearing
    # stripe (credits in flight, held) for operators to resolve. `quickpay check` lists it.
    HELD = "HELD"


@dataclass(slots=True)
class Account:
    id: str
    kind: str                     # customer | settlement | funding | clearing
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
    id: str
    partner_id: str
    debtor_account: str
    currency: str
    per_payment_limit_minor: int
    daily_limit_minor: int
    status: str
    created_at_ms: int
    # Spend on the UTC day `spent_day` (days since epoch); rebuilt from the journal at start.
    spent_day: int = 0
    spent_minor: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "partner_id": self.partner_id, "debtor_account": self.debtor_account,
            "currency": self.currency, "per_payment_limit_minor": self.per_payment_limit_minor,
            "daily_limit_minor": self.daily_limit_minor, "status": self.status,
            "created_at_ms": self.created_at_ms,
        }


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
    creditor_account: str | None = None   # the payment's creditor (differs from credit_account when cross-shard)
    reasons: tuple[str, ...] = ()
    fraud: dict[str, Any] | None = None
    body_hash: str | None = None
    device_id: str | None = None
    ip: str | None = None
    committed: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "seq": self.seq, "kind": self.kind,
            "debit_account": self.debit_account, "credit_account": self.credit_account,
            "amount_minor": self.amount_minor, "currency": self.currency, "status": self.status,
            "created_at_ms": self.created_at_ms, "partner_id": self.partner_id,
            "agreement_id": self.agreement_id, "reference": self.reference,
            "creditor_account": self.creditor_account, "reasons": list(self.reasons),
            "fraud": self.fraud, "device_id": self.device_id, "ip": self.ip,
        }


@dataclass(slots=True)
class PaymentCommand:
    payment_id: str
    partner_id: str
    agreement_id: str
    amount_minor: int
    currency: str
    creditor_account: str
    creditor_shard: int          # routed by the gateway; equal to this shard for local and striped creditors
    reference: str
    body_hash: str
    at_ms: int
    device_id: str | None = None
    ip: str | None = None


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
