"""Agreements (mandates): the consent lifecycle and the periodic limits. Pure: no I/O, no clock.

An agreement is created AwaitingAuthorisation by a partner; the customer decides
through the bank (authorise or reject), and later may suspend, resume or revoke it;
the partner may revoke it. Past `valid_to` it reads as Expired (derived from the
time of the question, never stored). Every transition is decided here, from the
stored status and the time the caller passes in, so the shard worker's batcher and
the tests decide alike.

Periodic limits follow Open Banking VRP's PeriodicLimits: a period (Day, Week, Month,
Year) and an alignment: Calendar windows start at UTC calendar boundaries (weeks on
Monday), Consent windows at the agreement's anchor (`valid_from`, else its creation)
and repeat every period from there; a month after the 31st is the last day of a
shorter month (Jan 31 -> Feb 28 or 29 -> Mar 31), a year after Feb 29 is Feb 28.
Spend is what accepted payments took from a window; refunds do not give it back.
"""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass
from typing import Any

from kernel.limits import MS_PER_DAY, PENDING_EXPIRY_S

__all__ = [
    "ALIGNMENTS",
    "CUSTOMER_ACTIONS",
    "MS_PER_DAY",
    "PARTNER_ACTIONS",
    "PENDING_EXPIRY_S",
    "PERIODIC_LIMITS_MAX",
    "PERIODS",
    "Action",
    "AgreementStatus",
    "PeriodicLimit",
    "add_months",
    "decide_transition",
    "effective_status",
    "ends_at_ms",
    "limit_refusal",
    "payment_refusal",
    "period_window",
    "remaining",
    "spend",
]

_MS_PER_WEEK = 7 * MS_PER_DAY
# 1970-01-01 was a Thursday: days since the epoch plus 3, modulo 7, is 0 on Mondays.
_EPOCH_WEEKDAY = 3


class AgreementStatus:
    AWAITING = "AwaitingAuthorisation"
    AUTHORISED = "Authorised"
    REJECTED = "Rejected"
    SUSPENDED = "Suspended"
    REVOKED = "Revoked"
    EXPIRED = "Expired"  # derived: read past valid_to, never stored
    STORED = (AWAITING, AUTHORISED, REJECTED, SUSPENDED, REVOKED)
    ALL = STORED + (EXPIRED,)
    TERMINAL = (REJECTED, REVOKED)


class Action:
    AUTHORISE = "authorise"
    REJECT = "reject"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"


S = AgreementStatus
# action -> (statuses it applies to, the status it leads to)
_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    Action.AUTHORISE: (frozenset({S.AWAITING}), S.AUTHORISED),
    Action.REJECT: (frozenset({S.AWAITING}), S.REJECTED),
    Action.SUSPEND: (frozenset({S.AUTHORISED}), S.SUSPENDED),
    Action.RESUME: (frozenset({S.SUSPENDED}), S.AUTHORISED),
    Action.REVOKE: (frozenset({S.AWAITING, S.AUTHORISED, S.SUSPENDED}), S.REVOKED),
}
# Who may do what: the partner can only end the agreement; the customer (through the
# bank's channel, the admin API in this prototype) decides everything else.
PARTNER_ACTIONS = frozenset({Action.REVOKE})
CUSTOMER_ACTIONS = frozenset(_TRANSITIONS)
ACTORS = ("partner", "customer")

PERIODS = ("Day", "Week", "Month", "Year")
ALIGNMENTS = ("Calendar", "Consent")
PERIODIC_LIMITS_MAX = len(PERIODS) * len(ALIGNMENTS)  # one per (period, alignment)


@dataclass(slots=True)
class PeriodicLimit:
    period: str
    alignment: str
    amount_minor: int
    # The window the spend below belongs to: [window_start_ms, window_end_ms). Empty
    # (0, 0) until the first payment or the start-up load places it.
    window_start_ms: int = 0
    window_end_ms: int = 0
    spent_minor: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"period": self.period, "alignment": self.alignment, "amount_minor": self.amount_minor}


def ends_at_ms(status: str, valid_to_ms: int | None, authorise_by_ms: int | None) -> int | None:
    """The last moment the agreement reads as its stored status (None: no end). Past it, a
    non-terminal agreement reads Expired: past valid_to, or (still awaiting the customer)
    past authorise_by."""
    if status == S.AWAITING and authorise_by_ms is not None:
        return authorise_by_ms if valid_to_ms is None else min(valid_to_ms, authorise_by_ms)
    return valid_to_ms


def effective_status(status: str, valid_to_ms: int | None, at_ms: int, authorise_by_ms: int | None = None) -> str:
    """The status as read at `at_ms`: a non-terminal agreement past valid_to is Expired, and so
    is one still AwaitingAuthorisation past authorise_by (the pending expiry)."""
    # ends_at_ms, inlined: this runs for every payment.
    if status in S.TERMINAL:
        return status
    if valid_to_ms is not None and at_ms > valid_to_ms:
        return S.EXPIRED
    if authorise_by_ms is not None and at_ms > authorise_by_ms and status == S.AWAITING:
        return S.EXPIRED
    return status


def decide_transition(
    status: str, valid_to_ms: int | None, action: str, actor: str, at_ms: int, authorise_by_ms: int | None = None
) -> tuple[str, str | None]:
    """(code, new status). Codes: OK (a transition to record), SAME (already there: answer
    the resource as it is, record nothing), FORBIDDEN (this actor may not do this),
    INVALID_TRANSITION (not from this status). Unknown actions are FORBIDDEN."""
    allowed = PARTNER_ACTIONS if actor == "partner" else CUSTOMER_ACTIONS if actor == "customer" else frozenset()
    if action not in allowed:
        return "FORBIDDEN", None
    sources, target = _TRANSITIONS[action]
    if status == target:
        return "SAME", target
    current = effective_status(status, valid_to_ms, at_ms, authorise_by_ms)
    if current == S.EXPIRED and action != Action.REVOKE:
        return "INVALID_TRANSITION", None
    if status not in sources:
        return "INVALID_TRANSITION", None
    return "OK", target


def payment_refusal(
    status: str, valid_from_ms: int | None, valid_to_ms: int | None, at_ms: int, authorise_by_ms: int | None = None
) -> str | None:
    """Why no payment may be made under the agreement at `at_ms`, or None."""
    current = effective_status(status, valid_to_ms, at_ms, authorise_by_ms)
    if current == S.AUTHORISED:
        if valid_from_ms is not None and at_ms < valid_from_ms:
            return "AGREEMENT_NOT_YET_VALID"
        return None
    return {S.REVOKED: "AGREEMENT_REVOKED", S.EXPIRED: "AGREEMENT_EXPIRED", S.SUSPENDED: "AGREEMENT_SUSPENDED"}.get(
        current, "AGREEMENT_NOT_AUTHORISED"
    )


# ---- periods ---------------------------------------------------------------------------
def _dt(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms // 1000, datetime.UTC).replace(microsecond=(ms % 1000) * 1000)


def _ms(dt: datetime.datetime) -> int:
    return (dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)) // datetime.timedelta(milliseconds=1)


def add_months(anchor_ms: int, months: int) -> int:
    """The anchor moved by whole months, its day clamped to the target month's length."""
    dt = _dt(anchor_ms)
    total = dt.month - 1 + months
    year, month = dt.year + total // 12, total % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return _ms(dt.replace(year=year, month=month, day=day))


def period_window(period: str, alignment: str, anchor_ms: int, at_ms: int) -> tuple[int, int]:
    """The window [start, end) of `period` holding `at_ms`."""
    if alignment == "Calendar":
        if period == "Day":
            start = at_ms - at_ms % MS_PER_DAY
            return start, start + MS_PER_DAY
        if period == "Week":
            day = at_ms // MS_PER_DAY
            start = (day - (day + _EPOCH_WEEKDAY) % 7) * MS_PER_DAY
            return start, start + _MS_PER_WEEK
        dt = _dt(at_ms)
        if period == "Month":
            first = datetime.datetime(dt.year, dt.month, 1, tzinfo=datetime.UTC)
            return _ms(first), add_months(_ms(first), 1)
        if period == "Year":
            first = datetime.datetime(dt.year, 1, 1, tzinfo=datetime.UTC)
            return _ms(first), _ms(first.replace(year=dt.year + 1))
    elif alignment == "Consent":
        if period in ("Day", "Week"):
            length = MS_PER_DAY if period == "Day" else _MS_PER_WEEK
            start = anchor_ms + (at_ms - anchor_ms) // length * length
            return start, start + length
        if period in ("Month", "Year"):
            step = 1 if period == "Month" else 12
            a, b = _dt(anchor_ms), _dt(at_ms)
            k = ((b.year - a.year) * 12 + (b.month - a.month)) // step
            while add_months(anchor_ms, k * step) > at_ms:
                k -= 1
            while add_months(anchor_ms, (k + 1) * step) <= at_ms:
                k += 1
            return add_months(anchor_ms, k * step), add_months(anchor_ms, (k + 1) * step)
    raise ValueError(f"unknown period {period!r} or alignment {alignment!r}")


def _place(limit: PeriodicLimit, anchor_ms: int, at_ms: int) -> None:
    """Move the limit's window forward to the one holding at_ms (spend starts at zero there).

    A time before the current window (a clock stepped back) keeps the current window: it
    counts against the newer window, never against a forgotten older one."""
    if at_ms >= limit.window_end_ms:
        limit.window_start_ms, limit.window_end_ms = period_window(limit.period, limit.alignment, anchor_ms, at_ms)
        limit.spent_minor = 0


def limit_refusal(
    per_payment_limit_minor: int, limits: list[PeriodicLimit], anchor_ms: int, amount_minor: int, at_ms: int
) -> tuple[str, dict[str, Any]] | None:
    """The first limit the payment would exceed, as (reason, details), or None."""
    if amount_minor > per_payment_limit_minor:
        return "AGREEMENT_PER_PAYMENT_LIMIT", {"limit_minor": per_payment_limit_minor}
    for limit in limits:
        _place(limit, anchor_ms, at_ms)
        if limit.spent_minor + amount_minor > limit.amount_minor:
            return "AGREEMENT_PERIODIC_LIMIT", {
                "period": limit.period,
                "alignment": limit.alignment,
                "limit_minor": limit.amount_minor,
                "remaining_minor": max(0, limit.amount_minor - limit.spent_minor),
                "period_start_ms": limit.window_start_ms,
                "period_end_ms": limit.window_end_ms,
            }
    return None


def spend(limits: list[PeriodicLimit], anchor_ms: int, amount_minor: int, at_ms: int) -> None:
    for limit in limits:
        _place(limit, anchor_ms, at_ms)
        limit.spent_minor += amount_minor


def remaining(limit: PeriodicLimit, anchor_ms: int, at_ms: int) -> tuple[int, int, int]:
    """(remaining_minor, window start, window end) at at_ms, without moving the limit."""
    if limit.window_start_ms <= at_ms < limit.window_end_ms or (at_ms < limit.window_start_ms):
        return max(0, limit.amount_minor - limit.spent_minor), limit.window_start_ms, limit.window_end_ms
    start, end = period_window(limit.period, limit.alignment, anchor_ms, at_ms)
    return limit.amount_minor, start, end
