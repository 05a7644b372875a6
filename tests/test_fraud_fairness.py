"""Fraud windows are fair (issue 17, point 6; docs/hardening/fraud-fairness.md).

Proves: a refund takes its payment back out of the velocity windows (a partial refund lowers
sums, a full refund lowers counts too), in the engine against a brute-force model and through
ShardState.execute_refund; the start-up rebuild (ledger.fraud_port.replay_journal over the
journal) ends in exactly the window state the live path built; one partner's tiny payments and
refunds from a customer never get another partner's payment from that customer blocked; and a
velocity attack spread over several partners on one customer is still reviewed, recorded with
the rule that fired. Also: each rule's scope (payment / partner / cross-partner) and the lint
that lists rules by which one partner's traffic could block another's customers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud import FraudFilter, PaymentFacts, RuleRegistry, default_rules_path, load_rules_file, parse_rules
from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT, settlement_account_for
from ledger.agreements import PeriodicLimit
from ledger.fraud_port import facts_of_payment, make_facts, replay_journal
from ledger.model import Account, Agreement, Code, FundingCommand, PaymentCommand, RefundCommand, Status, Transfer
from ledger.state import ShardState, WriteSet

T0_MS = 1_700_000_000_000


def facts(transfer_id: str = "tr_1", **overrides: Any) -> PaymentFacts:
    base = PaymentFacts(transfer_id, "ptn_a", "agr_1", "acc_c", "acc_x", 1_000, "CNY", "dev_1", "10.0.0.1", T0_MS)
    return replace(base, **overrides)


def rule(rule_id: str, action: str, condition: str, score: int = 0, shadow: bool = False) -> str:
    flag = " shadow" if shadow else ""
    return f'rule {rule_id} {{ action {action} score {score}{flag} description "{rule_id}" when {condition} }}\n'


PROBE = parse_rules(
    rule(
        "probe",
        "review",
        "count(by debtor, 10s) >= 0 and sum(amount, by debtor, 10s) >= 0"
        " and count(by (debtor, partner), 5s) >= 0 and sum(amount, by (partner, debtor), 5s) >= 0"
        " and distinct(creditor, by debtor, 10s) >= 0",
        shadow=True,
    )
)


def probe_values(engine: FraudFilter, probe: PaymentFacts) -> dict[str, Any]:
    return dict(engine.evaluate(probe).hits[0].values)


# ---- the windows: refunds take a payment back out ------------------------------------------
def test_partial_refund_lowers_sums_and_a_full_refund_lowers_counts() -> None:
    engine = FraudFilter(PROBE)
    engine.record(facts("p1", amount_minor=1_000))
    engine.record(facts("p2", amount_minor=500, at_ms=T0_MS + 1))
    probe = facts("probe", amount_minor=1, at_ms=T0_MS + 2)
    before = probe_values(engine, probe)
    assert (before["count(by debtor, 10s)"], before["sum(amount, by debtor, 10s)"]) == (3, 1_501)
    engine.refund(facts("p1", amount_minor=1_000), 300)
    partial = probe_values(engine, probe)
    assert (partial["count(by debtor, 10s)"], partial["sum(amount, by debtor, 10s)"]) == (3, 1_201)
    assert (partial["count(by (debtor, partner), 5s)"], partial["sum(amount, by (debtor, partner), 5s)"]) == (3, 1_201)
    engine.refund(facts("p1", amount_minor=1_000), 700)  # the rest: refunded in full now
    full = probe_values(engine, probe)
    assert (full["count(by debtor, 10s)"], full["sum(amount, by debtor, 10s)"]) == (2, 501)
    assert (full["count(by (debtor, partner), 5s)"], full["sum(amount, by (debtor, partner), 5s)"]) == (2, 501)
    # A refund does not undo that the debtor paid that creditor: distinct stays.
    assert full["distinct(creditor, by debtor, 10s)"] == 1
    # Refunding again, or a payment never recorded, changes nothing.
    engine.refund(facts("p1", amount_minor=1_000), 700)
    engine.refund(facts("nope"), 100)
    engine.refund(facts("p2", amount_minor=500, at_ms=T0_MS + 1), 0)
    assert probe_values(engine, probe) == full


def test_refund_finds_an_event_recorded_late_and_one_after_trimming() -> None:
    engine = FraudFilter(PROBE, max_events_per_key=2)
    engine.record(facts("p1", at_ms=T0_MS + 5_000))
    engine.record(facts("late", at_ms=T0_MS))  # recorded at T0 + 5 s (late events take the newest time)
    engine.refund(facts("late", at_ms=T0_MS), 1_000)
    probe = facts("probe", amount_minor=0, at_ms=T0_MS + 6_000)
    assert probe_values(engine, probe)["count(by debtor, 10s)"] == 2
    engine.record(facts("p2", at_ms=T0_MS + 5_001))
    engine.record(facts("p3", at_ms=T0_MS + 5_002))  # the key holds 2 events: p1 is dropped
    engine.refund(facts("p1", at_ms=T0_MS + 5_000), 1_000)  # gone already: a no-op
    values = probe_values(engine, probe)
    assert (values["count(by debtor, 10s)"], values["sum(amount, by debtor, 10s)"]) == (3, 2_000)


events_strategy = st.lists(
    st.one_of(
        # a payment: (debtor, partner, creditor, ms since the previous event, amount)
        st.tuples(
            st.just("pay"),
            st.sampled_from(["d1", "d2"]),
            st.sampled_from(["pA", "pB", "pC"]),
            st.sampled_from(["c1", "c2", "c3"]),
            st.integers(0, 3_000),
            st.integers(1, 1_000),
        ),
        # a refund: (which earlier payment, share of what is left in %: 100 = the rest)
        st.tuples(st.just("refund"), st.integers(0, 10**6), st.sampled_from([1, 30, 50, 100, 100, 150])),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, database=None)
@given(events=events_strategy)
def test_windows_with_refunds_match_a_brute_force_model(events: list[tuple[Any, ...]]) -> None:
    engine = FraudFilter(PROBE)
    recorded: list[PaymentFacts] = []
    left: dict[str, int] = {}  # payment id -> amount not refunded yet
    at_ms = T0_MS
    for index, event in enumerate(events):
        if event[0] == "refund":
            if not recorded:
                continue
            paid = recorded[event[1] % len(recorded)]
            amount = max(1, left[paid.transfer_id] * event[2] // 100)
            engine.refund(paid, amount)
            left[paid.transfer_id] = max(0, left[paid.transfer_id] - amount)
            continue
        _, debtor, partner, creditor, gap_ms, amount = event
        at_ms += gap_ms
        current = facts(
            f"p{index}",
            debtor_account=debtor,
            partner_id=partner,
            creditor_account=creditor,
            amount_minor=amount,
            at_ms=at_ms,
        )

        def live(window_ms: int, same_partner: bool) -> list[PaymentFacts]:
            return [
                p
                for p in recorded
                if p.debtor_account == debtor
                and p.at_ms > at_ms - window_ms
                and left[p.transfer_id] > 0
                and (not same_partner or p.partner_id == partner)
            ]

        seen = [p for p in recorded if p.debtor_account == debtor and p.at_ms > at_ms - 10_000]
        expected = {
            "count(by debtor, 10s)": len(live(10_000, False)) + 1,
            "sum(amount, by debtor, 10s)": sum(left[p.transfer_id] for p in live(10_000, False)) + amount,
            "count(by (debtor, partner), 5s)": len(live(5_000, True)) + 1,
            "sum(amount, by (debtor, partner), 5s)": sum(left[p.transfer_id] for p in live(5_000, True)) + amount,
            # refunded payments stay in distinct trackers (documented)
            "distinct(creditor, by debtor, 10s)": len({p.creditor_account for p in seen} | {creditor}),
        }
        assert probe_values(engine, current) == expected
        engine.record(current)
        recorded.append(current)
        left[current.transfer_id] = amount


# ---- the ledger: live path vs. start-up rebuild -------------------------------------------
PARTNERS = ("ptn_a", "ptn_b", "ptn_c", "ptn_d")
DEBTORS = ("acc_0", "acc_1")


def ledger_state(ruleset: Any, **engine_limits: int) -> ShardState:
    """One shard holding two customers, each with an agreement with each of four partners;
    the fraud filter wired as ledger.fraud_port wires it."""
    state = ShardState(0, 1, fraud=FraudFilter(ruleset, **engine_limits), make_facts=make_facts)
    state.payment_facts = facts_of_payment
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    for partner in PARTNERS:
        state.load_account(Account(settlement_account_for(partner), "settlement", "CNY", 0, True, partner))
    for debtor in DEBTORS:
        state.load_account(Account(debtor, "customer", "CNY", 0, False))
        for partner in PARTNERS:
            state.load_agreement(
                Agreement(
                    f"agr_{partner}_{debtor}",
                    partner,
                    debtor,
                    "CNY",
                    10**9,
                    [PeriodicLimit("Day", "Calendar", 10**15)],
                    "Authorised",
                    0,
                )
            )
        run(
            state,
            lambda ws, d=debtor: state.execute_funding(
                FundingCommand(f"fund_{d}", d, 10**12, "CNY", "f", f"h-{d}", T0_MS), ws
            ),
        )
    return state


def run(state: ShardState, decide: Any) -> tuple[str, Transfer | None]:
    """Decide one command in its own batch and commit it, as the batcher would."""
    ws = WriteSet()
    code, transfer = decide(ws)
    for written in ws.transfers:
        written.committed = True
    return code, transfer


def pay(
    state: ShardState, pid: str, partner: str, debtor: str, amount: int, at_ms: int, device: str | None = None
) -> Transfer:
    command = PaymentCommand(
        pid,
        partner,
        f"agr_{partner}_{debtor}",
        amount,
        "CNY",
        settlement_account_for(partner),
        0,
        "r",
        f"h-{pid}",
        at_ms,
        device_id=device,
    )
    code, transfer = run(state, lambda ws: state.execute_payment(command, ws))
    assert code == Code.OK and transfer is not None, code
    return transfer


def refund(state: ShardState, rid: str, partner: str, payment_id: str, amount: int | None, at_ms: int) -> Transfer:
    command = RefundCommand(rid, partner, payment_id, amount, "requested_by_customer", None, f"h-{rid}", at_ms)
    code, transfer = run(state, lambda ws: state.execute_refund(command, ws))
    assert code == Code.OK and transfer is not None and transfer.status == Status.SUCCEEDED, code
    return transfer


def journal_rows(state: ShardState, after_ms: int | None = None) -> list[dict[str, Any]]:
    """What FraudAdapter._rebuild_windows selects from the transfers table, in seq order."""
    rows = []
    for t in sorted(state.transfers.values(), key=lambda t: t.seq):
        chosen = (t.kind == "payment" and t.status != Status.REJECTED) or (
            t.kind == "refund" and t.status != Status.REJECTED
        )
        if chosen and (after_ms is None or t.created_at_ms > after_ms):
            rows.append(
                {
                    "id": t.id,
                    "kind": t.kind,
                    "partner_id": t.partner_id,
                    "agreement_id": t.agreement_id,
                    "debit_account": t.debit_account,
                    "creditor_account": t.creditor_account,
                    "amount_minor": t.amount_minor,
                    "currency": t.currency,
                    "device_id": t.device_id,
                    "ip": t.ip,
                    "created_at_ms": t.created_at_ms,
                    "refund_of": (t.details or {}).get("payment_id") if t.kind == "refund" else None,
                }
            )
    return rows


def window_state(engine: FraudFilter) -> dict[str, Any]:
    """Everything the windows hold, in order (LRU order of keys included)."""
    return {
        "stores": {
            store_key: [
                (
                    key,
                    s.times_ms,
                    s.ids,
                    s.cumulative_minor,
                    s.dropped_cumulative_minor,
                    {tracker: list(seen.items()) for tracker, seen in s.distinct.items()},
                    s.newest_ms,
                )
                for key, s in store.states.items()
            ]
            for store_key, store in engine._stores.items()
        },
        "evicted": {store_key: store.evicted_keys for store_key, store in engine._stores.items()},
        "pairs": list(engine._pairs),
    }


commands_strategy = st.lists(
    st.one_of(
        # a payment: (partner, debtor, device, ms since the previous command, may go 2 s back, amount)
        st.tuples(
            st.just("pay"),
            st.sampled_from(PARTNERS),
            st.sampled_from(DEBTORS),
            st.none() | st.sampled_from(["dev_1", "dev_2"]),
            st.integers(-2_000, 4_000),
            st.integers(1, 5_000),
        ),
        # a refund of an earlier payment: (which, None = the rest, or a share of what is left in %)
        st.tuples(st.just("refund"), st.integers(0, 10**6), st.none() | st.integers(1, 99)),
    ),
    min_size=1,
    max_size=50,
)

REBUILD_RULES = parse_rules(
    rule(
        "probe",
        "review",
        "count(by (debtor, partner), 10s) >= 0 and sum(amount, by (debtor, partner), 10s) >= 0"
        " and count(by debtor, 20s) >= 0 and sum(amount, by debtor, 5s) >= 0"
        " and distinct(creditor, by debtor, 20s) >= 0 and distinct(debtor, by device_id, 20s) >= 0"
        " and first_to_creditor == first_to_creditor",
        shadow=True,
    )
    + rule("fast", "block", "count(by (debtor, partner), 10s) > 4", score=100)
)


def drive(state: ShardState, commands: list[tuple[Any, ...]]) -> int:
    """Run payments and refunds through the live path; returns the last command's time."""
    at_ms = T0_MS
    paid: list[Transfer] = []
    for index, command in enumerate(commands):
        if command[0] == "pay":
            _, partner, debtor, device, gap_ms, amount = command
            at_ms = max(T0_MS, at_ms + gap_ms)
            transfer = pay(state, f"p{index}", partner, debtor, amount, at_ms, device)
            if transfer.status != Status.REJECTED:
                paid.append(transfer)
            continue
        _, which, share = command
        candidates = [t for t in paid if t.refunded_minor < t.amount_minor]
        if not candidates:
            continue
        payment = candidates[which % len(candidates)]
        left = payment.amount_minor - payment.refunded_minor
        amount = None if share is None else max(1, left * share // 100)
        refund(state, f"r{index}", payment.partner_id or "", payment.id, amount, at_ms)
    return at_ms


@settings(max_examples=120, deadline=None, database=None)
@given(commands=commands_strategy, small=st.booleans())
def test_rebuild_from_the_journal_ends_in_the_live_window_state(commands: list[tuple[Any, ...]], small: bool) -> None:
    # small: bounds tight enough that keys are evicted and events trimmed along the way.
    limits = {"max_keys_per_window": 2, "max_events_per_key": 3} if small else {}
    live = ledger_state(REBUILD_RULES, **limits)
    drive(live, commands)
    rebuilt = FraudFilter(REBUILD_RULES, **limits)
    replay_journal(rebuilt, journal_rows(live))
    assert isinstance(live.fraud, FraudFilter)
    assert window_state(rebuilt) == window_state(live.fraud)


@settings(max_examples=80, deadline=None, database=None)
@given(commands=commands_strategy)
def test_rebuild_over_the_longest_window_decides_as_the_live_path(commands: list[tuple[Any, ...]]) -> None:
    """As at start-up: only rows newer than now - the longest window are read (times kept in
    order here: a late event recorded at a newer time than its own is the documented exception)."""
    in_order = [c if c[0] == "refund" else (*c[:4], abs(c[4]), c[5]) for c in commands]
    live = ledger_state(REBUILD_RULES)
    now_ms = drive(live, in_order) + 1
    rebuilt = FraudFilter(REBUILD_RULES)
    replay_journal(rebuilt, journal_rows(live, after_ms=now_ms - REBUILD_RULES.max_window_s * 1000))
    assert isinstance(live.fraud, FraudFilter)
    for at_ms in (now_ms, now_ms + 4_000, now_ms + 9_000):
        for partner in PARTNERS:
            for debtor in DEBTORS:
                for device in (None, "dev_1", "dev_2"):
                    probe = facts(
                        "probe",
                        partner_id=partner,
                        debtor_account=debtor,
                        device_id=device,
                        creditor_account=settlement_account_for(partner),
                        at_ms=at_ms,
                    )
                    assert rebuilt.evaluate(probe) == live.fraud.evaluate(probe)


# ---- fairness between partners, with the shipped rules ------------------------------------
DEFAULT = load_rules_file(default_rules_path())


def test_one_partners_tiny_payments_and_refunds_do_not_block_another_partners_payment() -> None:
    state = ledger_state(DEFAULT)
    # Partner A: 30 tiny payments from acc_0 in 30 s, each refunded; its own velocity
    # window counts none of the refunded ones, so A is not even limited by them.
    for i in range(30):
        paid = pay(state, f"a{i}", "ptn_a", "acc_0", 1, T0_MS + i * 1_000)
        assert paid.status == Status.COMPLETED and paid.fraud is None, paid.fraud
        refund(state, f"ra{i}", "ptn_a", paid.id, None, T0_MS + i * 1_000 + 500)
    # ... then 20 more, not refunded: the 21st through A is blocked, for A only.
    for i in range(30, 51):
        paid = pay(state, f"a{i}", "ptn_a", "acc_0", 1, T0_MS + i * 1_000)
    assert paid.status == Status.REJECTED and paid.reasons == ("debtor_velocity_count_block",)
    # Partner B's normal payment from the same customer, a second later, is accepted.
    b = pay(state, "b1", "ptn_b", "acc_0", 50_000, T0_MS + 52_000)
    assert b.status == Status.COMPLETED and b.reasons == ()
    assert b.fraud is None  # nothing fired: 21 accepted payments across partners, below the review line


def test_refunded_payments_leave_the_partners_own_window() -> None:
    state = ledger_state(DEFAULT)
    for i in range(20):
        pay(state, f"a{i}", "ptn_a", "acc_0", 100, T0_MS + i)
    blocked = pay(state, "a20", "ptn_a", "acc_0", 100, T0_MS + 20)
    assert blocked.reasons == ("debtor_velocity_count_block",)
    refund(state, "r0", "ptn_a", "a0", 40, T0_MS + 21)  # partial: still counted
    assert pay(state, "a21", "ptn_a", "acc_0", 100, T0_MS + 22).status == Status.REJECTED
    refund(state, "r1", "ptn_a", "a0", None, T0_MS + 23)  # the rest: a0 has left the window
    assert pay(state, "a22", "ptn_a", "acc_0", 100, T0_MS + 24).status == Status.COMPLETED


def test_a_velocity_attack_spread_over_partners_is_still_seen() -> None:
    state = ledger_state(DEFAULT)
    # 4 partners x 8 payments from acc_1 within 10 minutes: each partner stays below its own
    # block line (20), the customer's cross-partner count passes 30 on the 31st.
    decided = []
    for i in range(32):
        partner = PARTNERS[i % 4]
        decided.append(pay(state, f"x{i}", partner, "acc_1", 10_000, T0_MS + i * 10_000))
    assert all(t.status == Status.COMPLETED for t in decided)  # review accepts; nobody is blocked
    assert [t.fraud for t in decided[:30]] == [None] * 30
    for t in decided[30:]:
        assert t.fraud is not None
        assert t.fraud["decision"] == "review"
        assert t.fraud["reason_codes"] == ["debtor_cross_partner_velocity_review"]
        assert t.fraud["reasons"][0]["values"] == {"count(by debtor, 10m)": int(t.id[1:]) + 1}


def test_a_cross_partner_sum_attack_is_reviewed_not_blocked() -> None:
    state = ledger_state(DEFAULT)
    # 4 partners x 2 x 40,000.00 CNY within the hour: every partner below its own 100,000.00
    # review line; the customer's 320,000.00 across partners passes 300,000.00 on the 8th.
    decided = [pay(state, f"s{i}", PARTNERS[i % 4], "acc_0", 4_000_000, T0_MS + i * 60_000) for i in range(8)]
    assert [t.fraud and t.fraud["reason_codes"] for t in decided] == [None] * 7 + [["debtor_cross_partner_sum_review"]]
    assert decided[7].fraud is not None and decided[7].fraud["score"] == 0
    assert all(t.status == Status.COMPLETED for t in decided)


def test_a_partners_device_claims_do_not_escalate_another_partners_customer() -> None:
    state = ledger_state(DEFAULT)
    # Partner A reports 6 customers on one device (device_id is the partner's word).
    for i in range(6):
        state.load_account(Account(f"acc_m{i}", "customer", "CNY", 10**9, False))
        state.load_agreement(
            Agreement(
                f"agr_ptn_a_acc_m{i}",
                "ptn_a",
                f"acc_m{i}",
                "CNY",
                10**9,
                [PeriodicLimit("Day", "Calendar", 10**15)],
                "Authorised",
                0,
            )
        )
        pay(state, f"m{i}", "ptn_a", f"acc_m{i}", 100, T0_MS + i, device="dev_shared")
    # Partner B's customer on that device: reviewed across partners, with score 0: even with
    # the payment's own review-level amount (score 40) it stays a review, never a block.
    b = pay(state, "b1", "ptn_b", "acc_0", 5_000_001, T0_MS + 100, device="dev_shared")
    assert b.status == Status.COMPLETED and b.fraud is not None
    assert b.fraud["decision"] == "review" and b.fraud["score"] == 40
    assert sorted(b.fraud["reason_codes"]) == ["amount_review", "device_many_debtors_review"]


# ---- rule scopes and the lint ---------------------------------------------------------------
def test_rule_scopes_and_cross_partner_escalations() -> None:
    ruleset = parse_rules(
        "list l = []\n"
        + rule("own", "block", "count(by (partner, debtor), 10m) > 1", score=100)
        + rule("own_too", "review", "count(by (debtor, partner), 10m) > 2 and count(by partner, 1h) > 3", score=10)
        + rule("plain", "block", "amount > 5 or debtor in list l", score=100)
        + rule("wide_block", "block", "count(by debtor, 10m) > 50")
        + rule("wide_score", "score", "distinct(creditor, by debtor, 1h) > 5", score=5)
        + rule("mixed", "review", "count(by (debtor, partner), 1m) > 1 and count(by ip, 1m) > 1", score=1)
        + rule("wide_review", "review", "count(by debtor, 10m) > 30")
        + rule("wide_shadow", "block", "count(by debtor, 10m) > 5", score=100, shadow=True)
    )
    assert {r["rule_id"]: r["scope"] for r in ruleset.describe()} == {
        "own": "partner",
        "own_too": "partner",
        "plain": "payment",
        "wide_block": "cross_partner",
        "wide_score": "cross_partner",
        "mixed": "cross_partner",
        "wide_review": "cross_partner",
        "wide_shadow": "cross_partner",
    }
    assert ruleset.cross_partner_escalations == ("wide_block", "wide_score", "mixed")
    # (partner, debtor) and (debtor, partner) are one window.
    assert ruleset.windows()[0] == (("debtor", "partner"), 600)
    assert len({key for key, _ in ruleset.windows()}) == 4


def test_shipped_rules_let_no_partner_block_another_partners_customers() -> None:
    assert DEFAULT.cross_partner_escalations == ()
    scopes = {r["rule_id"]: r["scope"] for r in DEFAULT.describe()}
    assert scopes["debtor_velocity_count_block"] == "partner"
    assert scopes["debtor_cross_partner_velocity_review"] == "cross_partner"
    registry = RuleRegistry()
    version, _ = registry.stage(DEFAULT.text, author="t", at_ms=T0_MS)
    wide, _ = registry.stage(rule("wide", "block", "count(by debtor, 10m) > 5"), author="t", at_ms=T0_MS + 1)
    listed = {v["version"]: v["cross_partner_escalations"] for v in registry.versions()}
    assert listed == {version: [], wide: ["wide"]}


@pytest.mark.parametrize("key", ["(debtor, partner)", "(partner, debtor)"])
def test_partner_pair_keys_parse_and_label_one_way(key: str) -> None:
    ruleset = parse_rules(rule("r", "block", f"count(by {key}, 10m) > 0"))
    decision = FraudFilter(ruleset).evaluate(facts())
    assert decision.hits[0].values == {"count(by (debtor, partner), 10m)": 1}
