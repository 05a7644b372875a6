"""MonitorEngine: fan-in raises one alert per creditor episode (and a new one only
after the episode ends), pass-through fires when an account forwards most of what it
received, alert ids are deterministic across restarts, state snapshots resume
exactly, exempt accounts are ignored and memory stays bounded."""

from __future__ import annotations

import json

import pytest

from fraud import Alert, MonitorEngine, TransferEvent
from fraud.monitor import alert_id_for

T0_MS = 1_700_000_000_000
CONFIG = {
    "fan_in_distinct_debtors": 3,
    "fan_in_window_s": 60,
    "pass_through_window_s": 600,
    "pass_through_ratio_pct": 80,
}


class Feed:
    def __init__(self) -> None:
        self.seq = 0

    def event(self, debit: str, credit: str, amount_minor: int, at_ms: int) -> TransferEvent:
        self.seq += 1
        return TransferEvent(0, self.seq, f"tr_{self.seq}", debit, credit, amount_minor, at_ms)


def fan_in_events() -> list[TransferEvent]:
    feed = Feed()
    events = [feed.event(f"acc_d{i}", "acc_mule", 100, T0_MS + i * 1_000) for i in range(6)]
    events.append(feed.event("acc_d0", "acc_mule", 100, T0_MS + 6_000))  # repeat debtor
    # Quiet for longer than the window, then a second burst: a new episode.
    events += [feed.event(f"acc_e{i}", "acc_mule", 100, T0_MS + 200_000 + i * 1_000) for i in range(3)]
    return events


def run(engine: MonitorEngine, events: list[TransferEvent]) -> list[Alert]:
    return [alert for event in events for alert in engine.process(event)]


def test_fan_in_alerts_once_per_episode() -> None:
    alerts = [a for a in run(MonitorEngine(**CONFIG), fan_in_events()) if a.rule == "fan_in"]
    assert [(a.account, a.details["triggering_transfer_id"]) for a in alerts] == [
        ("acc_mule", "tr_3"),
        ("acc_mule", "tr_10"),
    ]
    assert alerts[0].details["distinct_debtors"] == 3
    assert alerts[0].alert_id == alert_id_for("fan_in", "acc_mule", "tr_3")
    assert alerts[0].at_ms == T0_MS + 2_000


def test_fan_in_window_edge_is_exclusive() -> None:
    feed = Feed()
    engine = MonitorEngine(**CONFIG)
    assert engine.process(feed.event("a", "mule", 1, T0_MS)) == []
    assert engine.process(feed.event("b", "mule", 1, T0_MS + 1)) == []
    # Exactly 60 s after the first debtor: it is out of the window, only 2 distinct.
    assert [a.rule for a in engine.process(feed.event("c", "mule", 1, T0_MS + 60_000))] == []
    assert [a.rule for a in engine.process(feed.event("d", "mule", 1, T0_MS + 60_000))] == ["fan_in"]


def test_alert_ids_are_deterministic_across_restarts() -> None:
    first = run(MonitorEngine(**CONFIG), fan_in_events())
    again = run(MonitorEngine(**CONFIG), fan_in_events())
    assert [a.alert_id for a in first] == [a.alert_id for a in again]
    assert len({a.alert_id for a in first}) == len(first)
    assert all(a.alert_id.startswith("al_") and len(a.alert_id) == 35 for a in first)


def test_state_snapshot_resumes_exactly() -> None:
    events = fan_in_events()
    uninterrupted = run(MonitorEngine(**CONFIG), events)
    engine = MonitorEngine(**CONFIG)
    before = run(engine, events[:4])
    snapshot = json.loads(json.dumps(engine.state_dict()))
    resumed = MonitorEngine.from_state(snapshot, **CONFIG)
    after = run(resumed, events[4:])
    assert [a.alert_id for a in before + after] == [a.alert_id for a in uninterrupted]


def test_pass_through_alerts_when_most_money_is_forwarded() -> None:
    feed = Feed()
    engine = MonitorEngine(**CONFIG)
    assert engine.process(feed.event("acc_victim", "acc_relay", 10_000, T0_MS)) == []
    assert engine.process(feed.event("acc_relay", "acc_out1", 5_000, T0_MS + 60_000)) == []  # 50 %
    alerts = engine.process(feed.event("acc_relay", "acc_out2", 3_000, T0_MS + 120_000))  # 80 %
    assert [(a.rule, a.account) for a in alerts] == [("pass_through", "acc_relay")]
    assert alerts[0].details["inflow_minor"] == 10_000 and alerts[0].details["outflow_minor"] == 8_000
    assert alerts[0].alert_id == alert_id_for("pass_through", "acc_relay", "tr_3")
    # Still in the same episode: no second alert.
    assert engine.process(feed.event("acc_relay", "acc_out3", 2_000, T0_MS + 130_000)) == []


def test_pass_through_ignores_outflows_before_inflow_and_outside_window() -> None:
    engine = MonitorEngine(**CONFIG)
    feed = Feed()
    # Paying out before receiving is not pass-through, even though 9,000 >= 80 % of 10,000.
    assert engine.process(feed.event("acc_relay", "acc_out", 9_000, T0_MS)) == []
    assert engine.process(feed.event("acc_victim", "acc_relay", 10_000, T0_MS + 1_000)) == []
    assert engine.process(feed.event("acc_relay", "acc_out", 1_000, T0_MS + 2_000)) == []  # 10 %
    # After the window the inflow is forgotten and an outflow alone never alerts.
    assert engine.process(feed.event("acc_relay", "acc_out", 9_000, T0_MS + 601_000)) == []


def test_exempt_accounts_are_ignored() -> None:
    engine = MonitorEngine(**CONFIG, exempt_accounts={"acc_settlement"})
    feed = Feed()
    alerts = run(engine, [feed.event(f"acc_d{i}", "acc_settlement", 100, T0_MS + i) for i in range(5)])
    alerts += engine.process(feed.event("acc_settlement", "acc_bank", 500, T0_MS + 10))
    assert alerts == []


def test_memory_is_bounded_by_max_accounts() -> None:
    engine = MonitorEngine(**CONFIG, max_accounts=10, max_events_per_account=5)
    feed = Feed()
    for i in range(100):
        engine.process(feed.event(f"acc_d{i}", f"acc_c{i}", 1, T0_MS + i))
    state = engine.state_dict()
    assert len(state["fan_in"]) == 10 and len(state["flows"]) == 10
    assert [row[0] for row in state["fan_in"]] == [f"acc_c{i}" for i in range(90, 100)]
    for i in range(20):
        engine.process(feed.event(f"acc_x{i}", "acc_c99", 1, T0_MS + 200 + i))
    state = engine.state_dict()
    row = next(row for row in state["fan_in"] if row[0] == "acc_c99")
    assert len(row[1]) == 5


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="fan_in_distinct_debtors"):
        MonitorEngine(**{**CONFIG, "fan_in_distinct_debtors": 1})
    with pytest.raises(ValueError, match="pass_through_ratio_pct"):
        MonitorEngine(**{**CONFIG, "pass_through_ratio_pct": 0})


def test_refunds_are_their_own_kind() -> None:
    """A refund is no distinct debtor for fan-in, but it is money in for pass-through."""
    engine = MonitorEngine(**CONFIG)
    feed = Feed()

    def refund(settlement: str, customer: str, amount_minor: int, at_ms: int) -> TransferEvent:
        feed.seq += 1
        return TransferEvent(0, feed.seq, f"ref_{feed.seq}", settlement, customer, amount_minor, at_ms, kind="refund")

    # Refunds from three partners within the window: as payments they would be a fan-in.
    alerts = [a for i in range(3) for a in engine.process(refund(f"set_p{i}", "acc_c", 100, T0_MS + i))]
    assert alerts == []
    as_payments = MonitorEngine(**CONFIG)
    assert [
        a.rule
        for i in range(3)
        for a in as_payments.process(TransferEvent(0, i, f"tr_{i}", f"set_p{i}", "acc_c", 100, T0_MS + i))
    ] == ["fan_in"]
    # The customer forwards what the refunds returned: pass-through.
    (alert,) = engine.process(feed.event("acc_c", "acc_out", 290, T0_MS + 10_000))
    assert alert.rule == "pass_through" and alert.account == "acc_c"
    assert alert.details["inflow_minor"] == 300 and alert.details["outflow_minor"] == 290
