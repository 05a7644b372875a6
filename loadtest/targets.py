"""The seeds' throughput targets as Locust load profiles: schedule, gates and summary.

Pure logic (no Locust import, so pytest can import it without gevent): the Locust side is
``loadtest/locust_targets.py``.

Profiles (the bank's published figures, ../shared/anchors.md):
  core-14k      14,000 single quick-payments/s (the bank's core system)
  quickpay-30k  30,000 payments/s through the batch endpoint (quick-pay, low end)
  quickpay-50k  50,000 payments/s through the batch endpoint (quick-pay, high end):
                with 1,000 items per request that is 50 requests/s
Each ramps linearly to its target over ``ramp_s`` and holds it for ``hold_s``; only the hold
is judged: achieved payments/s >= ``rate_fraction_min`` x target, p99 of the requests <= the
profile's bound, failed payments < ``fail_ratio_max``. ``scale`` multiplies the target (tests
run a profile scaled down to a few payments per second).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PROFILES", "Profile", "Schedule", "evaluate", "hold_counts", "items_ok_in", "summary_text", "write_summary"]


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str  # "single": POST /v1/quick-payments; "batch": POST /v1/quick-payments/batch
    target_payments_per_s: float
    p99_ms_max: float
    user_requests_per_s: float  # each constant-throughput user's pace

    def __post_init__(self) -> None:
        if self.kind not in ("single", "batch"):
            raise ValueError(f"unknown profile kind {self.kind!r}")


PROFILES: dict[str, Profile] = {
    "core-14k": Profile("core-14k", "single", 14_000.0, 25.0, 20.0),
    "quickpay-30k": Profile("quickpay-30k", "batch", 30_000.0, 100.0, 1.0),
    "quickpay-50k": Profile("quickpay-50k", "batch", 50_000.0, 100.0, 1.0),
}
RAMP_S_MAX = 3_600.0
HOLD_S_MAX = 86_400.0
USERS_MAX = 100_000


@dataclass(frozen=True)
class Schedule:
    """Users over time for one profile: ramp, hold, stop."""

    profile: Profile
    ramp_s: float = 20.0
    hold_s: float = 30.0
    scale: float = 1.0
    batch_items: int = 1_000
    user_requests_per_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.ramp_s <= RAMP_S_MAX:
            raise ValueError(f"ramp must be between 0 and {RAMP_S_MAX:g} s")
        if not 0 < self.hold_s <= HOLD_S_MAX:
            raise ValueError(f"hold must be > 0 and <= {HOLD_S_MAX:g} s")
        if not 0 < self.scale <= 10:
            raise ValueError("scale must be > 0 and <= 10")
        if not 1 <= self.batch_items <= 1_000:
            raise ValueError("batch items must be between 1 and 1000 (the endpoint's maximum)")
        if self.user_requests_per_s is not None and not 0 < self.user_requests_per_s <= 1_000:
            raise ValueError("requests per user must be > 0 and <= 1000 per second")
        if self.users_at_target > USERS_MAX:
            raise ValueError(f"the profile needs {self.users_at_target} users (> {USERS_MAX}); raise the pace per user")

    @property
    def target_payments_per_s(self) -> float:
        return self.profile.target_payments_per_s * self.scale

    @property
    def payments_per_request(self) -> int:
        return self.batch_items if self.profile.kind == "batch" else 1

    @property
    def target_requests_per_s(self) -> float:
        return self.target_payments_per_s / self.payments_per_request

    @property
    def pace(self) -> float:
        """Requests per second per user (the last user may be paced slower, see users_at)."""
        return self.user_requests_per_s or self.profile.user_requests_per_s

    @property
    def users_at_target(self) -> int:
        return max(1, math.ceil(self.target_requests_per_s / self.pace))

    def users_at(self, run_time_s: float) -> int | None:
        """Users wanted `run_time_s` into the run; None once the hold is over (stop)."""
        if run_time_s < 0:
            raise ValueError("run time cannot be negative")
        if run_time_s >= self.ramp_s + self.hold_s:
            return None
        if run_time_s < self.ramp_s:
            return max(1, math.ceil(self.users_at_target * run_time_s / self.ramp_s))
        return self.users_at_target

    def in_hold(self, run_time_s: float) -> bool:
        return self.ramp_s <= run_time_s < self.ramp_s + self.hold_s

    def user_pace_at_target(self) -> float:
        """Per-user requests/s so that users_at_target users offer exactly the target."""
        return self.target_requests_per_s / self.users_at_target


_ITEM_STATUS = re.compile(rb'\{"status":([0-9]{3}),')


def items_ok_in(body: bytes) -> tuple[int, int]:
    """(items answered 201, items in all) of a batch answer, without parsing the JSON: the
    gateway writes compact JSON and every item result starts with its numeric HTTP status
    (a payment resource's own "status" is a string, so it never matches)."""
    statuses = _ITEM_STATUS.findall(body)
    return sum(1 for status in statuses if status == b"201"), len(statuses)


def hold_counts(buckets: dict[int, list[int]], started: float, ended: float) -> tuple[int, int, float]:
    """(ok, failed, seconds) over the whole seconds inside [started, ended)."""
    first, last = math.ceil(started), math.floor(ended)
    ok = sum(counts[0] for second, counts in buckets.items() if first <= second < last)
    failed = sum(counts[1] for second, counts in buckets.items() if first <= second < last)
    return ok, failed, float(max(0, last - first))


def evaluate(
    schedule: Schedule,
    *,
    hold_elapsed_s: float,
    payments_ok: int,
    payments_failed: int,
    p99_ms: float | None,
    rate_fraction_min: float = 0.95,
    p99_ms_max: float | None = None,
    fail_ratio_max: float = 0.001,
    cpu_count: int | None = None,
    worker_processes: int = 1,
) -> dict[str, Any]:
    """Judge the hold: the result dict the summary, the JSON file and the exit code use."""
    p99_bound = p99_ms_max if p99_ms_max is not None else schedule.profile.p99_ms_max
    target = schedule.target_payments_per_s
    achieved = payments_ok / hold_elapsed_s if hold_elapsed_s > 0 else 0.0
    total = payments_ok + payments_failed
    fail_ratio = payments_failed / total if total else 1.0
    gates = {
        "rate": {
            "ok": achieved >= rate_fraction_min * target,
            "text": f"achieved {achieved:,.0f} payments/s >= {rate_fraction_min:.0%} of {target:,.0f}",
        },
        "p99": {
            "ok": p99_ms is not None and p99_ms <= p99_bound,
            "text": f"p99 {p99_ms if p99_ms is not None else float('nan'):.0f} ms <= {p99_bound:g} ms",
        },
        "failures": {
            "ok": total > 0 and fail_ratio < fail_ratio_max,
            "text": f"failed payments {fail_ratio:.4%} < {fail_ratio_max:.2%}",
        },
    }
    return {
        "profile": schedule.profile.name,
        "kind": schedule.profile.kind,
        "target_payments_per_s": target,
        "scale": schedule.scale,
        "payments_per_request": schedule.payments_per_request,
        "achieved_payments_per_s": round(achieved, 1),
        "achieved_fraction": round(achieved / target, 4),
        "p99_ms": p99_ms,
        "p99_ms_max": p99_bound,
        "payments_ok": payments_ok,
        "payments_failed": payments_failed,
        "fail_ratio": round(fail_ratio, 6),
        "hold_s": round(hold_elapsed_s, 1),
        "ramp_s": schedule.ramp_s,
        "users": schedule.users_at_target,
        "cpu_count": cpu_count,
        "worker_processes": worker_processes,
        "gates": gates,
        "met": all(g["ok"] for g in gates.values()),
        "schedule": {k: v for k, v in asdict(schedule).items() if k != "profile"},
    }


def summary_text(result: dict[str, Any]) -> str:
    verdict = "MET" if result["met"] else "MISSED"
    lines = [
        f"quickpay target {result['profile']}: {verdict} -- {result['achieved_payments_per_s']:,.0f} of "
        f"{result['target_payments_per_s']:,.0f} payments/s ({result['achieved_fraction']:.1%}), p99 "
        f"{result['p99_ms'] if result['p99_ms'] is not None else float('nan'):.0f} ms, failed "
        f"{result['fail_ratio']:.4%}; {result['cpu_count']} cores, {result['worker_processes']} Locust "
        f"worker process(es), {result['payments_per_request']} payment(s) per request"
    ]
    for name, gate in result["gates"].items():
        lines.append(f"  {'pass' if gate['ok'] else 'MISS'}  {name}: {gate['text']}")
    return "\n".join(lines)


def write_summary(result: dict[str, Any], path: str) -> None:
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
