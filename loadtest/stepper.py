"""Find the highest offered rate the system sustains within its gates.

Pure logic: the caller passes ``run_at_rate`` (usually a closure around
``loadtest.generator.run_load``), so the search is unit-tested with a fake. A step passes when
p99 <= ``p99_ms_max``, the error ratio is below ``error_rate_max`` and the achieved
throughput is at least ``achieved_ratio_min`` of the offered rate. The rate goes up step by
step until a step fails; then, optionally, one more step between the last good and the first
bad rate refines the answer.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["StepResult", "check_gates", "find_max_sustained"]


class _Measured(Protocol):
    """The fields of ``loadtest.generator.LoadResult`` that the gates read."""

    sent: int
    errors: int
    p99_ms: float
    achieved_per_s: float


@dataclasses.dataclass
class StepResult:
    offered_per_s: float
    result: Any
    passed: bool
    failed_gates: list[str]
    refinement: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (plots and JSON reports read it); the histogram is left out."""
        if hasattr(self.result, "to_dict"):
            data = dict(self.result.to_dict(include_histogram=False))
        elif dataclasses.is_dataclass(self.result) and not isinstance(self.result, type):
            data = dataclasses.asdict(self.result)
        else:
            data = dict(vars(self.result))
        data.pop("histogram_encoded", None)
        data.update(
            offered_per_s=self.offered_per_s,
            passed=self.passed,
            failed_gates=list(self.failed_gates),
            refinement=self.refinement,
        )
        return data


def check_gates(
    offered_per_s: float,
    result: _Measured,
    *,
    p99_ms_max: float = 25.0,
    error_rate_max: float = 0.001,
    achieved_ratio_min: float = 0.95,
) -> list[str]:
    """Return a description of every gate the step missed (empty when it passed)."""
    failed = []
    if result.sent <= 0:
        return ["no requests were sent"]
    error_ratio = result.errors / result.sent
    if error_ratio >= error_rate_max:
        failed.append(f"error ratio {error_ratio:.4%} >= {error_rate_max:.4%}")
    if result.p99_ms > p99_ms_max:
        failed.append(f"p99 {result.p99_ms:.2f} ms > {p99_ms_max:.2f} ms")
    achieved_ratio = result.achieved_per_s / offered_per_s
    if achieved_ratio < achieved_ratio_min:
        failed.append(
            f"achieved {result.achieved_per_s:.0f}/s is {achieved_ratio:.1%} of offered "
            f"{offered_per_s:.0f}/s (< {achieved_ratio_min:.0%})"
        )
    return failed


def _rates(
    start_rate: float, step_factor: float, steps: Sequence[float] | None, rate_max: float, steps_max: int
) -> list[float]:
    if steps is not None:
        rates = [float(rate) for rate in steps]
        if any(b <= a for a, b in itertools.pairwise(rates)) or not rates or rates[0] <= 0:
            raise ValueError("steps must be positive and strictly increasing")
        return rates[:steps_max]
    if start_rate <= 0:
        raise ValueError("start_rate must be > 0")
    if step_factor <= 1.0:
        raise ValueError("step_factor must be > 1")
    rates = []
    rate = start_rate
    while len(rates) < steps_max and rate <= rate_max:
        rates.append(rate)
        rate *= step_factor
    return rates


def find_max_sustained(
    run_at_rate: Callable[[float], _Measured],
    start_rate: float = 1000.0,
    *,
    step_factor: float = 1.5,
    steps: Sequence[float] | None = None,
    rate_max: float = math.inf,
    steps_max: int = 20,
    p99_ms_max: float = 25.0,
    error_rate_max: float = 0.001,
    achieved_ratio_min: float = 0.95,
    refine: bool = True,
    confirm_miss: bool = False,
    on_step: Callable[[StepResult], None] | None = None,
) -> tuple[float, list[StepResult]]:
    """Step the offered rate up until a gate fails; return (best passing rate, all steps).

    Rates are ``steps`` if given, else ``start_rate * step_factor**k`` up to ``rate_max``;
    at most ``steps_max`` steps (plus one refinement). The best rate is 0.0 when even the
    first step fails. ``on_step`` is called after every step (for progress output).
    With ``confirm_miss`` a step that misses a gate is run once more at the same rate
    before the search ends: on a shared 2-core machine one stall can push a short step's
    p99 over the gate. Both attempts are returned; a rate counts only if an attempt passed.
    """
    if steps_max < 1:
        raise ValueError("steps_max must be >= 1")
    gates = {
        "p99_ms_max": p99_ms_max,
        "error_rate_max": error_rate_max,
        "achieved_ratio_min": achieved_ratio_min,
    }

    def measure(rate: float, refinement: bool) -> StepResult:
        result = run_at_rate(rate)
        failed = check_gates(rate, result, **gates)
        step = StepResult(rate, result, not failed, failed, refinement)
        if on_step is not None:
            on_step(step)
        return step

    results: list[StepResult] = []
    best_rate = 0.0
    first_bad: float | None = None
    for rate in _rates(start_rate, step_factor, steps, rate_max, steps_max):
        step = measure(rate, refinement=False)
        results.append(step)
        if not step.passed and confirm_miss:
            step = measure(rate, refinement=False)
            results.append(step)
        if not step.passed:
            first_bad = rate
            break
        best_rate = rate
    if refine and first_bad is not None and best_rate > 0:
        # Geometric midpoint: rates are stepped by a factor, so the middle is multiplicative.
        middle = math.sqrt(best_rate * first_bad)
        if best_rate < middle < first_bad:
            step = measure(middle, refinement=True)
            results.append(step)
            if step.passed:
                best_rate = middle
    return best_rate, results
