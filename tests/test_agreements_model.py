"""ShardState's agreements against an independent model: random sequences of creating,
authorising, rejecting, suspending, resuming and revoking agreements, paying under them
(sometimes over a limit or the balance), refunding (partly, wholly, too much), funding and
advancing the clock. After every step the balances, statuses, limit spend, refunded totals
and the decision codes match the model, the books sum to zero and every WriteSet balances;
pending agreements expire (authorise_by) and are capped per account and per partner, and the
visibility index answers what the model (and the old full scan) says. And one partner never
reaches another's agreements or payments."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
from ledger.agreements import PeriodicLimit
from ledger.model import (
    Account,
    Agreement,
    Code,
    FundingCommand,
    Kind,
    PaymentCommand,
    RefundCommand,
    Status,
    Transfer,
)
from ledger.state import MS_PER_DAY, ShardState, WriteSet

PARTNER_A, PARTNER_B = "ptn_a", "ptn_b"
SETTLEMENT = {PARTNER_A: "set_ptn_a", PARTNER_B: "set_ptn_b"}
CUSTOMERS = ("acc_0", "acc_1")
CURRENCY = "CNY"
REFUND_WINDOW_DAYS = 4
# Small pending caps and a short pending expiry, so that random runs reach both.
PENDING_EXPIRY_S = 6 * 3_600
PENDING_PER_ACCOUNT_MAX = 2
PENDING_PER_PARTNER_MAX = 3
# 23:00 UTC: the first calendar day boundary comes an hour in.
START_MS = int(datetime.datetime(2026, 3, 1, 23, 0, tzinfo=datetime.UTC).timestamp()) * 1000
MS_PER_MINUTE = 60_000


# ---- the harness (the pattern of tests/test_ledger_state.py) --------------------------------
def make_state(balances: dict[str, int]) -> ShardState:
    state = ShardState(
        0,
        1,
        refund_window_days=REFUND_WINDOW_DAYS,
        pending_expiry_s=PENDING_EXPIRY_S,
        pending_per_account_max=PENDING_PER_ACCOUNT_MAX,
        pending_per_partner_max=PENDING_PER_PARTNER_MAX,
    )
    state.load_account(Account(FUNDING_ACCOUNT, "funding", CURRENCY, 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", CURRENCY, 0, True))
    for partner, settlement in SETTLEMENT.items():
        state.load_account(Account(settlement, "settlement", CURRENCY, 0, False, partner))
    for account_id in CUSTOMERS:
        state.load_account(Account(account_id, "customer", CURRENCY, 0, False))
        if balances.get(account_id):
            (code, transfer), _ = commit(
                state,
                lambda ws: state.execute_funding(
                    FundingCommand(
                        f"fund0_{account_id}", account_id, balances[account_id], CURRENCY, "f", "h", START_MS
                    ),
                    ws,
                ),
            )
            assert code == Code.OK and transfer.status == Status.COMPLETED
    return state


def commit(state: ShardState, decide: Callable[[WriteSet], Any]) -> tuple[Any, WriteSet]:
    """Decide one command in its own batch and mark it committed, as the writer would."""
    ws = WriteSet()
    result = decide(ws)
    ws.check_balanced()
    for transfer in ws.transfers:
        transfer.committed = True
    for account_id, delta in ws.deltas.items():
        state.accounts[account_id].committed_balance_minor += delta
    return result, ws


def new_agreement(
    agreement_id: str,
    partner: str,
    debtor: str,
    per_payment: int,
    daily: int,
    created_at_ms: int,
    valid_from_ms: int | None = None,
    valid_to_ms: int | None = None,
) -> Agreement:
    # The status passed in is overwritten by create_agreement (always AwaitingAuthorisation).
    return Agreement(
        agreement_id,
        partner,
        debtor,
        CURRENCY,
        per_payment,
        [PeriodicLimit("Day", "Calendar", daily)],
        "Authorised",
        created_at_ms,
        valid_from_ms,
        valid_to_ms,
    )


def pay_cmd(
    payment_id: str, partner: str, agreement_id: str, amount: int, at_ms: int, creditor: str | None = None
) -> PaymentCommand:
    return PaymentCommand(
        payment_id,
        partner,
        agreement_id,
        amount,
        CURRENCY,
        creditor or SETTLEMENT[partner],
        0,
        "ref",
        f"h-{payment_id}",
        at_ms,
    )


def refund_cmd(refund_id: str, partner: str, payment_id: str, amount: int | None, at_ms: int) -> RefundCommand:
    return RefundCommand(refund_id, partner, payment_id, amount, "goods returned", "r", f"h-{refund_id}", at_ms)


# ---- the model ---------------------------------------------------------------------------
AWAITING, AUTHORISED, REJECTED, SUSPENDED, REVOKED, EXPIRED = (
    "AwaitingAuthorisation",
    "Authorised",
    "Rejected",
    "Suspended",
    "Revoked",
    "Expired",
)
TARGET = {"authorise": AUTHORISED, "reject": REJECTED, "suspend": SUSPENDED, "resume": AUTHORISED, "revoke": REVOKED}
SOURCES = {
    "authorise": {AWAITING},
    "reject": {AWAITING},
    "suspend": {AUTHORISED},
    "resume": {SUSPENDED},
    "revoke": {AWAITING, AUTHORISED, SUSPENDED},
}


@dataclass
class ModelAgreement:
    partner: str
    debtor: str
    per_payment: int
    daily: int
    valid_from: int | None
    valid_to: int | None
    authorise_by: int
    status: str = AWAITING
    spent_by_day: dict[int, int] = field(default_factory=dict)  # UTC day number -> spent

    def effective(self, now: int) -> str:
        if self.status not in (REJECTED, REVOKED) and self.valid_to is not None and now > self.valid_to:
            return EXPIRED
        if self.status == AWAITING and now > self.authorise_by:
            return EXPIRED
        return self.status


@dataclass
class ModelPayment:
    partner: str
    debtor: str
    agreement: str
    amount: int
    created_at: int
    accepted: bool
    refunded: int = 0


@dataclass
class Model:
    now: int
    balances: dict[str, int]
    agreements: dict[str, ModelAgreement] = field(default_factory=dict)
    payments: dict[str, ModelPayment] = field(default_factory=dict)

    def pending(self, partner: str, debtor: str | None) -> int:
        return sum(
            1
            for a in self.agreements.values()
            if a.partner == partner and a.effective(self.now) == AWAITING and (debtor is None or a.debtor == debtor)
        )

    def sees(self, partner: str, account: str) -> bool:
        return account == SETTLEMENT.get(partner) or any(
            a.partner == partner and a.debtor == account and a.effective(self.now) in (AUTHORISED, SUSPENDED)
            for a in self.agreements.values()
        )

    def transition(self, agreement_id: str, action: str, actor: str) -> tuple[str, str | None]:
        """(code, status after) for the customer or the owning partner."""
        a = self.agreements[agreement_id]
        if actor == "partner" and action != "revoke":
            return "FORBIDDEN", None
        target = TARGET[action]
        if a.status == target:
            return "SAME", None
        if a.effective(self.now) == EXPIRED and action != "revoke":
            return "INVALID_TRANSITION", None
        if a.status not in SOURCES[action]:
            return "INVALID_TRANSITION", None
        return "OK", target

    def payment(self, agreement_id: str, amount: int) -> tuple[str, str | None, str | None]:
        """(code, transfer status, rejection reason)."""
        a = self.agreements[agreement_id]
        status = a.effective(self.now)
        if status == EXPIRED:
            return "AGREEMENT_EXPIRED", None, None
        if status == SUSPENDED:
            return "AGREEMENT_SUSPENDED", None, None
        if status == REVOKED:
            return "AGREEMENT_REVOKED", None, None
        if status != AUTHORISED:
            return "AGREEMENT_NOT_AUTHORISED", None, None
        if a.valid_from is not None and self.now < a.valid_from:
            return "AGREEMENT_NOT_YET_VALID", None, None
        if amount > a.per_payment:
            return "OK", Status.REJECTED, "AGREEMENT_PER_PAYMENT_LIMIT"
        if a.spent_by_day.get(self.now // MS_PER_DAY, 0) + amount > a.daily:
            return "OK", Status.REJECTED, "AGREEMENT_PERIODIC_LIMIT"
        if self.balances[a.debtor] < amount:
            return "OK", Status.REJECTED, "INSUFFICIENT_FUNDS"
        return "OK", Status.COMPLETED, None


# ---- operations --------------------------------------------------------------------------
amounts = st.one_of(st.integers(1, 2_500), st.integers(2_500, 9_000), st.sampled_from([1, 500, 1_000, 3_000]))
owner = st.sampled_from([True, True, True, False])  # now and then another partner tries
create = st.tuples(
    st.just("create"),
    st.sampled_from(CUSTOMERS),
    st.sampled_from([PARTNER_A, PARTNER_B]),
    st.integers(300, 5_000),
    st.integers(500, 8_000),  # per-payment, daily limit
    st.one_of(st.none(), st.none(), st.integers(0, 2 * MS_PER_DAY)),  # valid_from after creation
    st.one_of(st.none(), st.integers(MS_PER_DAY, 8 * MS_PER_DAY)),
)  # valid_to after creation
transition = st.tuples(
    st.just("transition"),
    st.integers(0, 7),
    st.sampled_from(["authorise"] * 5 + ["reject", "suspend", "resume", "resume", "revoke"]),
    st.sampled_from(["customer", "customer", "customer", "partner", "other partner"]),
)
pay = st.tuples(st.just("pay"), st.integers(0, 7), amounts, owner)
refund = st.tuples(st.just("refund"), st.integers(0, 15), st.one_of(st.none(), amounts, st.integers(1, 500)), owner)
fund = st.tuples(st.just("fund"), st.sampled_from(CUSTOMERS), st.integers(1, 12_000))
advance = st.tuples(
    st.just("advance"), st.one_of(st.integers(MS_PER_MINUTE, 3 * 3_600_000), st.integers(3_600_000, 3 * MS_PER_DAY))
)
# How often each kind of step comes (one_of alone would favour its first branches).
_MIX = {"pay": 5, "transition": 3, "refund": 3, "advance": 2, "create": 1, "fund": 1}
_KINDS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "create": create,
    "transition": transition,
    "pay": pay,
    "refund": refund,
    "fund": fund,
    "advance": advance,
}
ops = st.sampled_from([kind for kind, weight in _MIX.items() for _ in range(weight)]).flatmap(_KINDS.__getitem__)


class Run:
    def __init__(self, balances: dict[str, int]) -> None:
        self.state = make_state(balances)
        start = {
            FUNDING_ACCOUNT: -sum(balances.values()),
            CLEARING_ACCOUNT: 0,
            **{s: 0 for s in SETTLEMENT.values()},
            **{a: balances.get(a, 0) for a in CUSTOMERS},
        }
        self.model = Model(START_MS, start)
        self.agreement_ids: list[str] = []
        self.payment_ids: list[str] = []
        self.steps = 0
        # what each decided step answered: the code, and a recorded transfer's status and reasons
        self.outcomes: list[tuple[str, ...]] = []

    def other(self, partner: str) -> str:
        return PARTNER_B if partner == PARTNER_A else PARTNER_A

    def step(self, op: tuple[Any, ...]) -> None:
        self.steps += 1
        state, model, n = self.state, self.model, self.steps
        kind = op[0]
        if kind == "advance":
            model.now += op[1]
            return
        if kind == "fund":
            _, account, amount = op
            (code, transfer), ws = commit(
                state,
                lambda ws: state.execute_funding(
                    FundingCommand(f"fund_{n}", account, amount, CURRENCY, "f", "h", model.now), ws
                ),
            )
            assert code == Code.OK and transfer.status == Status.COMPLETED
            model.balances[account] += amount
            model.balances[FUNDING_ACCOUNT] -= amount
            self.check_ws(ws)
            return
        if kind == "create":
            _, debtor, partner, per_payment, daily, from_offset, to_offset = op
            agreement_id = f"agr_{n}"
            valid_from = None if from_offset is None else model.now + from_offset
            valid_to = None if to_offset is None else model.now + to_offset
            agreement = new_agreement(
                agreement_id, partner, debtor, per_payment, daily, model.now, valid_from, valid_to
            )
            if model.pending(partner, debtor) >= PENDING_PER_ACCOUNT_MAX:
                expected = Code.TOO_MANY_PENDING_FOR_ACCOUNT
            elif model.pending(partner, None) >= PENDING_PER_PARTNER_MAX:
                expected = Code.TOO_MANY_PENDING
            else:
                expected = Code.OK
            code, ws = commit(state, lambda ws: state.create_agreement(agreement, ws))
            assert code == expected, (partner, debtor, model.now)
            if expected != Code.OK:
                self.outcomes.append((code,))
                assert ws.is_empty() and agreement_id not in state.agreements
                return
            assert ws.agreements == [agreement]
            assert agreement.status == AWAITING and agreement.status_updated_at_ms == model.now
            assert agreement.authorise_by_ms == model.now + PENDING_EXPIRY_S * 1000
            model.agreements[agreement_id] = ModelAgreement(
                partner, debtor, per_payment, daily, valid_from, valid_to, model.now + PENDING_EXPIRY_S * 1000
            )
            self.agreement_ids.append(agreement_id)
            self.check_ws(ws)
            return
        if kind == "transition":
            if not self.agreement_ids:
                return
            _, index, action, actor = op
            agreement_id = self.agreement_ids[index % len(self.agreement_ids)]
            owner = model.agreements[agreement_id].partner
            before = model.agreements[agreement_id].status
            if actor == "other partner":
                (code, found), ws = commit(
                    state,
                    lambda ws: state.transition_agreement(
                        agreement_id, self.other(owner), action, "partner", model.now, ws
                    ),
                )
                assert (code, found) == (Code.AGREEMENT_NOT_FOUND, None)
                assert ws.is_empty()
                self.outcomes.append((code,))
                return
            partner_id = owner if actor == "partner" else None
            expected, target = model.transition(agreement_id, action, actor)
            (code, found), ws = commit(
                state, lambda ws: state.transition_agreement(agreement_id, partner_id, action, actor, model.now, ws)
            )
            assert code == expected, (agreement_id, before, action, actor, model.now)
            self.outcomes.append((code,))
            assert found is state.agreements[agreement_id]
            if expected == "OK":
                assert target is not None
                model.agreements[agreement_id].status = target
                assert ws.agreement_events == [(agreement_id, before, target, actor, model.now)]
                assert ws.agreement_updates == {agreement_id: found}
                assert found.status_updated_at_ms == model.now
            else:
                assert ws.is_empty() and not ws.agreement_events
            self.check_ws(ws)
            return
        if kind == "pay":
            if not self.agreement_ids:
                return
            _, index, amount, as_owner = op
            # even indexes aim at an agreement that can pay (when there is one), odd ones at any
            live = [a for a in self.agreement_ids if model.agreements[a].effective(model.now) == AUTHORISED]
            pool = live if live and index % 2 == 0 else self.agreement_ids
            agreement_id = pool[index // 2 % len(pool)]
            ma = model.agreements[agreement_id]
            payment_id = f"pay_{n}"
            if not as_owner:
                # another partner, to its own settlement account: the agreement is not theirs
                (code, transfer), ws = commit(
                    state,
                    lambda ws: state.execute_payment(
                        pay_cmd(payment_id, self.other(ma.partner), agreement_id, amount, model.now), ws
                    ),
                )
                assert (code, transfer) == (Code.AGREEMENT_NOT_FOUND, None) and ws.is_empty()
                self.outcomes.append((code,))
                return
            expected, status, reason = model.payment(agreement_id, amount)
            spent_before = ma.spent_by_day.get(model.now // MS_PER_DAY, 0)
            (code, transfer), ws = commit(
                state,
                lambda ws: state.execute_payment(pay_cmd(payment_id, ma.partner, agreement_id, amount, model.now), ws),
            )
            assert code == expected, (agreement_id, ma, amount, model.now)
            self.outcomes.append((code,) if transfer is None else (code, transfer.status, *transfer.reasons))
            if expected != "OK":
                assert transfer is None and ws.is_empty()
                return
            assert isinstance(transfer, Transfer)
            assert transfer.status == status and transfer.kind == Kind.PAYMENT
            assert transfer.reasons == (() if reason is None else (reason,))
            assert transfer.amount_minor == amount and transfer.refunded_minor == 0
            accepted = status == Status.COMPLETED
            if accepted:
                model.balances[ma.debtor] -= amount
                model.balances[SETTLEMENT[ma.partner]] += amount
                day = model.now // MS_PER_DAY
                ma.spent_by_day[day] = ma.spent_by_day.get(day, 0) + amount
                assert ws.deltas == {ma.debtor: -amount, SETTLEMENT[ma.partner]: amount}
            else:
                assert ws.deltas == {}
            if reason == "AGREEMENT_PERIODIC_LIMIT":
                day_start = model.now // MS_PER_DAY * MS_PER_DAY
                assert transfer.details == {
                    "reason_details": {
                        "period": "Day",
                        "alignment": "Calendar",
                        "limit_minor": ma.daily,
                        "remaining_minor": max(0, ma.daily - spent_before),
                        "period_start_ms": day_start,
                        "period_end_ms": day_start + MS_PER_DAY,
                    }
                }
            elif reason == "AGREEMENT_PER_PAYMENT_LIMIT":
                assert transfer.details == {"reason_details": {"limit_minor": ma.per_payment}}
            model.payments[payment_id] = ModelPayment(ma.partner, ma.debtor, agreement_id, amount, model.now, accepted)
            self.payment_ids.append(payment_id)
            self.check_ws(ws)
            return
        if kind == "refund":
            if not self.payment_ids:
                return
            _, index, amount, as_owner = op
            # even indexes aim at a payment with something left to refund (when there is one)
            open_ = [
                p
                for p in self.payment_ids
                if model.payments[p].accepted and model.payments[p].refunded < model.payments[p].amount
            ]
            pool = open_ if open_ and index % 2 == 0 else self.payment_ids
            payment_id = pool[index // 2 % len(pool)]
            mp = model.payments[payment_id]
            refund_id = f"ref_{n}"
            partner = mp.partner if as_owner else self.other(mp.partner)
            spend_snapshot = {k: dict(v.spent_by_day) for k, v in model.agreements.items()}
            limit_before = [(x.window_start_ms, x.spent_minor) for x in state.agreements[mp.agreement].periodic_limits]
            (code, transfer), ws = commit(
                state,
                lambda ws: state.execute_refund(refund_cmd(refund_id, partner, payment_id, amount, model.now), ws),
            )
            left = mp.amount - mp.refunded
            wanted = left if amount is None else amount
            if not as_owner:
                expected = Code.PAYMENT_NOT_FOUND
            elif not mp.accepted or model.now - mp.created_at > REFUND_WINDOW_DAYS * MS_PER_DAY:
                expected = Code.NOT_REFUNDABLE
            elif left <= 0 or wanted > left:
                expected = Code.EXCEEDS_PAYMENT
            else:
                expected = Code.OK
            assert code == expected, (payment_id, mp, amount, model.now)
            self.outcomes.append((code,) if transfer is None else (code, transfer.status, *transfer.reasons))
            if expected != Code.OK:
                assert transfer is None and ws.is_empty()
            else:
                assert isinstance(transfer, Transfer)
                # the settlement account only ever holds unrefunded payments, so it can always pay back
                assert transfer.status == Status.SUCCEEDED and transfer.reasons == ()
                assert transfer.kind == Kind.REFUND and transfer.amount_minor == wanted
                assert transfer.details == {"payment_id": payment_id, "reason": "goods returned"}
                mp.refunded += wanted
                model.balances[SETTLEMENT[mp.partner]] -= wanted
                model.balances[mp.debtor] += wanted
                assert ws.refunded == {payment_id: mp.refunded}
                assert ws.deltas == {SETTLEMENT[mp.partner]: -wanted, mp.debtor: wanted}
            # a refund gives no limit back
            assert {k: v.spent_by_day for k, v in model.agreements.items()} == spend_snapshot
            assert [
                (x.window_start_ms, x.spent_minor) for x in state.agreements[mp.agreement].periodic_limits
            ] == limit_before
            self.check_ws(ws)
            return
        raise AssertionError(f"unknown op {op!r}")

    def check_ws(self, ws: WriteSet) -> None:
        ws.check_balanced()
        assert sum(ws.deltas.values()) == 0

    def check(self) -> None:
        state, model = self.state, self.model
        assert state.total_balance_minor() == 0
        assert {a.id: a.balance_minor for a in state.accounts.values()} == model.balances
        for account in state.accounts.values():
            assert account.committed_balance_minor == account.balance_minor
            if not account.allow_negative:
                assert account.balance_minor >= 0
        assert set(state.agreements) == set(model.agreements)
        for partner in SETTLEMENT:
            assert state.pending_count(partner, None, model.now) == model.pending(partner, None)
            for account in (*CUSTOMERS, *SETTLEMENT.values()):
                if account in CUSTOMERS:
                    assert state.pending_count(partner, account, model.now) == model.pending(partner, account)
                sees = model.sees(partner, account)
                assert state.can_see(partner, account, model.now) == sees, (partner, account, model.now)
                assert state.can_see_by_scan(partner, account, model.now) == sees
        today = model.now // MS_PER_DAY
        for agreement_id, ma in model.agreements.items():
            agreement = state.agreements[agreement_id]
            assert agreement.status == ma.status
            wire = agreement.to_wire(at_ms=model.now)
            assert wire["status"] == ma.effective(model.now)
            (limit_wire,) = wire["periodic_limits"]
            assert limit_wire["remaining_minor"] == max(0, ma.daily - ma.spent_by_day.get(today, 0))
            assert limit_wire["period_start_ms"] == today * MS_PER_DAY
            assert limit_wire["period_end_ms"] == (today + 1) * MS_PER_DAY
            (limit,) = agreement.periodic_limits
            if limit.window_end_ms:
                assert limit.spent_minor == ma.spent_by_day.get(limit.window_start_ms // MS_PER_DAY, 0)
                assert limit.spent_minor <= ma.daily
        for payment_id, mp in model.payments.items():
            transfer = state.transfers[payment_id]
            assert transfer.refunded_minor == mp.refunded
            assert 0 <= transfer.refunded_minor <= transfer.amount_minor
            if not mp.accepted:
                assert transfer.refunded_minor == 0
        # what each settlement account holds is what was paid to it and not refunded
        for partner, settlement in SETTLEMENT.items():
            held = sum(p.amount - p.refunded for p in model.payments.values() if p.accepted and p.partner == partner)
            assert state.accounts[settlement].balance_minor == held
        # every agreement's day spend stays within its limit, whatever was refunded
        for ma in model.agreements.values():
            assert all(spent <= ma.daily for spent in ma.spent_by_day.values())
            paid_by_day: dict[int, int] = {}
            for p in model.payments.values():
                if p.accepted and model.agreements[p.agreement] is ma:
                    day = p.created_at // MS_PER_DAY
                    paid_by_day[day] = paid_by_day.get(day, 0) + p.amount
            assert paid_by_day == ma.spent_by_day


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    balances=st.fixed_dictionaries({a: st.integers(0, 25_000) for a in CUSTOMERS}),
    first=create,
    steps=st.lists(ops, min_size=20, max_size=80),
)
def test_shard_state_agreements_match_the_model(
    balances: dict[str, int], first: tuple[Any, ...], steps: list[tuple[Any, ...]]
) -> None:
    run = Run(balances)
    run.check()
    # every run starts with one agreement the customer authorised, so that payments happen
    for op in [first, ("transition", 0, "authorise", "customer"), *steps]:
        run.step(op)
        run.check()


def test_a_scripted_life_of_an_agreement_matches_the_model() -> None:
    """A deterministic run through every kind of step, so the property's paths surely occur."""
    run = Run({"acc_0": 20_000, "acc_1": 0})
    done, rejected, refunded = (Code.OK, Status.COMPLETED), (Code.OK, Status.REJECTED), (Code.OK, Status.SUCCEEDED)
    # (step, what it answers); pay/refund indexes: odd 2k+1 is the k-th agreement/payment
    script: list[tuple[tuple[Any, ...], tuple[str, ...] | None]] = [
        (("create", "acc_0", PARTNER_A, 3_000, 5_000, None, 5 * MS_PER_DAY), None),
        (("pay", 1, 100, True), (Code.AGREEMENT_NOT_AUTHORISED,)),
        (("transition", 0, "authorise", "partner"), (Code.FORBIDDEN,)),
        (("transition", 0, "authorise", "customer"), (Code.OK,)),
        (("transition", 0, "authorise", "customer"), (Code.SAME,)),
        (("pay", 1, 3_001, True), (*rejected, Code.AGREEMENT_PER_PAYMENT_LIMIT)),  # payment 0
        (("pay", 1, 3_000, True), done),  # payment 1
        (("pay", 1, 2_000, True), done),  # payment 2
        (("pay", 1, 1, True), (*rejected, Code.AGREEMENT_PERIODIC_LIMIT)),  # payment 3
        (("refund", 3, None, True), refunded),  # payment 1, whole
        (("refund", 3, 1, True), (Code.EXCEEDS_PAYMENT,)),  # nothing left
        (("pay", 1, 1, True), (*rejected, Code.AGREEMENT_PERIODIC_LIMIT)),  # payment 4: no limit back
        (("refund", 5, 500, True), refunded),  # payment 2, part
        (("refund", 5, 1_501, True), (Code.EXCEEDS_PAYMENT,)),
        (("refund", 5, 1_500, False), (Code.PAYMENT_NOT_FOUND,)),
        (("refund", 5, None, True), refunded),  # the rest: 1 500
        (("refund", 1, None, True), (Code.NOT_REFUNDABLE,)),  # payment 0 was rejected
        (("advance", 3_600_000), None),  # midnight UTC
        (("pay", 1, 3_000, True), done),  # payment 5
        (("transition", 0, "suspend", "customer"), (Code.OK,)),
        (("pay", 1, 1, True), (Code.AGREEMENT_SUSPENDED,)),
        (("transition", 0, "resume", "customer"), (Code.OK,)),
        (("pay", 1, 2_000, True), done),  # payment 6
        (("pay", 1, 1_000, False), (Code.AGREEMENT_NOT_FOUND,)),
        (("transition", 0, "revoke", "other partner"), (Code.AGREEMENT_NOT_FOUND,)),
        (("advance", 6 * MS_PER_DAY), None),  # past valid_to and the refund window
        (("pay", 1, 1, True), (Code.AGREEMENT_EXPIRED,)),
        (("refund", 11, None, True), (Code.NOT_REFUNDABLE,)),  # payment 5, too old
        (("transition", 0, "resume", "customer"), (Code.SAME,)),  # stored Authorised, reads Expired
        (("transition", 0, "suspend", "customer"), (Code.INVALID_TRANSITION,)),
        (("transition", 0, "revoke", "partner"), (Code.OK,)),
        (("pay", 1, 1, True), (Code.AGREEMENT_REVOKED,)),
        (("create", "acc_1", PARTNER_B, 1_000, 1_000, MS_PER_DAY, None), None),
        (("transition", 1, "authorise", "customer"), (Code.OK,)),
        (("fund", "acc_1", 500), None),
        (("pay", 3, 100, True), (Code.AGREEMENT_NOT_YET_VALID,)),
        (("advance", MS_PER_DAY), None),  # exactly valid_from
        (("pay", 3, 600, True), (*rejected, Code.INSUFFICIENT_FUNDS)),  # payment 7
        (("pay", 3, 500, True), done),  # payment 8
        (("transition", 1, "reject", "customer"), (Code.INVALID_TRANSITION,)),
    ]
    for op, expected in script:
        logged = len(run.outcomes)
        run.step(op)
        run.check()
        if expected is None:
            assert len(run.outcomes) == logged
        else:
            assert run.outcomes[logged:] == [expected], op
    a0, a1 = run.agreement_ids
    assert run.model.agreements[a0].status == REVOKED and run.model.agreements[a1].status == AUTHORISED
    accepted = [p.amount for p in run.model.payments.values() if p.accepted]
    assert accepted == [3_000, 2_000, 3_000, 2_000, 500]
    assert [p.refunded for p in run.model.payments.values()] == [0, 3_000, 2_000, 0, 0, 0, 0, 0, 0]
    assert run.model.balances["acc_1"] == 0 and run.model.balances["set_ptn_b"] == 500


# ---- partner isolation -------------------------------------------------------------------
def test_partner_b_cannot_touch_partner_a_agreements_or_payments() -> None:
    state = make_state({"acc_0": 10_000})
    now = START_MS + 2 * 3_600_000
    agreement = new_agreement("agr_a", PARTNER_A, "acc_0", 5_000, 8_000, START_MS)
    code, _ = commit(state, lambda ws: state.create_agreement(agreement, ws))
    assert code == Code.OK
    # B can neither authorise nor revoke A's agreement, as a partner under its own id
    for action in ("authorise", "revoke", "suspend"):
        (code, found), ws = commit(
            state, lambda ws: state.transition_agreement("agr_a", PARTNER_B, action, "partner", now, ws)
        )
        assert (code, found) == (Code.AGREEMENT_NOT_FOUND, None) and ws.is_empty()
    # ... nor by claiming to be the customer while passing its partner id
    (code, found), ws = commit(
        state, lambda ws: state.transition_agreement("agr_a", PARTNER_B, "authorise", "customer", now, ws)
    )
    assert (code, found) == (Code.AGREEMENT_NOT_FOUND, None) and ws.is_empty()
    assert state.agreements["agr_a"].status == AWAITING
    # the customer's channel authorises it
    (code, found), _ = commit(
        state, lambda ws: state.transition_agreement("agr_a", None, "authorise", "customer", now, ws)
    )
    assert code == Code.OK and found is not None and found.status == AUTHORISED
    # A, as a partner, can only revoke (not e.g. suspend) its own agreement
    (code, _), ws = commit(
        state, lambda ws: state.transition_agreement("agr_a", PARTNER_A, "suspend", "partner", now, ws)
    )
    assert code == Code.FORBIDDEN and ws.is_empty()

    before = {a.id: a.balance_minor for a in state.accounts.values()}
    # B cannot pay under A's agreement, to its own settlement account or to A's
    for creditor in ("set_ptn_b", "set_ptn_a", "acc_1"):
        (code, transfer), ws = commit(
            state,
            lambda ws: state.execute_payment(
                pay_cmd(f"pay_b_{creditor}", PARTNER_B, "agr_a", 100, now, creditor=creditor), ws
            ),
        )
        assert (code, transfer) == (Code.AGREEMENT_NOT_FOUND, None) and ws.is_empty()
    # A cannot pay into B's settlement account either
    (code, transfer), ws = commit(
        state,
        lambda ws: state.execute_payment(pay_cmd("pay_a_to_b", PARTNER_A, "agr_a", 100, now, creditor="set_ptn_b"), ws),
    )
    assert (code, transfer) == (Code.CREDITOR_NOT_FOUND, None) and ws.is_empty()
    assert {a.id: a.balance_minor for a in state.accounts.values()} == before

    (code, payment), _ = commit(
        state, lambda ws: state.execute_payment(pay_cmd("pay_a", PARTNER_A, "agr_a", 1_000, now), ws)
    )
    assert code == Code.OK and payment.status == Status.COMPLETED
    after_payment = {a.id: a.balance_minor for a in state.accounts.values()}
    # B cannot refund A's payment (whole or part) nor learn that it exists
    for amount in (None, 1, 1_000):
        (code, transfer), ws = commit(
            state, lambda ws: state.execute_refund(refund_cmd(f"ref_b_{amount}", PARTNER_B, "pay_a", amount, now), ws)
        )
        assert (code, transfer) == (Code.PAYMENT_NOT_FOUND, None) and ws.is_empty()
    assert state.transfers["pay_a"].refunded_minor == 0
    assert {a.id: a.balance_minor for a in state.accounts.values()} == after_payment
    # B does not see it listed, A does, and B's revoke still cannot reach it
    found_b, _ = state.list_agreements(partner_id=PARTNER_B, limit=10, at_ms=now)
    found_a, _ = state.list_agreements(partner_id=PARTNER_A, limit=10, at_ms=now)
    assert found_b == [] and [a.id for a in found_a] == ["agr_a"]
    assert not state.can_see(PARTNER_B, "acc_0", now) and state.can_see(PARTNER_A, "acc_0", now)
    (code, _), _ = commit(
        state, lambda ws: state.transition_agreement("agr_a", PARTNER_B, "revoke", "partner", now, ws)
    )
    assert code == Code.AGREEMENT_NOT_FOUND and state.agreements["agr_a"].status == AUTHORISED
    # A itself can refund and revoke
    (code, refund), _ = commit(
        state, lambda ws: state.execute_refund(refund_cmd("ref_a", PARTNER_A, "pay_a", None, now), ws)
    )
    assert code == Code.OK and refund.status == Status.SUCCEEDED and refund.amount_minor == 1_000
    (code, found), _ = commit(
        state, lambda ws: state.transition_agreement("agr_a", PARTNER_A, "revoke", "partner", now, ws)
    )
    assert code == Code.OK and found is not None and found.status == REVOKED
    assert state.total_balance_minor() == 0


def test_pending_agreements_expire_and_are_capped_per_account_and_in_total() -> None:
    """A scripted run of the pending rules: the caps refuse one more pending agreement (per
    account, then in total), an expired pending agreement cannot be authorised or pay and no
    longer counts, and deciding one (authorise, reject, revoke) frees its place at once."""
    run = Run({"acc_0": 5_000, "acc_1": 5_000})
    hour = 3_600_000
    script: list[tuple[tuple[Any, ...], tuple[str, ...] | None]] = [
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 0
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 1
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, None), (Code.TOO_MANY_PENDING_FOR_ACCOUNT,)),
        (("create", "acc_0", PARTNER_B, 1_000, 5_000, None, None), None),  # agreement 2: B's own cap
        (("create", "acc_1", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 3: A's 3rd
        (("create", "acc_1", PARTNER_A, 1_000, 5_000, None, None), (Code.TOO_MANY_PENDING,)),
        (("transition", 0, "authorise", "customer"), (Code.OK,)),  # frees a place
        (("create", "acc_1", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 4
        (("transition", 1, "revoke", "partner"), (Code.OK,)),  # frees another
        (("create", "acc_1", PARTNER_A, 1_000, 5_000, None, None), (Code.TOO_MANY_PENDING_FOR_ACCOUNT,)),
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, 2 * hour), None),  # agreement 5: valid_to first
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, None), (Code.TOO_MANY_PENDING,)),
        (("advance", 2 * hour + 1), None),  # agreement 5 expired
        (("create", "acc_0", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 6
        (("advance", PENDING_EXPIRY_S * 1000 - 2 * hour - 1), None),  # 3 and 4 just not yet
        (("transition", 3, "authorise", "customer"), (Code.OK,)),
        (("advance", 1), None),  # 4 expired, 6 not yet
        (("transition", 4, "authorise", "customer"), (Code.INVALID_TRANSITION,)),
        (("pay", 9, 100, True), (Code.AGREEMENT_EXPIRED,)),  # agreement 4
        (("transition", 4, "reject", "customer"), (Code.INVALID_TRANSITION,)),
        (("create", "acc_1", PARTNER_A, 1_000, 5_000, None, None), None),  # agreement 7: 4, 5 don't count
        (("transition", 4, "revoke", "partner"), (Code.OK,)),  # expired: only revoke
        (("pay", 1, 100, True), (Code.OK, Status.COMPLETED)),  # agreement 0 pays
    ]
    for op, expected in script:
        logged = len(run.outcomes)
        run.step(op)
        run.check()
        if expected is None:
            assert len(run.outcomes) == logged, op
        else:
            assert run.outcomes[logged:] == [expected], op
    state, ids = run.state, run.agreement_ids
    assert [state.agreements[i].to_wire(run.model.now)["status"] for i in ids] == [
        AUTHORISED,
        REVOKED,
        EXPIRED,
        AUTHORISED,
        REVOKED,
        EXPIRED,
        AWAITING,
        AWAITING,
    ]
    assert state.pending_count(PARTNER_A, None, run.model.now) == 2
    assert state.pending_count(PARTNER_B, None, run.model.now) == 0
    assert state.can_see(PARTNER_A, "acc_0", run.model.now) and state.can_see(PARTNER_A, "acc_1", run.model.now)
    assert not state.can_see(PARTNER_B, "acc_0", run.model.now)
