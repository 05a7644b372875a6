"""The shard's in-memory state and its pure, synchronous decisions.

TigerBeetle's shape: the worker first makes sure everything a batch needs is in
memory (the prefetch), then decides each command here without I/O, applying its
effects to memory and to a WriteSet, and only then writes the WriteSet to
PostgreSQL in one transaction. Nothing in this module imports asyncpg or awaits.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from quickpay.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
from quickpay.money import INT64_MAX

from .model import (
    Account, Agreement, Code, CreditLeg, FundingCommand, Kind, PaymentCommand, Status,
    Transfer, invariant,
)

__all__ = ["ShardState", "WriteSet", "FraudPort", "MS_PER_DAY"]

MS_PER_DAY = 86_400_000


class FraudPort(Protocol):
    """What the ledger needs from the fraud filter (fraud.FraudFilter fits)."""

    def evaluate(self, facts: Any) -> Any: ...
    def record(self, facts: Any) -> None: ...


@dataclass(slots=True)
class WriteSet:
    """Everything one batch writes, in one transaction."""
    accounts: list[Account] = field(default_factory=list)
    partners: list[dict[str, Any]] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    deltas: dict[str, int] = field(default_factory=dict)
    outbox: list[CreditLeg] = field(default_factory=list)
    targets: dict[str, int] = field(default_factory=dict)   # transfer_id -> target shard for outbox rows
    delivered: list[str] = field(default_factory=list)
    # Outbox rows whose credit leg the creditor shard held (Code.HELD): the row goes, and the
    # payment stays AcceptedSettlementInProcess, because its money never reached the creditor.
    delivered_held: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.accounts or self.partners or self.agreements or self.transfers or self.deltas
                    or self.outbox or self.delivered or self.delivered_held or self.settings)

    def add_delta(self, account_id: str, delta_minor: int) -> None:
        # Deltas are aggregated per account per batch: the hot settlement stripe is
        # updated once per batch, not once per payment.
        self.deltas[account_id] = self.deltas.get(account_id, 0) + delta_minor

    def check_balanced(self) -> None:
        invariant(sum(self.deltas.values()) == 0,
                  f"batch deltas do not sum to zero: {sum(self.deltas.values())}")


class ShardState:
    def __init__(self, shard: int, shard_count: int, *, transfer_cache_max: int = 1_000_000,
                 fraud: FraudPort | None = None, make_facts: Any = None) -> None:
        invariant(0 <= shard < shard_count, "shard out of range")
        self.shard = shard
        self.shard_count = shard_count
        self.accounts: dict[str, Account] = {}
        self.agreements: dict[str, Agreement] = {}
        # account id -> partner ids allowed to see it (through an agreement or ownership)
        self.visibility: dict[str, set[str]] = {}
        # Partners created since start (older ones are read from PostgreSQL).
        self.partners_cache: dict[str, dict[str, Any]] = {}
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

    # ---- loading -------------------------------------------------------------
    def load_account(self, account: Account) -> None:
        self.accounts[account.id] = account
        if account.partner_id is not None:
            self.visibility.setdefault(account.id, set()).add(account.partner_id)

    def load_agreement(self, agreement: Agreement) -> None:
        self.agreements[agreement.id] = agreement
        self.visibility.setdefault(agreement.debtor_account, set()).add(agreement.partner_id)

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

    def total_balance_minor(self) -> int:
        return sum(a.balance_minor for a in self.accounts.values())

    # ---- decisions -----------------------------------------------------------
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
        transfer.seq = self.next_seq
        self.next_seq += 1
        ws.transfers.append(transfer)
        self.remember(transfer)
        return transfer

    def _move(self, ws: WriteSet, debit: Account, credit: Account, amount_minor: int) -> None:
        debit.balance_minor -= amount_minor
        credit.balance_minor += amount_minor
        ws.add_delta(debit.id, -amount_minor)
        ws.add_delta(credit.id, amount_minor)

    def execute_payment(self, cmd: PaymentCommand, ws: WriteSet) -> tuple[str, Transfer | None]:
        found = self._existing(cmd.payment_id, cmd.body_hash)
        if found is not None:
            return found
        agreement = self.agreements.get(cmd.agreement_id)
        if agreement is None or agreement.partner_id != cmd.partner_id:
            return Code.AGREEMENT_NOT_FOUND, None
        if agreement.status != "active":
            return Code.AGREEMENT_INACTIVE, None
        if cmd.currency != agreement.currency:
            return Code.CURRENCY_MISMATCH, None
        debtor = self.accounts[agreement.debtor_account]
        cross_shard = cmd.creditor_shard != self.shard
        if cross_shard:
            creditor = self.accounts[CLEARING_ACCOUNT]
        else:
            found_creditor = self.accounts.get(cmd.creditor_account)
            if found_creditor is None or found_creditor.kind in ("funding", "clearing") or (
                    found_creditor.kind == "settlement" and found_creditor.partner_id != cmd.partner_id):
                # Another partner's settlement account is not a valid creditor, and saying
                # "not found" does not tell the caller that it exists.
                return Code.CREDITOR_NOT_FOUND, None
            creditor = found_creditor
            if creditor.currency != cmd.currency:
                return Code.CURRENCY_MISMATCH, None
        if cmd.creditor_account == debtor.id:
            return Code.SAME_ACCOUNT, None

        facts = None
        reasons: list[str] = []
        fraud_dict: dict[str, Any] | None = None
        if self.fraud is not None:
            facts = self.make_facts(cmd, debtor.id)
            decision = self.fraud.evaluate(facts)
            # A plain allow with no rule fired is stored as NULL (read back as exactly
            # that): most payments, and it keeps the journal rows narrow.
            fraud_dict = decision.to_dict() if decision.hits or decision.action != "allow" else None
            if decision.action == "block":
                reasons.extend(decision.reason_codes)
        if not reasons:
            day = cmd.at_ms // MS_PER_DAY
            spent_minor = agreement.spent_minor if agreement.spent_day == day else 0
            if cmd.amount_minor > agreement.per_payment_limit_minor:
                reasons.append(Code.AGREEMENT_PER_PAYMENT_LIMIT)
            elif spent_minor + cmd.amount_minor > agreement.daily_limit_minor:
                reasons.append(Code.AGREEMENT_DAILY_LIMIT)
            elif debtor.balance_minor - cmd.amount_minor < 0 and not debtor.allow_negative:
                reasons.append(Code.INSUFFICIENT_FUNDS)
            elif creditor.balance_minor + cmd.amount_minor > INT64_MAX:
                reasons.append(Code.BALANCE_OVERFLOW)

        if reasons:
            status = Status.REJECTED
        else:
            status = Status.IN_PROCESS if cross_shard else Status.COMPLETED
            self._move(ws, debtor, creditor, cmd.amount_minor)
            day = cmd.at_ms // MS_PER_DAY
            if agreement.spent_day != day:
                agreement.spent_day, agreement.spent_minor = day, 0
            agreement.spent_minor += cmd.amount_minor
            if self.fraud is not None:
                self.fraud.record(facts)
            if cross_shard:
                leg = CreditLeg(cmd.payment_id, self.shard, cmd.creditor_account,
                                cmd.amount_minor, cmd.currency, cmd.at_ms)
                ws.outbox.append(leg)
                ws.targets[cmd.payment_id] = cmd.creditor_shard
        transfer = self._new_transfer(ws, Transfer(
            id=cmd.payment_id, seq=0, kind=Kind.PAYMENT, debit_account=debtor.id,
            credit_account=creditor.id, amount_minor=cmd.amount_minor, currency=cmd.currency,
            status=status, created_at_ms=cmd.at_ms, partner_id=cmd.partner_id,
            agreement_id=agreement.id, reference=cmd.reference,
            creditor_account=cmd.creditor_account, reasons=tuple(reasons), fraud=fraud_dict,
            body_hash=cmd.body_hash, device_id=cmd.device_id, ip=cmd.ip,
        ))
        return Code.OK, transfer

    def execute_funding(self, cmd: FundingCommand, ws: WriteSet) -> tuple[str, Transfer | None]:
        found = self._existing(cmd.transfer_id, cmd.body_hash)
        if found is not None:
            return found
        account = self.accounts.get(cmd.account_id)
        if account is None or account.kind != "customer":
            return Code.ACCOUNT_NOT_FOUND, None
        if account.currency != cmd.currency:
            return Code.CURRENCY_MISMATCH, None
        funding = self.accounts[FUNDING_ACCOUNT]
        reasons: tuple[str, ...]
        if account.balance_minor + cmd.amount_minor > INT64_MAX or \
                funding.balance_minor - cmd.amount_minor < -INT64_MAX:
            status, reasons = Status.REJECTED, (Code.BALANCE_OVERFLOW,)
        else:
            status, reasons = Status.COMPLETED, ()
            self._move(ws, funding, account, cmd.amount_minor)
        transfer = self._new_transfer(ws, Transfer(
            id=cmd.transfer_id, seq=0, kind=Kind.FUNDING, debit_account=funding.id,
            credit_account=account.id, amount_minor=cmd.amount_minor, currency=cmd.currency,
            status=status, created_at_ms=cmd.at_ms, reference=cmd.reference,
            creditor_account=account.id, reasons=reasons, body_hash=cmd.body_hash,
        ))
        return Code.OK, transfer

    def execute_credit(self, leg: CreditLeg, ws: WriteSet) -> str:
        """Apply the creditor half of a cross-shard payment exactly once."""
        existing = self.transfers.get(leg.transfer_id)
        if existing is not None:
            if not existing.committed:
                return Code.IN_FLIGHT
            # A resent leg that was held is still held: the debtor shard must not take the
            # acknowledgement for a credit.
            held = existing.kind == Kind.CREDIT_LEG and existing.status == Status.REJECTED
            return Code.HELD if held else Code.REPLAY
        creditor = self.accounts.get(leg.creditor_account)
        # The gateway checked the creditor before the debit leg was written, and
        # accounts are never deleted, so a missing creditor here is a broken invariant.
        invariant(creditor is not None, f"credit leg {leg.transfer_id} for unknown account {leg.creditor_account}")
        assert creditor is not None
        clearing = self.accounts[CLEARING_ACCOUNT]
        # The debit already happened on the source shard, so the leg cannot be refused;
        # but a balance beyond int64 would make the batch's write fail, stop the worker,
        # and the relay would resend the same leg after every restart (a crash loop).
        # Such a leg is recorded, moving nothing here: the money stays in the source
        # shard's clearing stripe (held in flight), visible to operators and the audit.
        reasons: tuple[str, ...]
        if creditor.balance_minor + leg.amount_minor > INT64_MAX or \
                clearing.balance_minor - leg.amount_minor < -INT64_MAX:
            status, reasons, code = Status.REJECTED, (Code.BALANCE_OVERFLOW,), Code.HELD
        else:
            status, reasons, code = Status.COMPLETED, (), Code.OK
            self._move(ws, clearing, creditor, leg.amount_minor)
        self._new_transfer(ws, Transfer(
            id=leg.transfer_id, seq=0, kind=Kind.CREDIT_LEG, debit_account=clearing.id,
            credit_account=creditor.id, amount_minor=leg.amount_minor, currency=leg.currency,
            status=status, created_at_ms=leg.at_ms, creditor_account=creditor.id,
            reference=f"from shard {leg.source_shard}", reasons=reasons,
        ))
        return code

    def mark_delivered(self, transfer_id: str, ws: WriteSet, *, held: bool = False) -> None:
        if held:
            ws.delivered_held.append(transfer_id)
            return
        ws.delivered.append(transfer_id)
        transfer = self.transfers.get(transfer_id)
        if transfer is not None and transfer.status == Status.IN_PROCESS:
            transfer.status = Status.COMPLETED

    def open_account(self, account: Account, ws: WriteSet) -> bool:
        if account.id in self.accounts:
            return False
        self.load_account(account)
        ws.accounts.append(account)
        return True

    def create_agreement(self, agreement: Agreement, ws: WriteSet) -> str:
        debtor = self.accounts.get(agreement.debtor_account)
        if debtor is None or debtor.kind != "customer":
            return Code.ACCOUNT_NOT_FOUND
        if debtor.currency != agreement.currency:
            return Code.CURRENCY_MISMATCH
        self.load_agreement(agreement)
        ws.agreements.append(agreement)
        return Code.OK

    def can_see(self, partner_id: str, account_id: str) -> bool:
        return partner_id in self.visibility.get(account_id, ())
