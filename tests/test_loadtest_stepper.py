"""The rate search stops at the first step that misses a gate and refines until the knee is
known to within 10% (at most REFINEMENTS_MAX extra steps).

Uses a fake ``run_at_rate`` that models a server with a fixed capacity, so no I/O.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from loadtest.stepper import RESOLUTION_DEFAULT, StepResult, check_gates, find_max_sustained, knee


@dataclasses.dataclass
class FakeResult:
    sent: int
    errors: int
    p99_ms: float
    achieved_per_s: float


def server_with_capacity(capacity: float, error_from: float = math.inf):
    calls: list[float] = []

    def run_at_rate(rate: float) -> FakeResult:
        calls.append(rate)
        sent = int(rate * 10)
        errors = sent // 100 if rate >= error_from else 0
        if rate <= capacity:
            return FakeResult(sent, errors, 3.0, rate)
        return FakeResult(sent, errors, 400.0, capacity)

    return run_at_rate, calls


def test_steps_up_until_a_gate_fails_then_refines_between():
    run, calls = server_with_capacity(6000)
    best, steps = find_max_sustained(run, 1000, step_factor=2)
    m1 = math.sqrt(4000 * 8000)  # 5657: passes
    m2 = math.sqrt(m1 * 8000)  # 6727: fails
    m3 = math.sqrt(m1 * m2)  # 6169: fails, and 6169 / 5657 < 1.10
    assert calls == [1000, 2000, 4000, 8000, m1, m2, m3]
    assert best == m1
    assert [step.passed for step in steps] == [True, True, True, False, True, False, False]
    assert all(step.refinement for step in steps[4:])
    assert any("p99" in gate for gate in steps[3].failed_gates)
    assert any("achieved" in gate for gate in steps[3].failed_gates)
    found = knee(best, steps)
    assert found["first_failed_rate_per_s"] == m3 and found["resolution"] <= RESOLUTION_DEFAULT
    assert any("p99" in gate for gate in found["first_failed_gates"])
    assert 5000 < best <= 6000  # the capacity, to within the resolution


def test_failed_refinement_keeps_the_last_good_rate():
    run, _ = server_with_capacity(5000)
    best, steps = find_max_sustained(run, 1000, step_factor=2)
    assert 4000 <= best <= 5000 and best * (1 + RESOLUTION_DEFAULT) >= knee(best, steps)["first_failed_rate_per_s"]
    assert not steps[-1].passed and steps[-1].refinement


def test_refinements_are_bounded():
    run, calls = server_with_capacity(6000)
    best, steps = find_max_sustained(run, 1000, step_factor=2, resolution=0.0001, refinements_max=2)
    assert len(calls) == 4 + 2 and sum(step.refinement for step in steps) == 2
    assert knee(best, steps)["resolution"] > 0.0001  # it stopped at the bound, not the resolution


def test_error_gate_and_explicit_steps():
    run, calls = server_with_capacity(1e9, error_from=3000)
    best, steps = find_max_sustained(run, steps=[1000, 2000, 3000, 4000], refine=False)
    assert calls == [1000, 2000, 3000]
    assert best == 2000
    assert steps[-1].failed_gates == ["error ratio 1.0000% >= 0.1000%"]


def test_first_step_failing_gives_zero_and_rate_max_bounds_the_sweep():
    run, _ = server_with_capacity(10)
    best, steps = find_max_sustained(run, 1000)
    assert best == 0.0 and len(steps) == 1
    run, calls = server_with_capacity(1e9)
    best, steps = find_max_sustained(run, 1000, step_factor=2, rate_max=5000)
    assert calls == [1000, 2000, 4000] and best == 4000


def test_gates_and_reports():
    assert check_gates(100, FakeResult(1000, 0, 25.0, 95.0)) == []
    assert check_gates(100, FakeResult(0, 0, 0, 0)) == ["no requests were sent"]
    assert len(check_gates(100, FakeResult(1000, 1, 25.1, 94.0))) == 3
    step = StepResult(100, FakeResult(1000, 0, 1.0, 100.0), True, [])
    assert step.to_dict() == {
        "sent": 1000,
        "errors": 0,
        "p99_ms": 1.0,
        "achieved_per_s": 100.0,
        "offered_per_s": 100,
        "passed": True,
        "failed_gates": [],
        "refinement": False,
    }


def test_bad_arguments_are_rejected():
    run, _ = server_with_capacity(1)
    with pytest.raises(ValueError, match="step_factor"):
        find_max_sustained(run, 100, step_factor=1.0)
    with pytest.raises(ValueError, match="increasing"):
        find_max_sustained(run, steps=[200, 100])
