"""The decisions that move money: payments, refunds, funding, credit legs (and their delivery).

BalanceStateMixin, a part of ShardState (ledger/state.py): each decision checks the command
against memory, moves the balances (_move: recorded in the undo log, aggregated per account
in the WriteSet) and books the transfer (_book). The attributes it uses are set by
ShardState.__init__; the transfer cache and the answers to retries are its base's
(ledger/transfer_cache.py). Split out of ledger/state.py (issue 18, a pure move); ledger.state
re-exports FraudPort.
"""

from __future__ import annotations

from typing import Any, Protocol

from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT, settlement_account_for
from kernel.money import INT64_MAX

from . import agreements as mandates
from .model import (
    Account,
    Agreement,
    Code,
    CreditLeg,
    FundingCommand,
    Kind,
    PaymentCommand,
    RefundCommand,
    Status,
    Transfer,
    invariant,
)
from .transfer_cache import TransferCacheMixin
from .writeset import WriteSet

__all__ = ["BalanceStateMixin", "FraudPort"]


class FraudPort(Protocol):
    """What the ledger needs from the fraud filter (fraud.FraudFilter fits)."""

    def evaluate(self, facts: Any) -> Any: ...
    def record(self, facts: Any) -> None: ...
    def refund(self, facts: Any, amount_minor: int) -> None: ...


class BalanceStateMixin(TransferCacheMixin):
    # Set by ShardState.__init__.
    shard: int
    accounts: dict[str, Account]
    agreements: dict[str, Agreement]
    refund_window_ms: int
    fraud: FraudPort | None
    make_facts: Any
    payment_facts: Any

    def _move(self, ws: WriteSet, debit: Account, credit: Account, amount_minor: int) -> None:
        undo = self.undo
        undo.setattr(debit, "balance_minor", debit.balance_minor - amount_minor)
        undo.setattr(credit, "balance_minor", credit.balance_minor + amount_minor)
        # Deltas are aggregated per account per batch: the hot settlement stripe is
        # updated once per batch, not once per payment.
        deltas = ws.deltas
        undo.setitem(deltas, debit.id, deltas.get(debit.id, 0) - amount_minor)
        undo.setitem(deltas, credit.id, deltas.get(credit.id, 0) + amount_minor)

    def _book(
        self,
        ws: WriteSet,
        kind: str,
        transfer_id: str,
        debit: Account,
        credit: Account,
        amount_minor: int,
        currency: str,
        status: str,
        at_ms: int,
        **fields: Any,
    ) -> Transfer:
        """A new transfer (_new_transfer) of amount_minor from `debit` to `credit`, created at
        at_ms, with the other fields of its kind as given."""
        return self._new_transfer(
            ws,
            Transfer(
                id=transfer_id,
                seq=0,
                kind=kind,
                debit_account=debit.id,
                credit_account=credit.id,
                amount_minor=amount_minor,
                currency=currency,
                status=status,
                created_at_ms=at_ms,
                **fields,
            ),
        )

    def _save_limits(self, agreement: Agreement) -> None:
        """Record the agreement's limit windows and spend: checking a limit moves its window
        to the one holding the payment, and spending raises its spend."""
        limits = agreement.periodic_limits
        if not limits:
            return
        saved = [(limit, limit.window_start_ms, limit.window_end_ms, limit.spent_minor) for limit in limits]

        def restore() -> None:
            for limit, start_ms, end_ms, spent_minor in saved:
                limit.window_start_ms, limit.window_end_ms, limit.spent_minor = start_ms, end_ms, spent_minor

        self.undo.on_undo(restore)

    def execute_payment(self, cmd: PaymentCommand, ws: WriteSet) -> tuple[str, Transfer | None]:
        found = self._existing(cmd.payment_id, cmd.body_hash)
        if found is not None:
            return found
        agreement = self.agreements.get(cmd.agreement_id)
        if agreement is None or agreement.partner_id != cmd.partner_id:
            return Code.AGREEMENT_NOT_FOUND, None
        refusal = mandates.payment_refusal(
            agreement.status, agreement.valid_from_ms, agreement.valid_to_ms, cmd.at_ms, agreement.authorise_by_ms
        )
        if refusal is not None:
            return refusal, None
        if cmd.currency != agreement.currency:
            return Code.CURRENCY_MISMATCH, None
        debtor = self.accounts[agreement.debtor_account]
        cross_shard = cmd.creditor_shard != self.shard
        if cross_shard:
            creditor = self.accounts[CLEARING_ACCOUNT]
        else:
            found_creditor = self.accounts.get(cmd.creditor_account)
            if (
                found_creditor is None
                or found_creditor.kind in ("funding", "clearing")
                or (found_creditor.kind == "settlement" and found_creditor.partner_id != cmd.partner_id)
            ):
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
        details: dict[str, Any] | None = None
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
            self._save_limits(agreement)
            exceeded = mandates.limit_refusal(
                agreement.per_payment_limit_minor,
                agreement.periodic_limits,
                agreement.anchor_ms,
                cmd.amount_minor,
                cmd.at_ms,
            )
            if exceeded is not None:
                reasons.append(exceeded[0])
                details = {"reason_details": exceeded[1]}
            elif debtor.balance_minor - cmd.amount_minor < 0 and not debtor.allow_negative:
                reasons.append(Code.INSUFFICIENT_FUNDS)
            elif creditor.balance_minor + cmd.amount_minor > INT64_MAX:
                reasons.append(Code.BALANCE_OVERFLOW)

        if reasons:
            status = Status.REJECTED
        else:
            status = Status.IN_PROCESS if cross_shard else Status.COMPLETED
            self._move(ws, debtor, creditor, cmd.amount_minor)
            mandates.spend(agreement.periodic_limits, agreement.anchor_ms, cmd.amount_minor, cmd.at_ms)
            if self.fraud is not None:
                # Windows count the payment only once it has succeeded, checks included.
                self.undo.defer(self.fraud.record, facts)
            if cross_shard:
                leg = CreditLeg(
                    cmd.payment_id, self.shard, cmd.creditor_account, cmd.amount_minor, cmd.currency, cmd.at_ms
                )
                ws.outbox.append(leg)
                self.undo.setitem(ws.targets, cmd.payment_id, cmd.creditor_shard)
        transfer = self._book(
            ws,
            Kind.PAYMENT,
            cmd.payment_id,
            debtor,
            creditor,
            cmd.amount_minor,
            cmd.currency,
            status,
            cmd.at_ms,
            partner_id=cmd.partner_id,
            agreement_id=agreement.id,
            reference=cmd.reference,
            creditor_account=cmd.creditor_account,
            reasons=tuple(reasons),
            fraud=fraud_dict,
            body_hash=cmd.body_hash,
            device_id=cmd.device_id,
            ip=cmd.ip,
            details=details,
        )
        return Code.OK, transfer

    def execute_refund(self, cmd: RefundCommand, ws: WriteSet) -> tuple[str, Transfer | None]:
        """Return (part of) a payment credited to the partner's own settlement account: from
        the settlement stripe on this shard (the debtor's) to the debtor, never across shards."""
        found = self._existing(cmd.refund_id, cmd.body_hash)
        if found is not None:
            return found
        payment = self.transfers.get(cmd.payment_id)
        if payment is None or payment.kind != Kind.PAYMENT or payment.partner_id != cmd.partner_id:
            return Code.PAYMENT_NOT_FOUND, None
        if not payment.committed:
            return Code.PAYMENT_IN_FLIGHT, None
        if (
            payment.status == Status.REJECTED
            or payment.creditor_account != settlement_account_for(cmd.partner_id)
            or cmd.at_ms - payment.created_at_ms > self.refund_window_ms
        ):
            return Code.NOT_REFUNDABLE, None
        left_minor = payment.amount_minor - payment.refunded_minor
        amount_minor = left_minor if cmd.amount_minor is None else cmd.amount_minor
        if left_minor <= 0 or amount_minor > left_minor:
            return Code.EXCEEDS_PAYMENT, None
        settlement = self.accounts[payment.credit_account]
        debtor = self.accounts[payment.debit_account]
        invariant(
            settlement.kind == "settlement" and settlement.partner_id == cmd.partner_id,
            f"payment {payment.id} credited {settlement.id}, not its partner's settlement stripe",
        )
        reasons: tuple[str, ...] = ()
        if settlement.balance_minor - amount_minor < 0 and not settlement.allow_negative:
            reasons = (Code.INSUFFICIENT_FUNDS,)
        elif debtor.balance_minor + amount_minor > INT64_MAX:
            reasons = (Code.BALANCE_OVERFLOW,)
        if reasons:
            status = Status.REJECTED
        else:
            status = Status.SUCCEEDED
            self._move(ws, settlement, debtor, amount_minor)
            self.undo.setattr(payment, "refunded_minor", payment.refunded_minor + amount_minor)
            self.undo.setitem(ws.refunded, payment.id, payment.refunded_minor)
            if self.fraud is not None:
                # Refunded money leaves the velocity windows (in full: the payment leaves
                # count windows too); docs/hardening/fraud-fairness.md. Only once the refund
                # has succeeded, checks included.
                self.undo.defer(self.fraud.refund, self.payment_facts(payment), amount_minor)
        transfer = self._book(
            ws,
            Kind.REFUND,
            cmd.refund_id,
            settlement,
            debtor,
            amount_minor,
            payment.currency,
            status,
            cmd.at_ms,
            partner_id=cmd.partner_id,
            agreement_id=payment.agreement_id,
            reference=cmd.reference,
            creditor_account=debtor.id,
            reasons=reasons,
            body_hash=cmd.body_hash,
            details={"payment_id": payment.id, "reason": cmd.reason},
        )
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
        if (
            account.balance_minor + cmd.amount_minor > INT64_MAX
            or funding.balance_minor - cmd.amount_minor < -INT64_MAX
        ):
            status, reasons = Status.REJECTED, (Code.BALANCE_OVERFLOW,)
        else:
            status, reasons = Status.COMPLETED, ()
            self._move(ws, funding, account, cmd.amount_minor)
        transfer = self._book(
            ws,
            Kind.FUNDING,
            cmd.transfer_id,
            funding,
            account,
            cmd.amount_minor,
            cmd.currency,
            status,
            cmd.at_ms,
            reference=cmd.reference,
            creditor_account=account.id,
            reasons=reasons,
            body_hash=cmd.body_hash,
        )
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
        if (
            creditor.balance_minor + leg.amount_minor > INT64_MAX
            or clearing.balance_minor - leg.amount_minor < -INT64_MAX
        ):
            status, reasons, code = Status.REJECTED, (Code.BALANCE_OVERFLOW,), Code.HELD
        else:
            status, reasons, code = Status.COMPLETED, (), Code.OK
            self._move(ws, clearing, creditor, leg.amount_minor)
        self._book(
            ws,
            Kind.CREDIT_LEG,
            leg.transfer_id,
            clearing,
            creditor,
            leg.amount_minor,
            leg.currency,
            status,
            leg.at_ms,
            creditor_account=creditor.id,
            reference=f"from shard {leg.source_shard}",
            reasons=reasons,
        )
        return code

    def mark_delivered(self, transfer_id: str, ws: WriteSet, *, held: bool = False) -> None:
        if held:
            ws.delivered_held.append(transfer_id)
            return
        ws.delivered.append(transfer_id)
        transfer = self.transfers.get(transfer_id)
        if transfer is not None and transfer.status == Status.IN_PROCESS:
            self.undo.setattr(transfer, "status", Status.COMPLETED)
