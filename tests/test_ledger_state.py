"""The shard's pure decision core (ledger/state.py, no I/O) keeps double-entry books:
rejections move nothing, limits (per-payment, daily with UTC-day reset) and funds are
enforced, idempotent replays/mismatches/in-flight duplicates are told apart, cross-shard
payments debit into the clearing stripe and emit exactly one outbox leg, credit legs apply
once, every WriteSet balances to zero, and a randomized workload matches a simple model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
from ledger.agreements import PeriodicLimit
from ledger.model import (
    Account,
    Agreement,
    Code,
    CreditLeg,
    FundingCommand,
    LedgerInvariantError,
    PaymentCommand,
    Status,
)
from ledger.state import MS_PER_DAY, ShardState, WriteSet

DAY0 = 20_000 * MS_PER_DAY + 1_000  # some UTC day, 1 s after midnight
PARTNER = "ptn_a"
SETTLEMENT = "set_ptn_a"


def mandate(
    agreement_id: str,
    partner: str,
    debtor: str,
    currency: str,
    per_payment: int,
    daily: int,
    status: str = "Authorised",
    created_at_ms: int = 0,
) -> Agreement:
    """An agreement with a per-payment and a Calendar Day limit, authorised unless told."""
    return Agreement(
        agreement_id,
        partner,
        debtor,
        currency,
        per_payment,
        [PeriodicLimit("Day", "Calendar", daily)],
        "Authorised" if status == "active" else status,
        created_at_ms,
    )


def make_state(
    shard: int = 0,
    shard_count: int = 2,
    *,
    customers: int = 3,
    balance: int = 10_000,
    per_payment: int = 5_000,
    daily: int = 8_000,
    prefix: str = "acc_",
) -> ShardState:
    state = ShardState(shard, shard_count)
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account(SETTLEMENT, "settlement", "CNY", 0, False, PARTNER))
    for i in range(customers):
        state.load_account(Account(f"{prefix}{i}", "customer", "CNY", 0, False))
        state.load_agreement(mandate(f"agr_{i}", PARTNER, f"{prefix}{i}", "CNY", per_payment, daily, "active", 0))
    if balance:
        for i in range(customers):
            commit(
                state,
                lambda ws, i=i: state.execute_funding(
                    FundingCommand(f"fund_{i}", f"{prefix}{i}", balance, "CNY", "f", "h", DAY0), ws
                ),
            )
    return state


def commit(state: ShardState, decide) -> tuple:  # type: ignore[no-untyped-def]
    """Decide one command in its own batch and mark it committed, as the writer would."""
    ws = WriteSet()
    result = decide(ws)
    ws.check_balanced()
    for transfer in ws.transfers:
        transfer.committed = True
    for account_id, delta in ws.deltas.items():
        state.accounts[account_id].committed_balance_minor += delta
    return result, ws


def pay(
    pid: str,
    amount: int,
    *,
    agreement: str = "agr_0",
    creditor: str = SETTLEMENT,
    creditor_shard: int = 0,
    at_ms: int = DAY0,
    body: str | None = None,
    partner: str = PARTNER,
    currency: str = "CNY",
) -> PaymentCommand:
    return PaymentCommand(
        pid,
        partner,
        agreement,
        amount,
        currency,
        creditor,
        creditor_shard,
        "ref",
        body or f"h-{amount}-{creditor}",
        at_ms,
    )


def balances(state: ShardState) -> dict[str, int]:
    return {a.id: a.balance_minor for a in state.accounts.values()}


# ---- single decisions ---------------------------------------------------------------------
def test_funding_moves_money_from_the_funding_stripe() -> None:
    state = make_state(balance=10_000)
    assert state.accounts["acc_0"].balance_minor == 10_000
    assert state.accounts[FUNDING_ACCOUNT].balance_minor == -30_000
    assert state.total_balance_minor() == 0


def test_same_shard_payment_completes_and_balances() -> None:
    state = make_state()
    (code, transfer), ws = commit(state, lambda ws: state.execute_payment(pay("p1", 1_234), ws))
    assert code == Code.OK and transfer.status == Status.COMPLETED
    assert state.accounts["acc_0"].balance_minor == 10_000 - 1_234
    assert state.accounts[SETTLEMENT].balance_minor == 1_234
    assert ws.deltas == {"acc_0": -1_234, SETTLEMENT: 1_234}
    assert not ws.outbox
    assert [t.id for t in ws.transfers] == ["p1"]
    assert state.total_balance_minor() == 0


def test_insufficient_funds_is_rejected_and_moves_nothing() -> None:
    state = make_state(balance=1_000, per_payment=5_000)
    before = balances(state)
    (code, transfer), ws = commit(state, lambda ws: state.execute_payment(pay("p1", 1_001), ws))
    assert code == Code.OK and transfer.status == Status.REJECTED
    assert transfer.reasons == (Code.INSUFFICIENT_FUNDS,)
    assert balances(state) == before and ws.deltas == {}
    assert [t.id for t in ws.transfers] == ["p1"]  # the rejection is recorded
    # exactly the whole balance is allowed
    (code, transfer), _ = commit(state, lambda ws: state.execute_payment(pay("p2", 1_000), ws))
    assert transfer.status == Status.COMPLETED and state.accounts["acc_0"].balance_minor == 0


def test_per_payment_limit() -> None:
    state = make_state(per_payment=500)
    (_, over), _ = commit(state, lambda ws: state.execute_payment(pay("p1", 501), ws))
    assert over.status == Status.REJECTED and over.reasons == (Code.AGREEMENT_PER_PAYMENT_LIMIT,)
    (_, at), _ = commit(state, lambda ws: state.execute_payment(pay("p2", 500), ws))
    assert at.status == Status.COMPLETED


def test_daily_limit_and_reset_on_next_utc_day() -> None:
    state = make_state(balance=100_000, per_payment=5_000, daily=8_000)
    late = DAY0 + MS_PER_DAY - 2_000  # the same UTC day, near its end
    results = []
    for i, amount in enumerate([5_000, 3_000, 1]):
        (_, t), _ = commit(
            state,
            lambda ws, i=i, amount=amount: state.execute_payment(pay(f"d{i}", amount, at_ms=late if i else DAY0), ws),
        )
        results.append(t)
    assert [t.status for t in results] == [Status.COMPLETED, Status.COMPLETED, Status.REJECTED]
    assert results[2].reasons == (Code.AGREEMENT_PERIODIC_LIMIT,)
    # Rejected payments do not count against the limit; the next UTC day starts at zero.
    next_day = (DAY0 // MS_PER_DAY + 1) * MS_PER_DAY
    (_, t), _ = commit(state, lambda ws: state.execute_payment(pay("d3", 5_000, at_ms=next_day), ws))
    assert t.status == Status.COMPLETED
    (_, t), _ = commit(state, lambda ws: state.execute_payment(pay("d4", 3_000, at_ms=next_day + 1), ws))
    assert t.status == Status.COMPLETED
    (_, t), _ = commit(state, lambda ws: state.execute_payment(pay("d5", 1, at_ms=next_day + 2), ws))
    assert t.reasons == (Code.AGREEMENT_PERIODIC_LIMIT,)


def test_rejected_payment_does_not_consume_daily_limit() -> None:
    state = make_state(balance=100, per_payment=5_000, daily=8_000)
    (_, t), _ = commit(state, lambda ws: state.execute_payment(pay("r1", 4_000), ws))
    assert t.reasons == (Code.INSUFFICIENT_FUNDS,)
    assert state.agreements["agr_0"].periodic_limits[0].spent_minor == 0


def test_replay_different_body_and_in_flight() -> None:
    state = make_state()
    ws1 = WriteSet()
    code, first = state.execute_payment(pay("p1", 100, body="A"), ws1)
    assert code == Code.OK
    # Same id before the first is committed: in flight, nothing written.
    ws2 = WriteSet()
    code, same = state.execute_payment(pay("p1", 100, body="A"), ws2)
    assert code == Code.IN_FLIGHT and same is first and ws2.is_empty()
    for t in ws1.transfers:
        t.committed = True
    ws3 = WriteSet()
    code, replay = state.execute_payment(pay("p1", 100, body="A"), ws3)
    assert code == Code.REPLAY and replay is first and ws3.is_empty()
    code, _ = state.execute_payment(pay("p1", 200, body="B"), ws3)
    assert code == Code.EXISTS_WITH_DIFFERENT_BODY and ws3.is_empty()
    assert state.accounts["acc_0"].balance_minor == 10_000 - 100  # moved once


def test_replay_of_rejected_payment_stays_rejected() -> None:
    state = make_state(balance=10)
    (_, t), _ = commit(state, lambda ws: state.execute_payment(pay("p1", 100, body="A"), ws))
    assert t.status == Status.REJECTED
    state.accounts["acc_0"].balance_minor += 1_000  # funds arriving later do not change the answer
    ws = WriteSet()
    code, again = state.execute_payment(pay("p1", 100, body="A"), ws)
    assert code == Code.REPLAY and again.status == Status.REJECTED and ws.is_empty()


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(agreement="agr_missing"), Code.AGREEMENT_NOT_FOUND),
        (dict(partner="ptn_other"), Code.AGREEMENT_NOT_FOUND),
        (dict(currency="USD"), Code.CURRENCY_MISMATCH),
        (dict(creditor="acc_unknown"), Code.CREDITOR_NOT_FOUND),
        (dict(creditor=CLEARING_ACCOUNT), Code.CREDITOR_NOT_FOUND),
        (dict(creditor=FUNDING_ACCOUNT), Code.CREDITOR_NOT_FOUND),
        (dict(creditor="set_ptn_other"), Code.CREDITOR_NOT_FOUND),  # another partner's settlement
        (dict(creditor="acc_0"), Code.SAME_ACCOUNT),
    ],
)
def test_refusals_write_nothing(change: dict, expected: str) -> None:
    state = make_state()
    state.load_account(Account("set_ptn_other", "settlement", "CNY", 0, False, "ptn_other"))
    before = balances(state)
    ws = WriteSet()
    code, transfer = state.execute_payment(pay("p1", 100, **change), ws)
    assert code == expected and transfer is None
    assert ws.is_empty() and balances(state) == before and "p1" not in state.transfers


def test_inactive_agreement() -> None:
    state = make_state()
    state.agreements["agr_0"].status = "Suspended"
    ws = WriteSet()
    assert state.execute_payment(pay("p1", 100), ws) == (Code.AGREEMENT_SUSPENDED, None)
    assert ws.is_empty()


def test_cross_shard_payment_debits_into_clearing_with_one_outbox_leg() -> None:
    state = make_state(shard=0, shard_count=2)
    (code, t), ws = commit(
        state, lambda ws: state.execute_payment(pay("x1", 700, creditor="acc_remote", creditor_shard=1), ws)
    )
    assert code == Code.OK and t.status == Status.IN_PROCESS
    assert t.credit_account == CLEARING_ACCOUNT and t.creditor_account == "acc_remote"
    assert state.accounts[CLEARING_ACCOUNT].balance_minor == 700
    assert ws.deltas == {"acc_0": -700, CLEARING_ACCOUNT: 700}
    assert len(ws.outbox) == 1 and ws.targets == {"x1": 1}
    leg = ws.outbox[0]
    assert (leg.transfer_id, leg.source_shard, leg.creditor_account, leg.amount_minor) == ("x1", 0, "acc_remote", 700)
    # delivery confirmation completes it and is recorded for the writer
    ws2 = WriteSet()
    state.mark_delivered("x1", ws2)
    assert ws2.delivered == ["x1"] and state.transfers["x1"].status == Status.COMPLETED
    assert ws2.deltas == {}
    # marking delivered is harmless for unknown or completed ids
    state.mark_delivered("x1", ws2)
    state.mark_delivered("nope", ws2)
    assert state.transfers["x1"].status == Status.COMPLETED


def test_rejected_cross_shard_payment_writes_no_outbox() -> None:
    state = make_state(balance=10)
    (_, t), ws = commit(
        state, lambda ws: state.execute_payment(pay("x1", 700, creditor="acc_remote", creditor_shard=1), ws)
    )
    assert t.status == Status.REJECTED and not ws.outbox and not ws.targets


def test_execute_credit_applies_once() -> None:
    state = make_state(shard=1, shard_count=2)
    leg = CreditLeg("x1", 0, "acc_1", 700, "CNY", DAY0)
    before = state.accounts["acc_1"].balance_minor
    ws = WriteSet()
    assert state.execute_credit(leg, ws) == Code.OK
    # duplicate in the same (uncommitted) batch
    assert state.execute_credit(leg, ws) == Code.IN_FLIGHT
    ws.check_balanced()
    assert ws.deltas == {CLEARING_ACCOUNT: -700, "acc_1": 700} and len(ws.transfers) == 1
    for t in ws.transfers:
        t.committed = True
    ws2 = WriteSet()
    assert state.execute_credit(leg, ws2) == Code.REPLAY and ws2.is_empty()
    assert state.accounts["acc_1"].balance_minor == before + 700
    assert state.accounts[CLEARING_ACCOUNT].balance_minor == -700


def test_credit_for_unknown_account_is_an_invariant_violation() -> None:
    state = make_state(shard=1)
    with pytest.raises(LedgerInvariantError):
        state.execute_credit(CreditLeg("x1", 0, "acc_missing", 1, "CNY", DAY0), WriteSet())


def test_funding_refusals_and_overflow() -> None:
    state = make_state(balance=0)
    ws = WriteSet()
    assert (
        state.execute_funding(FundingCommand("f1", "acc_x", 1, "CNY", "r", "h", DAY0), ws)[0] == Code.ACCOUNT_NOT_FOUND
    )
    assert (
        state.execute_funding(FundingCommand("f2", SETTLEMENT, 1, "CNY", "r", "h", DAY0), ws)[0]
        == Code.ACCOUNT_NOT_FOUND
    )
    assert (
        state.execute_funding(FundingCommand("f3", "acc_0", 1, "USD", "r", "h", DAY0), ws)[0] == Code.CURRENCY_MISMATCH
    )
    assert ws.is_empty()
    big = 2**63 - 1
    (_, t), _ = commit(
        state, lambda ws: state.execute_funding(FundingCommand("f4", "acc_0", big, "CNY", "r", "h", DAY0), ws)
    )
    assert t.status == Status.COMPLETED
    (_, t), ws = commit(
        state, lambda ws: state.execute_funding(FundingCommand("f5", "acc_0", 1, "CNY", "r", "h", DAY0), ws)
    )
    assert t.status == Status.REJECTED and t.reasons == (Code.BALANCE_OVERFLOW,) and ws.deltas == {}


def test_credit_leg_that_would_overflow_the_creditor_is_held_not_applied() -> None:
    # Review finding: an incoming credit leg had no int64 check; the batch write failed
    # (bigint out of range), the worker stopped, and the relay resent the same leg after
    # every restart. Now the leg is recorded (Rejected, BALANCE_OVERFLOW), moving nothing.
    big = 2**63 - 1
    state = make_state(shard=1, balance=0)
    commit(
        state, lambda ws: state.execute_funding(FundingCommand("f_big", "acc_0", big - 10, "CNY", "r", "h", DAY0), ws)
    )
    before = balances(state)
    code, ws = commit(state, lambda ws: state.execute_credit(CreditLeg("x_over", 0, "acc_0", 11, "CNY", DAY0), ws))
    assert state.accounts["acc_0"].balance_minor <= big and balances(state) == before
    assert ws.deltas == {} and ws.outbox == [] and code == Code.HELD
    (leg,) = ws.transfers
    assert (leg.id, leg.kind, leg.status, leg.reasons, leg.amount_minor) == (
        "x_over",
        "credit_leg",
        Status.REJECTED,
        (Code.BALANCE_OVERFLOW,),
        11,
    )
    # The relay resends it (after a restart, say): recognised, still nothing moves, and it
    # is still reported held, so the debtor shard never takes the resend as a credit.
    again, ws2 = commit(state, lambda ws: state.execute_credit(CreditLeg("x_over", 0, "acc_0", 11, "CNY", DAY0), ws))
    assert again == Code.HELD and ws2.is_empty() and balances(state) == before
    # Up to exactly INT64_MAX still applies.
    ok, _ = commit(state, lambda ws: state.execute_credit(CreditLeg("x_fits", 0, "acc_0", 10, "CNY", DAY0), ws))
    assert ok == Code.OK and state.accounts["acc_0"].balance_minor == big
    assert state.total_balance_minor() == 0


def test_credit_leg_that_would_underflow_the_clearing_stripe_is_held() -> None:
    big = 2**63 - 1
    state = make_state(shard=1, balance=0)
    state.accounts[CLEARING_ACCOUNT].balance_minor = -(big - 5)  # after a lot of inbound flow
    state.accounts["acc_1"].balance_minor = big - 5
    code, ws = commit(state, lambda ws: state.execute_credit(CreditLeg("x_under", 0, "acc_0", 6, "CNY", DAY0), ws))
    assert state.accounts[CLEARING_ACCOUNT].balance_minor == -(big - 5)
    assert ws.deltas == {} and code == Code.HELD


def test_int64_edges_of_funding_and_payments() -> None:
    big = 2**63 - 1
    state = make_state(balance=0)
    (_, t), _ = commit(
        state, lambda ws: state.execute_funding(FundingCommand("f_all", "acc_0", big, "CNY", "r", "h", DAY0), ws)
    )
    assert t.status == Status.COMPLETED and state.accounts[FUNDING_ACCOUNT].balance_minor == -big
    # The funding stripe cannot go below -INT64_MAX, whoever is funded.
    (_, t), ws = commit(
        state, lambda ws: state.execute_funding(FundingCommand("f_one", "acc_1", 1, "CNY", "r", "h", DAY0), ws)
    )
    assert t.reasons == (Code.BALANCE_OVERFLOW,) and ws.deltas == {}
    # A same-shard creditor at the top refuses a payment with BALANCE_OVERFLOW.
    state.accounts[SETTLEMENT].balance_minor = big  # only the creditor's edge matters here
    state.load_agreement(mandate("agr_big", PARTNER, "acc_0", "CNY", big, big, "active", 0))
    (_code, t), ws = commit(state, lambda ws: state.execute_payment(pay("p_top", 1, agreement="agr_big"), ws))
    assert t.status == Status.REJECTED and t.reasons == (Code.BALANCE_OVERFLOW,) and ws.deltas == {}


def test_writeset_check_balanced_catches_unbalanced_deltas() -> None:
    ws = WriteSet()
    ws.add_delta("a", 5)
    ws.add_delta("b", -4)
    with pytest.raises(LedgerInvariantError):
        ws.check_balanced()
    ws.add_delta("b", -1)
    ws.check_balanced()
    assert ws.deltas == {"a": 5, "b": -5}


def test_create_agreement_and_visibility() -> None:
    state = make_state(customers=1)
    ws = WriteSet()
    # created now: a pending agreement created long ago has expired (authorise_by) and could
    # not be authorised any more
    ok = mandate("agr_new", "ptn_b", "acc_0", "CNY", 1, 1, "active", DAY0)
    assert not state.can_see("ptn_b", "acc_0", DAY0)
    assert state.create_agreement(ok, ws) == Code.OK and ws.agreements == [ok]
    # Asking is not consent: the account stays hidden until the customer authorises.
    assert not state.can_see("ptn_b", "acc_0", DAY0)
    assert state.transition_agreement("agr_new", None, "authorise", "customer", DAY0, ws)[0] == Code.OK
    assert state.can_see("ptn_b", "acc_0", DAY0)
    assert state.transition_agreement("agr_new", None, "suspend", "customer", DAY0, ws)[0] == Code.OK
    assert state.can_see("ptn_b", "acc_0", DAY0)
    assert state.transition_agreement("agr_new", "ptn_b", "revoke", "partner", DAY0, ws)[0] == Code.OK
    assert not state.can_see("ptn_b", "acc_0", DAY0)
    expiring = mandate("agr_exp", "ptn_c", "acc_0", "CNY", 1, 1, "active", 0)
    expiring.valid_to_ms = DAY0
    state.load_agreement(expiring)
    assert state.can_see("ptn_c", "acc_0", DAY0) and not state.can_see("ptn_c", "acc_0", DAY0 + 1)
    assert (
        state.create_agreement(mandate("agr_2", "ptn_b", "acc_nope", "CNY", 1, 1, "active", 0), ws)
        == Code.ACCOUNT_NOT_FOUND
    )
    assert (
        state.create_agreement(mandate("agr_3", "ptn_b", "acc_0", "USD", 1, 1, "active", 0), ws)
        == Code.CURRENCY_MISMATCH
    )
    assert (
        state.create_agreement(mandate("agr_4", "ptn_b", SETTLEMENT, "CNY", 1, 1, "active", 0), ws)
        == Code.ACCOUNT_NOT_FOUND
    )
    assert state.open_account(Account("acc_0", "customer", "CNY", 0, False), ws) is False
    assert state.can_see(PARTNER, SETTLEMENT, DAY0) and not state.can_see("ptn_b", SETTLEMENT, DAY0)


def test_committed_transfers_are_evicted_but_uncommitted_are_kept() -> None:
    state = ShardState(0, 1, transfer_cache_max=2)
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account("acc_0", "customer", "CNY", 0, False))
    ws = WriteSet()
    for i in range(4):
        state.execute_funding(FundingCommand(f"f{i}", "acc_0", 1, "CNY", "r", "h", DAY0), ws)
    assert len(state.transfers) == 4  # none committed: none evicted
    for t in ws.transfers:
        t.committed = True
    state.execute_funding(FundingCommand("f4", "acc_0", 1, "CNY", "r", "h", DAY0), WriteSet())
    state.evict()  # the batcher trims the cache between batches
    assert "f4" in state.transfers and len(state.transfers) <= 3


def _cache_state(cache_max: int) -> ShardState:
    state = ShardState(0, 1, transfer_cache_max=cache_max)
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account(SETTLEMENT, "settlement", "CNY", 0, False, PARTNER))
    state.load_account(Account("acc_0", "customer", "CNY", 0, False))
    state.load_agreement(mandate("agr_0", PARTNER, "acc_0", "CNY", 5_000, 1_000_000, "active", 0))
    commit(
        state, lambda ws: state.execute_funding(FundingCommand("fund_0", "acc_0", 100_000, "CNY", "f", "h", DAY0), ws)
    )
    return state


def test_a_retry_is_not_evicted_by_new_payments_decided_before_it_in_the_same_batch() -> None:
    # Review finding: the prefetch skips ids it holds; new transfers decided earlier in the
    # batch then evicted the old one, and its retry was decided as a NEW payment (a second
    # debit, and a primary-key violation at write that stopped the worker).
    state = _cache_state(cache_max=2)
    (code, original), _ = commit(state, lambda ws: state.execute_payment(pay("p_old", 100), ws))
    assert code == Code.OK
    assert "p_old" in state.transfers  # cached: the prefetch would skip it
    before = balances(state)
    ws = WriteSet()
    results = [state.execute_payment(pay(pid, 100), ws) for pid in ("p_new1", "p_new2", "p_old")]
    assert results[2] == (Code.REPLAY, original)
    assert [t.id for t in ws.transfers] == ["p_new1", "p_new2"]
    assert state.accounts["acc_0"].balance_minor == before["acc_0"] - 200
    for transfer in ws.transfers:
        transfer.committed = True
    state.evict()  # after the batch: bounded again
    assert len(state.transfers) == 2


def test_prefetched_ids_survive_a_batch_larger_than_the_cache() -> None:
    # A batch refers to more stored ids than the cache holds: loading them must not
    # evict the ones loaded earlier in the same prefetch.
    state = _cache_state(cache_max=2)
    stored = []
    for i in range(5):
        (_code, transfer), _ = commit(state, lambda ws, i=i: state.execute_payment(pay(f"p{i}", 10 + i), ws))
        stored.append(transfer)
    state.transfers.clear()  # all of them only in "PostgreSQL" now
    for transfer in stored:  # what the prefetch does with the rows it read
        state.remember(transfer)
    ws = WriteSet()
    for i, transfer in enumerate(stored):
        assert state.execute_payment(pay(f"p{i}", 10 + i), ws) == (Code.REPLAY, transfer)
    assert ws.is_empty()
    state.evict()
    assert len(state.transfers) == 2


def test_touch_makes_cached_ids_most_recent_and_returns_the_missing() -> None:
    state = _cache_state(cache_max=2)
    for i in range(2):
        commit(state, lambda ws, i=i: state.execute_payment(pay(f"p{i}", 10 + i), ws))
    state.evict()
    assert list(state.transfers) == ["p0", "p1"]
    assert state.touch(["p0", "p9"]) == ["p9"]
    assert list(state.transfers) == ["p1", "p0"]
    commit(state, lambda ws: state.execute_payment(pay("p2", 12), ws))
    state.evict()
    assert list(state.transfers) == ["p0", "p2"]  # p1 was least recently used


# ---- randomized workload against a model ---------------------------------------------------
def run_workload(seed: int, steps: int = 400) -> None:
    rng = random.Random(seed)
    shard_count = 2
    states = [
        make_state(
            s,
            shard_count,
            customers=4,
            balance=rng.randint(0, 3_000),
            per_payment=rng.randint(1, 2_000),
            daily=rng.randint(1, 5_000),
            prefix=f"acc_{s}_",
        )
        for s in range(shard_count)
    ]
    # one shared ledger model: a balances dict per shard, and legs in flight
    model = [balances(s) for s in states]
    in_flight: list[tuple[CreditLeg, int, int]] = []  # (leg, source, target)
    used_ids: dict[int, list[PaymentCommand]] = {0: [], 1: []}
    initial_total = sum(sum(m.values()) for m in model)
    batch: list[tuple[int, WriteSet]] = []
    for step in range(steps):
        source = rng.randrange(shard_count)
        state = states[source]
        ws = WriteSet()
        roll = rng.random()
        if roll < 0.15 and used_ids[source]:
            old = rng.choice(used_ids[source])
            # retry with the same id: same body is a replay, otherwise a mismatch
            same = rng.random() < 0.5
            cmd = (
                old
                if same
                else pay(
                    old.payment_id,
                    old.amount_minor + 1,
                    agreement=old.agreement_id,
                    creditor=old.creditor_account,
                    creditor_shard=old.creditor_shard,
                )
            )
            code, _ = state.execute_payment(cmd, ws)
            assert code in (Code.REPLAY, Code.EXISTS_WITH_DIFFERENT_BODY, Code.IN_FLIGHT)
            assert ws.is_empty()
        elif roll < 0.3 and in_flight:
            leg, src, target = in_flight.pop(rng.randrange(len(in_flight)))
            code = states[target].execute_credit(leg, ws)
            assert code == Code.OK
            model[target][CLEARING_ACCOUNT] -= leg.amount_minor
            model[target][leg.creditor_account] += leg.amount_minor
            states[src].mark_delivered(leg.transfer_id, ws)
            source = target
        else:
            agreement = f"agr_{rng.randrange(4)}"
            debtor = state.agreements[agreement].debtor_account
            target = rng.randrange(shard_count)
            creditor = rng.choice([SETTLEMENT, f"acc_{target}_{rng.randrange(4)}"])
            if target != source:
                creditor = f"acc_{target}_{rng.randrange(4)}"
            amount = rng.randint(1, 1_500)
            cmd = pay(
                f"p{step}",
                amount,
                agreement=agreement,
                creditor=creditor,
                creditor_shard=target,
                at_ms=DAY0 + step * 1_000,
            )
            code, transfer = state.execute_payment(cmd, ws)
            if creditor == debtor and target == source:
                assert code == Code.SAME_ACCOUNT
                continue
            assert code == Code.OK and transfer is not None
            used_ids[source].append(cmd)
            if transfer.status != Status.REJECTED:
                assert model[source][debtor] >= amount
                model[source][debtor] -= amount
                if target == source:
                    model[source][creditor] += amount
                else:
                    model[source][CLEARING_ACCOUNT] += amount
                    assert len(ws.outbox) == 1
                    in_flight.append((ws.outbox[0], source, target))
            else:
                assert ws.deltas == {}
        ws.check_balanced()
        batch.append((source, ws))
        # commit in small groups, so in-flight duplicates happen inside a batch
        if rng.random() < 0.5:
            for _, w in batch:
                for t in w.transfers:
                    t.committed = True
            batch.clear()
        for s, st_ in enumerate(states):
            assert balances(st_) == model[s], f"step {step}: shard {s} diverged from the model"
            assert st_.total_balance_minor() == 0
            assert all(a.balance_minor >= 0 for a in st_.accounts.values() if not a.allow_negative)
    # deliver everything still in flight, then money is conserved across shards
    for leg, _src, target in in_flight:
        assert states[target].execute_credit(leg, WriteSet()) == Code.OK
    customer_total = sum(
        a.balance_minor for s in states for a in s.accounts.values() if a.kind in ("customer", "settlement")
    )
    funding_total = sum(s.accounts[FUNDING_ACCOUNT].balance_minor for s in states)
    assert customer_total + funding_total == initial_total == 0
    assert sum(s.accounts[CLEARING_ACCOUNT].balance_minor for s in states) == 0


@settings(max_examples=25, deadline=None, print_blob=True)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_randomized_workload_conserves_money(seed: int) -> None:
    try:
        run_workload(seed)
    except AssertionError as exc:
        raise AssertionError(f"workload seed {seed}: {exc}") from exc


@pytest.mark.parametrize("seed", [1, 2, 3, 12345])
def test_seeded_workload(seed: int) -> None:
    try:
        run_workload(seed, steps=600)
    except AssertionError as exc:
        raise AssertionError(f"workload seed {seed}: {exc}") from exc


def test_a_held_leg_acknowledged_to_the_debtor_shard_leaves_its_payment_in_process() -> None:
    # The debtor shard used to mark every acknowledged leg Completed, a held one included:
    # the partner read "settled" for money that never reached the creditor.
    state = make_state(shard=0, balance=1_000)
    _, ws = commit(
        state,
        lambda ws: state.execute_payment(
            PaymentCommand("pay_x_0", PARTNER, "agr_0", 100, "CNY", "acc_far", 1, "r", "h", DAY0), ws
        ),
    )
    payment = state.transfers["pay_x_0"]
    assert payment.status == Status.IN_PROCESS and ws.outbox
    _, ws_held = commit(state, lambda ws: state.mark_delivered("pay_x_0", ws, held=True))
    assert ws_held.delivered_held == ["pay_x_0"] and ws_held.delivered == []
    assert payment.status == Status.IN_PROCESS
    _, ws_done = commit(state, lambda ws: state.mark_delivered("pay_x_0", ws))
    assert ws_done.delivered == ["pay_x_0"] and payment.status == Status.COMPLETED


def test_a_refund_of_a_payment_still_committing_says_so() -> None:
    """Review finding: it answered IN_FLIGHT, which the API reads as "this idempotency key
    is in flight"; it is the payment that is, and the refund's key is free."""
    from ledger.model import RefundCommand

    state = make_state()
    ws = WriteSet()
    code, payment = state.execute_payment(pay("p_uncommitted", 100), ws)
    assert code == Code.OK and payment is not None and not payment.committed
    refund = RefundCommand("ref_1", PARTNER, "p_uncommitted", None, None, None, "h", DAY0)
    assert state.execute_refund(refund, WriteSet()) == (Code.PAYMENT_IN_FLIGHT, None)
    payment.committed = True
    code, done = state.execute_refund(refund, WriteSet())
    assert code == Code.OK and done is not None and done.status == "Succeeded" and done.amount_minor == 100


def test_every_decision_code_the_gateway_may_see_has_an_answer() -> None:
    from gateway.app import _PAYMENT_ERRORS

    answered = {"OK", "REPLAY", "SAME", "INVALID_TRANSITION", "FORBIDDEN", "HELD", "EXISTS"}
    refused = {name for name, value in vars(Code).items() if not name.startswith("_") and isinstance(value, str)}
    reasons = {"INSUFFICIENT_FUNDS", "AGREEMENT_PER_PAYMENT_LIMIT", "AGREEMENT_PERIODIC_LIMIT", "BALANCE_OVERFLOW"}
    missing = refused - answered - reasons - set(_PAYMENT_ERRORS)
    assert not missing, missing


# ---- the agreement index (visibility, pending counts) against the full scan ------------------
_PAIRS_ACCOUNTS = ("acc_0", "acc_1")
_PAIRS_PARTNERS = ("ptn_a", "ptn_b", "ptn_c")
_index_ops = st.lists(
    st.one_of(
        # create: account, partner, valid_to offset from now (None: no end)
        st.tuples(
            st.just("create"),
            st.sampled_from(_PAIRS_ACCOUNTS),
            st.sampled_from(_PAIRS_PARTNERS),
            st.one_of(st.none(), st.integers(-5, 50)),
        ),
        # a lifecycle action on the k-th agreement by the customer or its partner
        st.tuples(
            st.just("act"),
            st.integers(0, 40),
            st.sampled_from(["authorise", "authorise", "reject", "suspend", "resume", "revoke"]),
            st.sampled_from(["customer", "customer", "partner"]),
        ),
        # the clock moves, forward or (a stepped-back clock) backward
        st.tuples(st.just("time"), st.integers(-30, 60)),
        # a restart: the state is rebuilt from the agreements as stored (load_agreement)
        st.tuples(st.just("reload")),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=_index_ops, expiry_s=st.integers(1, 40), per_account=st.integers(1, 4), in_total=st.integers(1, 6))
def test_the_agreement_index_agrees_with_a_full_scan(
    ops: list[tuple], expiry_s: int, per_account: int, in_total: int
) -> None:
    """can_see and pending_count (the index) answer exactly what a walk over every agreement
    answers, after any sequence of creates, transitions, clock moves (both ways) and reloads;
    a create is refused exactly when the scan counts the cap reached."""
    from ledger.agreements import effective_status

    def fresh() -> ShardState:
        state = ShardState(
            0, 1, pending_expiry_s=expiry_s, pending_per_account_max=per_account, pending_per_partner_max=in_total
        )
        for account in _PAIRS_ACCOUNTS:
            state.load_account(Account(account, "customer", "CNY", 0, False))
        return state

    def scan_pending(state: ShardState, partner: str, account: str | None, at_ms: int) -> int:
        return sum(
            1
            for a in state.agreements.values()
            if a.partner_id == partner
            and (account is None or a.debtor_account == account)
            and effective_status(a.status, a.valid_to_ms, at_ms, a.authorise_by_ms) == "AwaitingAuthorisation"
        )

    state, now, made = fresh(), DAY0, 0
    for op in ops:
        if op[0] == "create":
            _, account, partner, to_offset = op
            agreement = mandate(f"agr_{made}", partner, account, "CNY", 10, 10, "AwaitingAuthorisation", now)
            agreement.valid_to_ms = None if to_offset is None else now + to_offset * 1000
            capped = (
                scan_pending(state, partner, account, now) >= per_account
                or scan_pending(state, partner, None, now) >= in_total
            )
            code = state.create_agreement(agreement, WriteSet())
            assert (code != Code.OK) == capped, (code, op)
            made += code == Code.OK
        elif op[0] == "act" and made:
            _, k, action, actor = op
            agreement = state.agreements[f"agr_{k % made}"]
            partner = agreement.partner_id if actor == "partner" else None
            state.transition_agreement(agreement.id, partner, action, actor, now, WriteSet())
        elif op[0] == "time":
            now += op[1] * 1000
        elif op[0] == "reload":
            stored = [
                Agreement(**{name: getattr(a, name) for name in Agreement.__slots__})  # type: ignore[attr-defined]
                for a in state.agreements.values()
            ]
            state = fresh()
            for agreement in stored:
                state.load_agreement(agreement)
        for at_ms in (now - 1_000, now, now + 1_000):
            for partner in _PAIRS_PARTNERS:
                assert state.pending_count(partner, None, at_ms) == scan_pending(state, partner, None, at_ms)
                for account in _PAIRS_ACCOUNTS:
                    assert state.can_see(partner, account, at_ms) == state.can_see_by_scan(partner, account, at_ms)
                    assert state.pending_count(partner, account, at_ms) == scan_pending(state, partner, account, at_ms)


def test_can_see_costs_the_same_with_ten_thousand_pending_agreements_over_the_account() -> None:
    """The visibility check no longer walks the account's agreements: 10,000 pending
    agreements of another partner over the account (the old scan's worst case) leave it
    answering from the index; the scan it replaced has 10,001 agreements to look at."""
    state = ShardState(0, 1, pending_per_account_max=20_000, pending_per_partner_max=20_000)
    state.load_account(Account("acc_0", "customer", "CNY", 0, False))
    for i in range(10_000):
        assert (
            state.create_agreement(
                mandate(f"agr_{i}", "ptn_hostile", "acc_0", "CNY", 1, 1, "AwaitingAuthorisation", DAY0), WriteSet()
            )
            == Code.OK
        )
    assert (
        state.create_agreement(
            mandate("agr_ok", "ptn_ok", "acc_0", "CNY", 1, 1, "AwaitingAuthorisation", DAY0), WriteSet()
        )
        == Code.OK
    )
    assert state.transition_agreement("agr_ok", None, "authorise", "customer", DAY0, WriteSet())[0] == Code.OK
    looked_at: list[str] = []
    agreements = state.agreements

    class Counting(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: str) -> Agreement:
            looked_at.append(key)
            return agreements[key]

    state.agreements = Counting()
    assert state.can_see("ptn_ok", "acc_0", DAY0) and not state.can_see("ptn_hostile", "acc_0", DAY0)
    assert looked_at == []  # the index answers; no agreement is read
    assert state.can_see_by_scan("ptn_ok", "acc_0", DAY0) and len(looked_at) == 10_001
    assert state.pending_count("ptn_hostile", "acc_0", DAY0) == 10_000
    assert state.pending_count("ptn_hostile", None, DAY0 + 86_400_000 + 1) == 0  # all expired after 24 h


def test_the_total_pending_cap_is_shared_out_over_the_shards_without_exceeding_it() -> None:
    from ledger.state import PENDING_PER_PARTNER_MAX, pending_share

    assert [pending_share(10_000, n) for n in (1, 2, 3, 7)] == [10_000, 5_000, 3_333, 1_428]
    assert all(pending_share(total, n) * n <= total for total in range(1, 200) for n in range(1, total + 1))
    assert pending_share(1, 4) == 1  # below the shard count: one per shard
    assert ShardState(1, 2).pending_per_partner_max == PENDING_PER_PARTNER_MAX // 2


def test_reloading_an_agreement_replaces_it_in_every_index() -> None:
    """Regression: load_agreement of an id already loaded took the old row out of the
    visibility index but put a second key into agreements_by_partner/_by_debtor, so the
    agreement was listed twice; unload_agreement is its inverse."""
    state = make_state(customers=1, balance=0)
    again = mandate("agr_0", PARTNER, "acc_0", "CNY", 5_000, 8_000, "active", 0)
    state.load_agreement(again)
    assert state.agreements_by_partner[PARTNER] == [(0, "agr_0")]
    assert state.agreements_by_debtor["acc_0"] == [(0, "agr_0")]
    assert state.agreements["agr_0"] is again
    assert state.unload_agreement("agr_0") is again
    assert "agr_0" not in state.agreements
    assert PARTNER not in state.agreements_by_partner and "acc_0" not in state.agreements_by_debtor
    assert not state.visible_ends and state.unload_agreement("agr_0") is None
