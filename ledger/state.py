"""The shard's in-memory state and its pure, synchronous decisions.

TigerBeetle's shape: the worker first makes sure everything a batch needs is in
memory (the prefetch), then decides each command here without I/O, applying its
effects to memory and to a WriteSet, and only then writes the WriteSet to
PostgreSQL in one transaction. Nothing in this module imports asyncpg or awaits.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from sortedcontainers import SortedList

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
from .undo import UndoLog

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

MS_PER_DAY = 86_400_000
# Cut-off (ShardState.partner_action): what an operator may do to a partner, and the
# partner-record fields those actions change (written as one UPDATE per partner and batch).
PARTNER_ACTIONS = ("disable", "enable", "rotate_secret", "retire_secret", "revoke_tokens")
PARTNER_CUTOFF_FIELDS = (
    "secret_sha256",
    "previous_secret_sha256",
    "previous_secret_until_ms",
    "disabled_at_ms",
    "tokens_valid_after_ms",
)
SECRET_OVERLAP_MAX_MS = 30 * 86_400_000
# How long after a payment it may be refunded (quickpay up --refund-window-days).
REFUND_WINDOW_DAYS = 365
# Agreement statuses under which the partner may read the customer's account.
VISIBLE_STATUSES = frozenset({mandates.AgreementStatus.AUTHORISED, mandates.AgreementStatus.SUSPENDED})
# Agreements one list call looks at on one shard: a page filtered by status may come back
# short (with a cursor to go on) rather than scan a partner's whole book in one call.
AGREEMENT_SCAN_MAX = 1_000
# Agreements a partner may have AwaitingAuthorisation (and not expired) at once: over one
# customer account, and in total (quickpay up --pending-per-account-max / --pending-per-partner-max).
# The total is shared out over the shards (pending_share), so all shards together never exceed it.
PENDING_PER_ACCOUNT_MAX = 10
PENDING_PER_PARTNER_MAX = 10_000
# Stands for "no end" (valid_to NULL) in the sorted end lists below: above any time in ms.
_NO_END = 2**63


def pending_share(total_max: int, shard_count: int) -> int:
    """One shard's part of a partner's total pending cap: the floor of an even split (at least
    1), so the shards' parts never add up to more than the total (unless it is below the
    shard count)."""
    return max(1, total_max // shard_count)


def _insort(index: dict[Any, int | list[int]], key: Any, value: int) -> None:
    """Add value to the sorted multiset at index[key]: a bare int while it holds one value (the
    usual case: one agreement per account and partner), a sorted list beyond."""
    values = index.get(key)
    if values is None:
        index[key] = value
    elif isinstance(values, int):
        index[key] = [values, value] if values <= value else [value, values]
    else:
        bisect.insort(values, value)


def _discard(index: dict[Any, int | list[int]], key: Any, value: int) -> None:
    values = index.get(key)
    if values is None:
        return
    if isinstance(values, int):
        if values == value:
            del index[key]
        return
    position = bisect.bisect_left(values, value)
    if position < len(values) and values[position] == value:
        del values[position]
        if len(values) == 1:
            index[key] = values[0]


def _at_or_after(values: int | list[int] | None, at_ms: int) -> int:
    """How many of the values are >= at_ms (ends not yet past at at_ms)."""
    if values is None:
        return 0
    if isinstance(values, int):
        return 1 if values >= at_ms else 0
    return len(values) - bisect.bisect_left(values, at_ms)


class FraudPort(Protocol):
    """What the ledger needs from the fraud filter (fraud.FraudFilter fits)."""

    def evaluate(self, facts: Any) -> Any: ...
    def record(self, facts: Any) -> None: ...
    def refund(self, facts: Any, amount_minor: int) -> None: ...


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
        return not (
            self.accounts
            or self.partners
            or self.agreements
            or self.transfers
            or self.deltas
            or self.outbox
            or self.delivered
            or self.delivered_held
            or self.settings
            or self.agreement_updates
            or self.refunded
            or self.partner_limits
            or self.partner_updates
            or self.partner_events
        )

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


class ShardState:
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

    def load_agreement(self, agreement: Agreement) -> None:
        previous = self.agreements.get(agreement.id)
        if previous is not None:
            self._unindex(previous)
        self.agreements[agreement.id] = agreement
        self._index(agreement)
        key = (agreement.created_at_ms, agreement.id)
        for index, owner in (
            (self.agreements_by_partner, agreement.partner_id),
            (self.agreements_by_debtor, agreement.debtor_account),
        ):
            keys = index.setdefault(owner, [])
            if not keys or keys[-1] < key:
                keys.append(key)  # the usual case: created in time order
            else:
                bisect.insort(keys, key)

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
        # next_seq, ws.transfers and the cache entry are restored by rollback().
        self.undo.step()
        transfer.seq = self.next_seq
        self.next_seq += 1
        ws.transfers.append(transfer)
        self.remember(transfer)
        return transfer

    def _move(self, ws: WriteSet, debit: Account, credit: Account, amount_minor: int) -> None:
        undo = self.undo
        undo.setattr(debit, "balance_minor", debit.balance_minor - amount_minor)
        undo.setattr(credit, "balance_minor", credit.balance_minor + amount_minor)
        # Deltas are aggregated per account per batch: the hot settlement stripe is
        # updated once per batch, not once per payment.
        deltas = ws.deltas
        undo.setitem(deltas, debit.id, deltas.get(debit.id, 0) - amount_minor)
        undo.setitem(deltas, credit.id, deltas.get(credit.id, 0) + amount_minor)

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
        transfer = self._new_transfer(
            ws,
            Transfer(
                id=cmd.payment_id,
                seq=0,
                kind=Kind.PAYMENT,
                debit_account=debtor.id,
                credit_account=creditor.id,
                amount_minor=cmd.amount_minor,
                currency=cmd.currency,
                status=status,
                created_at_ms=cmd.at_ms,
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
            ),
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
        transfer = self._new_transfer(
            ws,
            Transfer(
                id=cmd.refund_id,
                seq=0,
                kind=Kind.REFUND,
                debit_account=settlement.id,
                credit_account=debtor.id,
                amount_minor=amount_minor,
                currency=payment.currency,
                status=status,
                created_at_ms=cmd.at_ms,
                partner_id=cmd.partner_id,
                agreement_id=payment.agreement_id,
                reference=cmd.reference,
                creditor_account=debtor.id,
                reasons=reasons,
                body_hash=cmd.body_hash,
                details={"payment_id": payment.id, "reason": cmd.reason},
            ),
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
        transfer = self._new_transfer(
            ws,
            Transfer(
                id=cmd.transfer_id,
                seq=0,
                kind=Kind.FUNDING,
                debit_account=funding.id,
                credit_account=account.id,
                amount_minor=cmd.amount_minor,
                currency=cmd.currency,
                status=status,
                created_at_ms=cmd.at_ms,
                reference=cmd.reference,
                creditor_account=account.id,
                reasons=reasons,
                body_hash=cmd.body_hash,
            ),
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
        self._new_transfer(
            ws,
            Transfer(
                id=leg.transfer_id,
                seq=0,
                kind=Kind.CREDIT_LEG,
                debit_account=clearing.id,
                credit_account=creditor.id,
                amount_minor=leg.amount_minor,
                currency=leg.currency,
                status=status,
                created_at_ms=leg.at_ms,
                creditor_account=creditor.id,
                reference=f"from shard {leg.source_shard}",
                reasons=reasons,
            ),
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

    # ---- the agreement index (see __init__) -------------------------------------------
    def _index(self, agreement: Agreement) -> None:
        pair = (agreement.debtor_account, agreement.partner_id)
        status = agreement.status
        if status in VISIBLE_STATUSES:
            _insort(self.visible_ends, pair, _NO_END if agreement.valid_to_ms is None else agreement.valid_to_ms)
        elif status == mandates.AgreementStatus.AWAITING:
            end = self._pending_end(agreement)
            _insort(self.pending_ends, pair, end)
            ends = self.pending_ends_by_partner.get(agreement.partner_id)
            if ends is None:
                ends = self.pending_ends_by_partner[agreement.partner_id] = SortedList()
            ends.add(end)

    def _unindex(self, agreement: Agreement) -> None:
        pair = (agreement.debtor_account, agreement.partner_id)
        status = agreement.status
        if status in VISIBLE_STATUSES:
            _discard(self.visible_ends, pair, _NO_END if agreement.valid_to_ms is None else agreement.valid_to_ms)
        elif status == mandates.AgreementStatus.AWAITING:
            end = self._pending_end(agreement)
            _discard(self.pending_ends, pair, end)
            ends = self.pending_ends_by_partner.get(agreement.partner_id)
            if ends is not None:
                ends.discard(end)
                if not ends:
                    del self.pending_ends_by_partner[agreement.partner_id]

    @staticmethod
    def _pending_end(agreement: Agreement) -> int:
        end = mandates.ends_at_ms(agreement.status, agreement.valid_to_ms, agreement.authorise_by_ms)
        return _NO_END if end is None else end

    def pending_count(self, partner_id: str, account_id: str | None, at_ms: int) -> int:
        """The partner's agreements AwaitingAuthorisation and not expired at at_ms, over
        `account_id` (None: over any account of this shard)."""
        if account_id is not None:
            return _at_or_after(self.pending_ends.get((account_id, partner_id)), at_ms)
        ends = self.pending_ends_by_partner.get(partner_id)
        return 0 if ends is None else len(ends) - ends.bisect_left(at_ms)

    def _add_agreement(self, agreement: Agreement) -> None:
        """load_agreement for a decision: recorded in the undo log."""
        undo = self.undo
        undo.setitem(self.agreements, agreement.id, agreement)
        undo.on_undo(lambda: self._unindex(agreement))
        self._index(agreement)
        key = (agreement.created_at_ms, agreement.id)
        for index, owner in (
            (self.agreements_by_partner, agreement.partner_id),
            (self.agreements_by_debtor, agreement.debtor_account),
        ):
            keys = index.get(owner)
            if keys is None:
                undo.setitem(index, owner, [key])
                continue
            undo.on_undo(lambda keys=keys, key=key: keys.remove(key))  # type: ignore[misc]
            keys.insert(bisect.bisect_left(keys, key), key)

    def create_agreement(self, agreement: Agreement, ws: WriteSet) -> str:
        debtor = self.accounts.get(agreement.debtor_account)
        if debtor is None or debtor.kind != "customer":
            return Code.ACCOUNT_NOT_FOUND
        if debtor.currency != agreement.currency:
            return Code.CURRENCY_MISMATCH
        at_ms = agreement.created_at_ms
        if self.pending_count(agreement.partner_id, agreement.debtor_account, at_ms) >= self.pending_per_account_max:
            return Code.TOO_MANY_PENDING_FOR_ACCOUNT
        if self.pending_count(agreement.partner_id, None, at_ms) >= self.pending_per_partner_max:
            return Code.TOO_MANY_PENDING
        # A new object: its own fields need no undo, only its place in the state.
        agreement.status = mandates.AgreementStatus.AWAITING
        agreement.status_updated_at_ms = agreement.created_at_ms
        agreement.authorise_by_ms = agreement.created_at_ms + self.pending_expiry_ms
        self._add_agreement(agreement)
        ws.agreements.append(agreement)
        return Code.OK

    def transition_agreement(
        self, agreement_id: str, partner_id: str | None, action: str, actor: str, at_ms: int, ws: WriteSet
    ) -> tuple[str, Agreement | None]:
        """Apply one lifecycle action. `partner_id` (when the partner asks) must own the
        agreement; the customer's channel (the admin API) passes None."""
        agreement = self.agreements.get(agreement_id)
        if agreement is None or (partner_id is not None and agreement.partner_id != partner_id):
            return Code.AGREEMENT_NOT_FOUND, None
        code, target = mandates.decide_transition(
            agreement.status, agreement.valid_to_ms, action, actor, at_ms, agreement.authorise_by_ms
        )
        if code != "OK":
            return (Code.SAME if code == "SAME" else code), agreement
        assert target is not None
        ws.agreement_events.append((agreement.id, agreement.status, target, actor, at_ms))
        undo = self.undo
        # Out of the index under its old status, back in under its new one; on rollback the
        # reverse, in reverse order (the undo log runs last-in first).
        undo.on_undo(lambda: self._index(agreement))
        self._unindex(agreement)
        undo.setattr(agreement, "status", target)
        undo.setattr(agreement, "status_updated_at_ms", at_ms)
        undo.on_undo(lambda: self._unindex(agreement))
        self._index(agreement)
        undo.setitem(ws.agreement_updates, agreement.id, agreement)
        return Code.OK, agreement

    def partner_action(
        self,
        partner_id: str,
        action: str,
        actor: str,
        at_ms: int,
        ws: WriteSet,
        *,
        secret_sha256: str | None = None,
        overlap_ms: int = 0,
        reason: str | None = None,
    ) -> tuple[str, dict[str, Any] | None]:
        """Cut a partner off, or let it back in: one of PARTNER_ACTIONS. Returns (code, the
        partner's status as partner_status shows it). OK records one audit row (who, when,
        what) in the same batch; SAME (disable when disabled, enable when enabled, retire
        with no previous secret) records nothing and answers the partner as it is.

        - disable / enable: the gateways refuse a disabled partner's tokens and issue it none
          (payments already accepted settle: nothing here touches the journal or the outbox);
        - rotate_secret: `secret_sha256` becomes the secret, the old one stays valid until
          at_ms + overlap_ms (overlap 0: retired at once); a previous one still overlapping
          is dropped (at most two secrets are ever valid);
        - retire_secret: the previous secret stops being valid now;
        - revoke_tokens: every token issued at or before at_ms is refused."""
        partner = self.partners_cache.get(partner_id)
        if partner is None:
            return Code.PARTNER_NOT_FOUND, None
        changes: dict[str, Any] = {}
        details: dict[str, Any] = {}
        if action == "disable":
            if partner.get("disabled_at_ms") is not None:
                return Code.SAME, partner_status(partner, at_ms)
            changes["disabled_at_ms"] = at_ms
        elif action == "enable":
            if partner.get("disabled_at_ms") is None:
                return Code.SAME, partner_status(partner, at_ms)
            changes["disabled_at_ms"] = None
        elif action == "rotate_secret":
            if (
                type(secret_sha256) is not str
                or type(overlap_ms) is not int
                or not 0 <= overlap_ms <= SECRET_OVERLAP_MAX_MS
            ):
                raise ValueError("rotate_secret takes secret_sha256 and overlap_ms (0-30 days)")
            until = at_ms + overlap_ms if overlap_ms > 0 else None
            changes.update(
                secret_sha256=secret_sha256,
                previous_secret_sha256=partner["secret_sha256"] if until is not None else None,
                previous_secret_until_ms=until,
            )
            details["previous_secret_valid_until_ms"] = until
        elif action == "retire_secret":
            if partner.get("previous_secret_sha256") is None:
                return Code.SAME, partner_status(partner, at_ms)
            changes.update(previous_secret_sha256=None, previous_secret_until_ms=None)
        elif action == "revoke_tokens":
            changes["tokens_valid_after_ms"] = max(at_ms, partner.get("tokens_valid_after_ms") or 0)
            details["tokens_issued_until_ms"] = changes["tokens_valid_after_ms"]
        else:
            raise ValueError(f"a partner action is one of {', '.join(PARTNER_ACTIONS)}")
        if reason is not None:
            details["reason"] = reason
        undo = self.undo
        for name, value in changes.items():
            undo.setitem(partner, name, value)
        undo.setitem(ws.partner_updates, partner_id, {name: partner.get(name) for name in PARTNER_CUTOFF_FIELDS})
        ws.partner_events.append((partner_id, action, actor, at_ms, details))
        if "disabled_at_ms" in changes or "tokens_valid_after_ms" in changes:
            undo.setattr(self, "cutoff_version", self.cutoff_version + 1)
        return Code.OK, partner_status(partner, at_ms)

    def partner_cutoffs(self) -> dict[str, list[int | None]]:
        """partner id -> [disabled_at_ms, tokens_valid_after_ms], for every partner with either."""
        return {
            partner_id: [p.get("disabled_at_ms"), p.get("tokens_valid_after_ms")]
            for partner_id, p in self.partners_cache.items()
            if p.get("disabled_at_ms") is not None or p.get("tokens_valid_after_ms") is not None
        }

    def list_agreements(
        self,
        *,
        partner_id: str | None = None,
        debtor_account: str | None = None,
        status: str | None = None,
        before: tuple[int, str] | None = None,
        limit: int,
        at_ms: int,
    ) -> tuple[list[Agreement], tuple[int, str] | None]:
        """Agreements newest first (by created_at_ms, then id) strictly before `before`, at most
        `limit`, filtered by effective status. Returns (agreements, the key scanning stopped
        at when AGREEMENT_SCAN_MAX ran out before the page filled, else None)."""
        index = self.agreements_by_partner if partner_id is not None else self.agreements_by_debtor
        keys = index.get(partner_id if partner_id is not None else debtor_account or "", [])
        position = len(keys) if before is None else bisect.bisect_left(keys, before)
        found: list[Agreement] = []
        scanned = 0
        while position > 0 and len(found) < limit:
            if scanned >= AGREEMENT_SCAN_MAX:
                return found, keys[position]
            position -= 1
            scanned += 1
            agreement = self.agreements[keys[position][1]]
            if debtor_account is not None and agreement.debtor_account != debtor_account:
                continue
            if (
                status is None
                or mandates.effective_status(agreement.status, agreement.valid_to_ms, at_ms, agreement.authorise_by_ms)
                == status
            ):
                found.append(agreement)
        return found, None

    def can_see(self, partner_id: str, account_id: str, at_ms: int) -> bool:
        """A partner sees its own settlement account, and a customer's account while it holds
        an agreement over it the customer has authorised (Authorised or Suspended, not
        expired): not before consent, not after a rejection or revocation. O(1): the
        latest valid_to among those agreements (visible_ends) is not past."""
        if partner_id in self.visibility.get(account_id, ()):
            return True
        ends = self.visible_ends.get((account_id, partner_id))
        if ends is None:
            return False
        return (ends if isinstance(ends, int) else ends[-1]) >= at_ms

    def can_see_by_scan(self, partner_id: str, account_id: str, at_ms: int) -> bool:
        """can_see as it was before the index: every agreement over the account (the
        reference the property test compares the index with; not for the request path)."""
        if partner_id in self.visibility.get(account_id, ()):
            return True
        for _, agreement_id in self.agreements_by_debtor.get(account_id, ()):
            agreement = self.agreements[agreement_id]
            if (
                agreement.partner_id == partner_id
                and mandates.effective_status(agreement.status, agreement.valid_to_ms, at_ms, agreement.authorise_by_ms)
                in VISIBLE_STATUSES
            ):
                return True
        return False


def partner_status(partner: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """What the admin API shows of a partner's cut-off state (never a secret's digest)."""
    until = partner.get("previous_secret_until_ms")
    overlapping = partner.get("previous_secret_sha256") is not None and until is not None and at_ms < until
    return {
        "id": partner["id"],
        "disabled_at_ms": partner.get("disabled_at_ms"),
        "tokens_valid_after_ms": partner.get("tokens_valid_after_ms"),
        "previous_secret_until_ms": until if overlapping else None,
    }
