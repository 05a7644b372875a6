"""The target profiles' pure logic (loadtest.targets): schedule, hold window, gates, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.targets import PROFILES, Schedule, evaluate, hold_counts, items_ok_in, summary_text, write_summary


def test_profiles_are_the_seeds_figures() -> None:
    assert {name: (p.kind, p.target_payments_per_s) for name, p in PROFILES.items()} == {
        "core-14k": ("single", 14_000.0),
        "quickpay-30k": ("batch", 30_000.0),
        "quickpay-50k": ("batch", 50_000.0),
    }


def test_fifty_thousand_per_second_is_fifty_batch_requests() -> None:
    s = Schedule(PROFILES["quickpay-50k"])
    assert s.target_requests_per_s == 50.0
    assert s.users_at_target == 50 and s.user_pace_at_target() == 1.0


def test_single_profile_users_offer_exactly_the_target() -> None:
    s = Schedule(PROFILES["core-14k"], user_requests_per_s=30.0)
    assert s.users_at_target == 467  # ceil(14000 / 30)
    assert s.users_at_target * s.user_pace_at_target() == pytest.approx(14_000.0)


def test_ramp_hold_stop() -> None:
    s = Schedule(PROFILES["quickpay-50k"], ramp_s=10.0, hold_s=5.0)
    assert s.users_at(0.0) == 1
    assert s.users_at(5.0) == 25
    assert s.users_at(10.0) == 50 and s.in_hold(10.0)
    assert s.users_at(14.9) == 50
    assert s.users_at(15.0) is None and not s.in_hold(15.0)
    assert not s.in_hold(9.99)
    with pytest.raises(ValueError):
        s.users_at(-1.0)


def test_scaled_profile_for_tests() -> None:
    s = Schedule(PROFILES["quickpay-30k"], scale=0.01, batch_items=100)
    assert s.target_payments_per_s == pytest.approx(300.0)
    assert s.target_requests_per_s == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ramp_s": -1},
        {"hold_s": 0},
        {"scale": 0},
        {"scale": 11},
        {"batch_items": 0},
        {"batch_items": 1001},
        {"user_requests_per_s": 0.0001 - 1},
        {"user_requests_per_s": 0.001, "scale": 10},
    ],
)
def test_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Schedule(PROFILES["core-14k"], **kwargs)  # type: ignore[arg-type]


def test_items_ok_counts_item_statuses_not_payment_statuses() -> None:
    body = (
        b'{"results":[{"status":201,"payment":{"payment_id":"p","status":"AcceptedSettlementCompleted"},'
        b'"replayed":false},{"status":422,"error":{"code":"x","message":"m","errors":[]}},'
        b'{"status":201,"payment":{"status":"Rejected"},"replayed":true}]}'
    )
    assert items_ok_in(body) == (2, 3)
    assert items_ok_in(b"") == (0, 0)


def test_hold_counts_whole_seconds_inside_the_hold() -> None:
    buckets = {99: [1000, 0], 100: [10, 1], 101: [20, 0], 102: [30, 0], 103: [5000, 0]}
    # hold from 99.5 to 103.2: seconds 100, 101, 102
    assert hold_counts(buckets, 99.5, 103.2) == (60, 1, 3.0)
    assert hold_counts(buckets, 103.5, 103.9) == (0, 0, 0.0)


def test_evaluate_and_summary(tmp_path: Path) -> None:
    s = Schedule(PROFILES["quickpay-50k"], ramp_s=20, hold_s=30)
    met = evaluate(
        s, hold_elapsed_s=30, payments_ok=1_470_000, payments_failed=0, p99_ms=80.0, cpu_count=2, worker_processes=4
    )
    assert met["met"] and met["achieved_payments_per_s"] == 49_000.0
    slow = evaluate(s, hold_elapsed_s=30, payments_ok=1_470_000, payments_failed=0, p99_ms=180.0)
    assert not slow["met"] and not slow["gates"]["p99"]["ok"] and slow["gates"]["rate"]["ok"]
    short = evaluate(s, hold_elapsed_s=30, payments_ok=900_000, payments_failed=0, p99_ms=50.0)
    assert not short["gates"]["rate"]["ok"]
    failing = evaluate(s, hold_elapsed_s=30, payments_ok=1_470_000, payments_failed=2_000, p99_ms=50.0)
    assert not failing["gates"]["failures"]["ok"]
    nothing = evaluate(s, hold_elapsed_s=0, payments_ok=0, payments_failed=0, p99_ms=None)
    assert not nothing["met"] and not nothing["gates"]["failures"]["ok"] and not nothing["gates"]["p99"]["ok"]
    text = summary_text(met)
    assert text.startswith("quickpay target quickpay-50k: MET") and "4 Locust worker process(es)" in text
    assert "MISS  p99" in summary_text(slow)
    path = tmp_path / "t.json"
    write_summary(met, str(path))
    assert json.loads(path.read_text())["gates"]["rate"]["ok"] is True
