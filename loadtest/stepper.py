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

__all__ = ["REFINEMENTS_MAX", "RESOLUTION_DEFAULT", "StepResult", "check_gates", "find_max_sustained", "knee"]

# The knee is found to within this share of the best passing rate (issue 19: <= 10%),
# with at most REFINEMENTS_MAX extra steps (x2 steps need 3: 2 -> 1.41 -> 1.19 -> 1.09).
RESOLUTION_DEFAULT = 0.10
REFINEMENTS_MAX = 4


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
    resolution: float = RESOLUTION_DEFAULT,
    refinements_max: int = REFINEMENTS_MAX,
) -> tuple[float, list[StepResult]]:
    """Step the offered rate up until a gate fails; return (best passing rate, all steps).

    Rates are ``steps`` if given, else ``start_rate * step_factor**k`` up to ``rate_max``;
    at most ``steps_max`` steps, then refinements: the geometric middle of the best passing
    rate and the first failing one is measured, and the search goes on in the half that
    holds the knee, until the failing rate is within ``resolution`` (10%) of the passing one
    or ``refinements_max`` refinements were made. The best rate is 0.0 when even the
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
    refinements = 0
    while (
        refine
        and first_bad is not None
        and best_rate > 0
        and refinements < refinements_max
        and first_bad > best_rate * (1 + resolution)
    ):
        # Geometric midpoint: rates are stepped by a factor, so the middle is multiplicative.
        middle = math.sqrt(best_rate * first_bad)
        if not best_rate < middle < first_bad:
            break
        step = measure(middle, refinement=True)
        results.append(step)
        refinements += 1
        if step.passed:
            best_rate = middle
        else:
            first_bad = middle
    return best_rate, results


def knee(best_rate: float, steps: Sequence[StepResult]) -> dict[str, Any]:
    """Where the search ended: the best passing rate, the lowest failing rate above it and
    why it failed (its gates), and the resolution reached (failing ÷ passing - 1)."""
    failing = sorted((s for s in steps if not s.passed and s.offered_per_s > best_rate), key=lambda s: s.offered_per_s)
    first = failing[0] if failing else None
    return {
        "best_rate_per_s": best_rate,
        "first_failed_rate_per_s": first.offered_per_s if first else None,
        "first_failed_gates": list(first.failed_gates) if first else [],
        "resolution": round(first.offered_per_s / best_rate - 1, 3) if first and best_rate else None,
    }
