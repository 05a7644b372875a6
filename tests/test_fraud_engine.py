"""FraudFilter behaviour: decision precedence (allow > block > review), scores and
thresholds, the exact window boundary, aggregates that include the current payment,
distinct/count/sum accuracy against a brute-force model, shadow rules, runtime list
edits, atomic rule-set swaps that keep shared windows, bounded memory, and that the
generated hot-path code matches the reference implementation."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud import Decision, FraudFilter, NamedLists, PaymentFacts, default_rules_path, load_rules_file, parse_rules

T0_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


def payment(**overrides: object) -> PaymentFacts:
    base = PaymentFacts(
        transfer_id="tr_1",
        partner_id="partner_1",
        agreement_id="agr_1",
        debtor_account="acc_debtor",
        creditor_account="acc_creditor",
        amount_minor=10_000,
        currency="CNY",
        device_id="dev_1",
        ip="10.0.0.1",
        at_ms=T0_MS,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def rule(rule_id: str, action: str, condition: str, score: int = 0, shadow: bool = False) -> str:
    flag = " shadow" if shadow else ""
    return f'rule {rule_id} {{ action {action} score {score}{flag} description "{rule_id}" when {condition} }}\n'


PRECEDENCE_RULES = (
    "list vip = []\n"
    + rule("review_big", "review", "amount > 100", score=10)
    + rule("block_huge", "block", "amount > 1000", score=20)
    + rule("allow_vip", "allow", "debtor in list vip")
)


def test_block_beats_review_and_reason_codes_name_the_blocking_rule() -> None:
    engine = FraudFilter(parse_rules(PRECEDENCE_RULES))
    decision = engine.evaluate(payment(amount_minor=5_000))
    assert decision.action == "block"
    assert decision.score == 30
    assert [hit.rule_id for hit in decision.hits] == ["review_big", "block_huge"]
    assert decision.reason_codes == ("block_huge",)
    assert engine.evaluate(payment(amount_minor=500)).action == "review"
    assert engine.evaluate(payment(amount_minor=50)) == Decision("allow", 0, (), ())


def test_enforced_allow_rule_wins_over_block() -> None:
    engine = FraudFilter(parse_rules(PRECEDENCE_RULES))
    engine.lists.add("vip", "acc_debtor")
    decision = engine.evaluate(payment(amount_minor=5_000))
    assert decision.action == "allow"
    assert decision.reason_codes == ("allow_vip",)
    # Every fired rule is still reported for analysis.
    assert {hit.rule_id for hit in decision.hits} == {"review_big", "block_huge", "allow_vip"}


def test_scores_add_up_and_thresholds_escalate() -> None:
    text = (
        "threshold review 30\nthreshold block 50\n"
        + rule("s1", "review", "amount > 10", score=20)
        + rule("s2", "review", "amount > 100", score=20)
        + rule("s3", "review", "amount > 1000", score=15)
        + rule("zero", "review", "amount > 1000", score=0)
    )
    engine = FraudFilter(parse_rules(text))
    assert engine.evaluate(payment(amount_minor=50)).action == "review"  # 20: rule says review
    at_40 = engine.evaluate(payment(amount_minor=500))
    assert (at_40.action, at_40.score) == ("review", 40)
    at_55 = engine.evaluate(payment(amount_minor=5_000))
    assert (at_55.action, at_55.score) == ("block", 55)
    # Escalated by score: the reasons are the positively scored rules that added up.
    assert at_55.reason_codes == ("s1", "s2", "s3")


def test_score_rules_decide_only_through_thresholds() -> None:
    text = (
        "threshold review 10\n"
        + rule("signal_a", "score", "amount > 0", score=6)
        + rule("signal_b", "score", "amount > 100", score=6)
        + rule("shadow_signal", "score", "amount > 0", score=50, shadow=True)
    )
    engine = FraudFilter(parse_rules(text))
    low = engine.evaluate(payment(amount_minor=5))
    # 6 < 10 and a score rule decides nothing by itself; the shadow 50 is not counted.
    assert (low.action, low.score, low.reason_codes) == ("allow", 6, ())
    assert [(hit.rule_id, hit.shadow) for hit in low.hits] == [("signal_a", False), ("shadow_signal", True)]
    high = engine.evaluate(payment(amount_minor=500))
    assert (high.action, high.score, high.reason_codes) == ("review", 12, ("signal_a", "signal_b"))


def test_score_threshold_escalates_when_rules_only_carry_scores() -> None:
    # A rule whose own action is 'review' but whose score alone reaches 'block'.
    text = "threshold review 10\nthreshold block 20\n" + rule("heavy", "review", "amount > 0", score=25)
    decision = FraudFilter(parse_rules(text)).evaluate(payment())
    assert (decision.action, decision.score, decision.reason_codes) == ("block", 25, ("heavy",))


def test_shadow_rules_are_recorded_but_never_enforced() -> None:
    text = rule("shadow_block", "block", "amount > 100", score=100, shadow=True) + rule(
        "real_review", "review", "amount > 1000", score=5
    )
    engine = FraudFilter(parse_rules(text))
    decision = engine.evaluate(payment(amount_minor=500))
    assert decision.action == "allow"
    assert decision.score == 0
    assert decision.reason_codes == ()
    assert [(hit.rule_id, hit.shadow, hit.values) for hit in decision.hits] == [("shadow_block", True, {"amount": 500})]
    both = engine.evaluate(payment(amount_minor=5_000))
    assert (both.action, both.score, both.reason_codes) == ("review", 5, ("real_review",))


def test_decision_round_trips_through_json() -> None:
    text = "list l = []\n" + rule(
        "r", "review", "amount > 1 and count(by debtor, 1m) >= 1 and ip != null and debtor not in list l", score=7
    )
    engine = FraudFilter(parse_rules(text))
    decision = engine.evaluate(payment(amount_minor=5))
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["decision"] == "review" and data["score"] == 7
    assert data["reasons"][0] == {
        "rule_id": "r",
        "action": "review",
        "score": 7,
        "shadow": False,
        "values": {"amount": 5, "count(by debtor, 1m)": 1, "ip": "10.0.0.1", "debtor": "acc_debtor"},
    }
    assert Decision.from_dict(data) == decision


def test_window_boundary_excludes_an_event_exactly_window_old() -> None:
    engine = FraudFilter(
        parse_rules(rule("v", "review", "count(by debtor, 10s) >= 2 and sum(amount, by debtor, 10s) >= 0"))
    )
    engine.record(payment(at_ms=T0_MS, amount_minor=7))
    # at_ms > t - W*1000 is inside: 1 ms before the edge the old event still counts.
    inside = engine.evaluate(payment(at_ms=T0_MS + 9_999, amount_minor=3))
    assert inside.action == "review"
    assert inside.hits[0].values == {"count(by debtor, 10s)": 2, "sum(amount, by debtor, 10s)": 10}
    # Exactly W seconds later the old event is out: the count is the current payment alone.
    assert engine.evaluate(payment(at_ms=T0_MS + 10_000)).action == "allow"


def test_aggregates_include_the_current_payment() -> None:
    engine = FraudFilter(parse_rules(rule("velocity", "block", "count(by debtor, 10m) > 20")))
    for index in range(20):
        facts = payment(transfer_id=f"tr_{index}", at_ms=T0_MS + index * 1_000)
        assert engine.evaluate(facts).action == "allow", index
        engine.record(facts)
    # This would be the 21st payment within 10 minutes.
    assert engine.evaluate(payment(at_ms=T0_MS + 20_000)).action == "block"


def test_evaluate_does_not_change_state() -> None:
    engine = FraudFilter(parse_rules(rule("v", "review", "count(by debtor, 1h) >= 2 or first_to_creditor == false")))
    facts = payment()
    for _ in range(5):
        assert engine.evaluate(facts).action == "allow"
    engine.record(facts)
    decision = engine.evaluate(payment(at_ms=T0_MS + 1))
    assert decision.action == "review"
    assert decision.hits[0].values == {"count(by debtor, 1h)": 2, "first_to_creditor": False}


def test_first_to_creditor_and_hour() -> None:
    text = rule("first_night", "review", "first_to_creditor and hour == 22")
    engine = FraudFilter(parse_rules(text))
    assert engine.evaluate(payment()).action == "review"  # T0 is 22:13 UTC
    assert engine.evaluate(payment(at_ms=T0_MS + 3_600_000)).action == "allow"  # 23:13
    engine.record(payment())
    assert engine.evaluate(payment(at_ms=T0_MS + 1)).action == "allow"
    assert engine.evaluate(payment(creditor_account="acc_other")).action == "review"


def test_missing_device_is_not_in_lists_and_not_tracked() -> None:
    text = (
        'list devices = ["dev_bad"]\n'
        + rule("dev", "block", "device_id in list devices")
        + rule("dev_velocity", "review", "count(by device_id, 1h) > 1")
    )
    engine = FraudFilter(parse_rules(text))
    for index in range(3):
        facts = payment(device_id=None, at_ms=T0_MS + index)
        assert engine.evaluate(facts).action == "allow"
        engine.record(facts)
    assert engine.evaluate(payment(device_id="dev_bad")).action == "block"


def test_lists_edited_at_runtime_take_effect_immediately() -> None:
    ruleset = load_rules_file(default_rules_path())
    engine = FraudFilter(ruleset)
    assert engine.lists.contains("blocked_accounts", "acc_blocked_demo")  # seeded from the file
    assert engine.evaluate(payment()).action == "allow"
    engine.lists.add("blocked_accounts", "acc_debtor")
    decision = engine.evaluate(payment())
    assert (decision.action, decision.reason_codes) == ("block", ("blocked_debtor",))
    engine.lists.remove("blocked_accounts", "acc_debtor")
    assert engine.evaluate(payment()).action == "allow"
    assert engine.lists.snapshot()["blocked_accounts"] == ["acc_blocked_demo"]
    # Re-activating the file must not undo runtime edits.
    engine.lists.remove("blocked_accounts", "acc_blocked_demo")
    engine.activate(ruleset)
    assert engine.lists.snapshot()["blocked_accounts"] == []


def test_caller_supplied_lists_are_used_and_seeded_only_when_missing() -> None:
    lists = NamedLists({"blocked_accounts": ["acc_debtor"]})
    engine = FraudFilter(load_rules_file(default_rules_path()), lists)
    assert engine.lists is lists
    assert engine.evaluate(payment()).action == "block"
    assert lists.snapshot()["blocked_accounts"] == ["acc_debtor"]  # not merged with the file's demo entry
    assert lists.snapshot()["blocked_devices"] == ["dev_blocked_demo"]  # missing list seeded


def test_activate_swaps_whole_set_and_keeps_shared_windows() -> None:
    old = parse_rules(
        rule("old_velocity", "review", "count(by debtor, 1h) > 2") + rule("old_amount", "block", "amount > 5")
    )
    new = parse_rules(
        rule("new_velocity", "block", "count(by debtor, 1h) > 2")  # same window as before
        + rule("new_device", "review", "count(by device_id, 1h) > 1")  # a window the old set lacked
    )
    engine = FraudFilter(old)
    for index in range(2):
        engine.record(payment(at_ms=T0_MS + index, amount_minor=1))
    assert engine.evaluate(payment(at_ms=T0_MS + 2, amount_minor=1)).reason_codes == ("old_velocity",)
    engine.activate(new)
    assert engine.ruleset is new
    decision = engine.evaluate(payment(at_ms=T0_MS + 2, amount_minor=10))
    # Whole new set: the old amount rule is gone, the debtor window carried over (3rd payment).
    assert (decision.action, decision.reason_codes) == ("block", ("new_velocity",))
    assert [hit.rule_id for hit in decision.hits] == ["new_velocity"]
    # The new device window started empty, so it needs two new recordings to fire.
    engine.record(payment(at_ms=T0_MS + 3, debtor_account="acc_x"))
    assert engine.evaluate(payment(at_ms=T0_MS + 4, debtor_account="acc_y")).reason_codes == ("new_device",)


def test_activate_drops_windows_no_longer_needed() -> None:
    engine = FraudFilter(parse_rules(rule("a", "review", "count(by ip, 1h) > 5")))
    engine.record(payment())
    assert [w["key"] for w in engine.stats()["windows"]] == [["ip"]]
    engine.activate(parse_rules(rule("b", "review", "amount > 5")))
    assert engine.stats()["windows"] == []


def test_max_keys_per_window_evicts_least_recently_updated_key() -> None:
    engine = FraudFilter(parse_rules(rule("v", "review", "count(by debtor, 1h) >= 2")), max_keys_per_window=3)
    for name in ("a", "b", "c"):
        engine.record(payment(debtor_account=name))
    engine.record(payment(debtor_account="a", at_ms=T0_MS + 1))  # 'a' is now the most recent
    engine.record(payment(debtor_account="d", at_ms=T0_MS + 2))  # evicts 'b', the least recent
    stats = engine.stats()["windows"][0]
    assert (stats["keys"], stats["evicted_keys"]) == (3, 1)
    assert engine.evaluate(payment(debtor_account="b", at_ms=T0_MS + 3)).action == "allow"  # forgotten
    assert engine.evaluate(payment(debtor_account="c", at_ms=T0_MS + 3)).action == "review"  # kept


def test_max_events_per_key_drops_oldest_events() -> None:
    text = rule(
        "v",
        "review",
        "count(by debtor, 1h) >= 0 and sum(amount, by debtor, 1h) >= 0 and distinct(creditor, by debtor, 1h) >= 0",
    )
    engine = FraudFilter(parse_rules(text), max_events_per_key=5)
    for index in range(10):
        engine.record(payment(at_ms=T0_MS + index, amount_minor=index, creditor_account=f"c{index}"))
    values = engine.evaluate(payment(at_ms=T0_MS + 10, amount_minor=100, creditor_account="c9")).hits[0].values
    # The last five events (amounts 5..9) plus the current one.
    assert values == {
        "count(by debtor, 1h)": 6,
        "sum(amount, by debtor, 1h)": 5 + 6 + 7 + 8 + 9 + 100,
        "distinct(creditor, by debtor, 1h)": 5,
    }


def test_bad_limits_are_rejected_with_a_message() -> None:
    ruleset = parse_rules(rule("r", "review", "amount > 1"))
    with pytest.raises(ValueError, match="max_keys_per_window"):
        FraudFilter(ruleset, max_keys_per_window=0)
    with pytest.raises(ValueError, match="max_events_per_key"):
        FraudFilter(ruleset, max_events_per_key=0)


def test_default_rules_velocity_and_amounts() -> None:
    engine = FraudFilter(load_rules_file(default_rules_path()))
    assert engine.evaluate(payment(amount_minor=5_000_001)).reason_codes == ("amount_review",)
    assert engine.evaluate(payment(amount_minor=5_000_000)).action == "allow"
    assert engine.evaluate(payment(amount_minor=20_000_001)).action == "block"
    # Sum velocity: 100,000.00 CNY within an hour from one debtor, in 3 payments.
    for index in range(2):
        facts = payment(at_ms=T0_MS + index * 60_000, amount_minor=4_000_000, creditor_account=f"c{index}")
        assert engine.evaluate(facts).action == "allow"
        engine.record(facts)
    decision = engine.evaluate(payment(at_ms=T0_MS + 120_000, amount_minor=2_000_001))
    assert decision.reason_codes == ("debtor_velocity_sum_review",)
    assert decision.hits[0].values["sum(amount, by (debtor, partner), 1h)"] == 10_000_001


AGGREGATE_PROBE = parse_rules(
    rule(
        "probe",
        "review",
        "count(by debtor, 5s) >= 0 and sum(amount, by debtor, 5s) >= 0 and distinct(creditor, by debtor, 5s) >= 0"
        " and distinct(debtor, by (creditor, device_id), 3s) >= 0",
        shadow=True,
    )
)

events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["d1", "d2", "d3"]),
        st.sampled_from(["c1", "c2", "c3", "c4"]),
        st.none() | st.sampled_from(["v1", "v2"]),
        st.integers(0, 3_000),  # ms since the previous payment, often crossing window edges
        st.integers(0, 1_000),
        st.booleans(),  # accepted, i.e. recorded
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, database=None)
@given(events=events_strategy)
def test_aggregates_match_a_brute_force_model(events: list[tuple[str, str, str | None, int, int, bool]]) -> None:
    engine = FraudFilter(AGGREGATE_PROBE)
    recorded: list[PaymentFacts] = []
    at_ms = T0_MS
    for debtor, creditor, device, gap_ms, amount, accepted in events:
        at_ms += gap_ms
        facts = payment(
            debtor_account=debtor, creditor_account=creditor, device_id=device, at_ms=at_ms, amount_minor=amount
        )
        in_5s = [p for p in recorded if p.debtor_account == debtor and p.at_ms > at_ms - 5_000]
        pair_3s = [
            p
            for p in recorded
            if device is not None
            and (p.creditor_account, p.device_id) == (creditor, device)
            and p.at_ms > at_ms - 3_000
        ]
        expected = {
            "count(by debtor, 5s)": len(in_5s) + 1,
            "sum(amount, by debtor, 5s)": sum(p.amount_minor for p in in_5s) + amount,
            "distinct(creditor, by debtor, 5s)": len({p.creditor_account for p in in_5s} | {creditor}),
            "distinct(debtor, by (creditor, device_id), 3s)": len({p.debtor_account for p in pair_3s} | {debtor}),
        }
        decision = engine.evaluate(facts)
        assert decision.action == "allow"
        assert decision.hits[0].values == expected
        if accepted:
            engine.record(facts)
            recorded.append(facts)


def test_generated_aggregator_matches_reference_loop() -> None:
    from fraud.microbench import generated_rules_text, make_payments

    seed = random.randrange(1_000_000)
    engine = FraudFilter(
        parse_rules(generated_rules_text(50, seed=seed)), max_keys_per_window=500, max_events_per_key=20
    )
    active = engine._active
    for facts in make_payments(3_000, seed=seed):
        generated = active.aggregate(facts, engine._pairs)
        assert generated == engine._aggregate_values(facts, active), f"seed={seed}"
        if engine.evaluate(facts).action != "block":
            engine.record(facts)


def test_aggregates_over_one_key_share_one_store() -> None:
    text = (
        rule("a", "review", "count(by debtor, 10m) > 5")
        + rule("b", "review", "sum(amount, by debtor, 1h) > 5")
        + rule("c", "review", "count(by debtor, 10m) > 9")  # same aggregate: same slot
        + rule("d", "review", "distinct(creditor, by device_id, 1h) > 5")
    )
    ruleset = parse_rules(text)
    assert len(ruleset.aggregates) == 3
    engine = FraudFilter(ruleset)
    engine.record(payment())
    windows = engine.stats()["windows"]
    assert [(w["key"], w["windows_s"], w["keys"]) for w in windows] == [
        (["debtor"], [600, 3600], 1),
        (["device_id"], [3600], 1),
    ]


def test_late_events_are_recorded_at_the_newest_time_of_their_key() -> None:
    engine = FraudFilter(parse_rules(rule("v", "review", "count(by debtor, 10s) >= 0", shadow=True)))
    engine.record(payment(at_ms=T0_MS + 5_000))
    engine.record(payment(at_ms=T0_MS))  # arrives late; treated as T0 + 5 s
    values = engine.evaluate(payment(at_ms=T0_MS + 12_000)).hits[0].values
    # Had the late event kept its own time it would have expired at T0 + 10 s.
    assert values == {"count(by debtor, 10s)": 3}
    assert engine.evaluate(payment(at_ms=T0_MS + 15_000)).hits[0].values == {"count(by debtor, 10s)": 1}


def test_named_lists_enforce_their_limits_and_ignore_absent_removals() -> None:
    lists = NamedLists(entries_per_list_max=2, lists_max=2)
    lists.add("a", "x")
    lists.add("a", "y")
    lists.add("a", "y")  # already present: no growth, no error
    with pytest.raises(ValueError, match="full"):
        lists.add("a", "z")
    lists.ensure("b")
    with pytest.raises(ValueError, match="too many lists"):
        lists.ensure("c")
    lists.remove("a", "absent")
    lists.remove("missing_list", "x")
    assert lists.snapshot() == {"a": ["x", "y"], "b": []}
    assert lists.contains("a", "x") and not lists.contains("a", None) and not lists.contains("zzz", "x")


def test_default_rules_weak_signals_only_review_together() -> None:
    engine = FraudFilter(load_rules_file(default_rules_path()))
    night_ms = T0_MS + 4 * 3_600_000  # 02:13 UTC
    # Fan out to 10 creditors within the hour (the 11th distinct creditor is the trigger).
    for index in range(10):
        facts = payment(at_ms=T0_MS + index * 1_000, creditor_account=f"c{index}")
        assert engine.evaluate(facts).action == "allow"
        engine.record(facts)
    fan_out_only = engine.evaluate(payment(at_ms=T0_MS + 20_000, creditor_account="c_new"))
    assert (fan_out_only.action, fan_out_only.score) == ("allow", 30)
    assert [hit.rule_id for hit in fan_out_only.hits] == ["debtor_fan_out_signal"]
    night_only = engine.evaluate(payment(at_ms=night_ms, creditor_account="c_new", amount_minor=1_000_001))
    assert (night_only.action, night_only.score) == ("allow", 20)
    for index in range(10):
        engine.record(payment(at_ms=night_ms - 60_000 + index, creditor_account=f"n{index}"))
    both = engine.evaluate(payment(at_ms=night_ms, creditor_account="c_new", amount_minor=1_000_001))
    assert (both.action, both.score) == ("review", 50)
    assert both.reason_codes == ("debtor_fan_out_signal", "first_payment_large_night_signal")


def test_a_window_sum_past_int64_is_recorded_exactly_and_storably() -> None:
    """Found by the soak: two payments of the int64 maximum made the window's sum pass int64,
    the decision could not be stored, and the payment was answered 400 (blaming the request)
    instead of its business answer. The explanation keeps the sum exact, as a string."""
    from ledger.storable import check_value

    int64_max = 2**63 - 1
    engine = FraudFilter(parse_rules(rule("big", "review", "sum(amount, by debtor, 1h) > 0")))
    engine.record(payment(transfer_id="tr_0", amount_minor=int64_max))
    decision = engine.evaluate(payment(amount_minor=int64_max))
    data = decision.to_dict()
    assert data["reasons"][0]["values"]["sum(amount, by debtor, 1h)"] == str(2 * int64_max)
    check_value(data, "transfers.fraud")  # raised NotStorable before
    assert json.loads(json.dumps(data)) == data


def test_first_payment_pairs_move_through_the_accessors_within_their_bound() -> None:
    """What ledger/slot_move.py uses to take a slot's fraud state out and put it back."""
    engine = FraudFilter(load_rules_file(default_rules_path()), max_first_payment_pairs=2)
    assert engine.window_stores()  # the default rules read windows
    with pytest.raises(TypeError):
        engine.window_stores()[("x",)] = None  # type: ignore[index]
    engine.add_first_payment_pair(("acc_1", "c"))
    engine.add_first_payment_pair(("acc_2", "c"))
    engine.add_first_payment_pair(("acc_1", "c"))  # paid again: most recent
    engine.add_first_payment_pair(("acc_3", "c"))  # over the bound: the least recent goes
    assert engine.first_payment_pairs() == [("acc_1", "c"), ("acc_3", "c")]
    engine.forget_first_payment_pair(("acc_1", "c"))
    engine.forget_first_payment_pair(("acc_9", "c"))  # not held: nothing happens
    assert engine.first_payment_pairs() == [("acc_3", "c")]
