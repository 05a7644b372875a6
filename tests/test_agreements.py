"""The pure agreement module (ledger/agreements.py): UTC calendar and consent-aligned
period windows (month/year clamping, leap years, contiguity as a property), the
per-payment and periodic limits with their rejection details and window resets, the
full (status, action, actor) transition table, and why a payment is refused."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.agreements import (
    ALIGNMENTS,
    MS_PER_DAY,
    PERIODS,
    Action,
    AgreementStatus,
    PeriodicLimit,
    add_months,
    decide_transition,
    effective_status,
    limit_refusal,
    payment_refusal,
    period_window,
    remaining,
    spend,
)

UTC = datetime.UTC
MS_PER_HOUR = 3_600_000
MS_PER_WEEK = 7 * MS_PER_DAY
S = AgreementStatus


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, millis: int = 0) -> int:
    """Milliseconds since the epoch of a UTC wall-clock time."""
    dt = datetime.datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=UTC)
    return int(dt.timestamp()) * 1000 + millis


def utc(at_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(at_ms / 1000, UTC)


def test_ms_helper_agrees_with_the_epoch() -> None:
    assert ms(1970, 1, 1) == 0
    assert ms(1970, 1, 2, 0, 0, 0, 1) == MS_PER_DAY + 1
    assert utc(ms(2026, 3, 15, 23, 59, 59, 999)).weekday() == 6  # a Sunday


# ---- Calendar windows ---------------------------------------------------------------------
def test_calendar_day_boundaries() -> None:
    midnight, next_midnight = ms(2026, 3, 15), ms(2026, 3, 16)
    assert period_window("Day", "Calendar", 0, midnight) == (midnight, next_midnight)
    assert period_window("Day", "Calendar", 0, ms(2026, 3, 15, 12, 30)) == (midnight, next_midnight)
    assert period_window("Day", "Calendar", 0, next_midnight - 1) == (midnight, next_midnight)
    assert period_window("Day", "Calendar", 0, next_midnight) == (next_midnight, ms(2026, 3, 17))
    assert period_window("Day", "Calendar", 0, midnight - 1) == (ms(2026, 3, 14), midnight)
    # the anchor plays no part in a Calendar window
    assert period_window("Day", "Calendar", ms(2026, 1, 1, 7, 13), midnight + 5) == (midnight, next_midnight)


def test_calendar_day_across_month_and_year_ends() -> None:
    assert period_window("Day", "Calendar", 0, ms(2026, 2, 28, 23, 59, 59, 999)) == (ms(2026, 2, 28), ms(2026, 3, 1))
    assert period_window("Day", "Calendar", 0, ms(2028, 2, 29, 6)) == (ms(2028, 2, 29), ms(2028, 3, 1))
    assert period_window("Day", "Calendar", 0, ms(2026, 12, 31, 23, 59, 59, 999)) == (ms(2026, 12, 31), ms(2027, 1, 1))


def test_calendar_week_starts_monday_midnight_utc() -> None:
    sunday_last_ms = ms(2026, 3, 15, 23, 59, 59, 999)
    monday = ms(2026, 3, 16)
    assert utc(sunday_last_ms).weekday() == 6 and utc(monday).weekday() == 0
    assert sunday_last_ms + 1 == monday
    week_before = period_window("Week", "Calendar", 0, sunday_last_ms)
    week_after = period_window("Week", "Calendar", 0, monday)
    assert week_before == (ms(2026, 3, 9), monday)
    assert week_after == (monday, ms(2026, 3, 23))
    assert week_before != week_after
    # a Wednesday belongs to the week starting the Monday before
    wednesday = ms(2026, 3, 18, 17, 45)
    assert utc(wednesday).weekday() == 2
    assert period_window("Week", "Calendar", 0, wednesday) == (monday, ms(2026, 3, 23))
    # Monday 00:00 itself starts its own week
    assert period_window("Week", "Calendar", 0, ms(2026, 3, 9)) == (ms(2026, 3, 9), monday)


def test_calendar_week_across_a_year_end() -> None:
    # 2026-01-01 is a Thursday: its week started Monday 2025-12-29.
    assert utc(ms(2026, 1, 1)).weekday() == 3
    assert period_window("Week", "Calendar", 0, ms(2026, 1, 1, 8)) == (ms(2025, 12, 29), ms(2026, 1, 5))
    # the epoch itself (a Thursday) lies in the week from Monday 1969-12-29
    assert period_window("Week", "Calendar", 0, 0) == (ms(1969, 12, 29), ms(1970, 1, 5))


@pytest.mark.parametrize(
    "year, month, days",
    [
        (2026, 1, 31),
        (2026, 2, 28),
        (2028, 2, 29),
        (2026, 4, 30),
        (2026, 12, 31),
        (2100, 2, 28),
        (2000, 2, 29),
    ],
)
def test_calendar_month_lengths(year: int, month: int, days: int) -> None:
    start = ms(year, month, 1)
    end = ms(year + 1, 1, 1) if month == 12 else ms(year, month + 1, 1)
    assert end - start == days * MS_PER_DAY
    for at in (start, start + 1, ms(year, month, days, 12), end - 1):
        assert period_window("Month", "Calendar", 0, at) == (start, end)
    assert period_window("Month", "Calendar", 0, end)[0] == end
    assert period_window("Month", "Calendar", 0, start - 1)[1] == start


@pytest.mark.parametrize("year, days", [(2026, 365), (2027, 365), (2028, 366), (2100, 365), (2000, 366)])
def test_calendar_year(year: int, days: int) -> None:
    start, end = ms(year, 1, 1), ms(year + 1, 1, 1)
    assert end - start == days * MS_PER_DAY
    for at in (start, ms(year, 2, 28, 23), ms(year, 7, 1), end - 1):
        assert period_window("Year", "Calendar", 0, at) == (start, end)
    assert period_window("Year", "Calendar", 0, end) == (end, ms(year + 2, 1, 1))


# ---- add_months ---------------------------------------------------------------------------
def test_add_months_clamps_to_the_shorter_month_and_keeps_time_of_day() -> None:
    jan31 = ms(2026, 1, 31, 10, 15, 30, 250)
    assert add_months(jan31, 0) == jan31
    assert add_months(jan31, 1) == ms(2026, 2, 28, 10, 15, 30, 250)
    assert add_months(jan31, 2) == ms(2026, 3, 31, 10, 15, 30, 250)  # from the anchor, not from Feb 28
    assert add_months(jan31, 3) == ms(2026, 4, 30, 10, 15, 30, 250)
    assert add_months(jan31, 11) == ms(2026, 12, 31, 10, 15, 30, 250)
    assert add_months(jan31, 12) == ms(2027, 1, 31, 10, 15, 30, 250)
    assert add_months(jan31, 25) == ms(2028, 2, 29, 10, 15, 30, 250)
    assert add_months(ms(2028, 1, 31), 1) == ms(2028, 2, 29)
    assert add_months(ms(2028, 2, 29), 12) == ms(2029, 2, 28)
    assert add_months(ms(2028, 2, 29), 48) == ms(2032, 2, 29)
    assert add_months(ms(2026, 3, 31), -1) == ms(2026, 2, 28)
    assert add_months(ms(2026, 1, 15), -1) == ms(2025, 12, 15)


# ---- Consent windows ----------------------------------------------------------------------
def test_consent_day_repeats_every_24h_from_the_anchor() -> None:
    anchor = ms(2026, 3, 10, 14, 30, 15, 250)
    assert period_window("Day", "Consent", anchor, anchor) == (anchor, anchor + MS_PER_DAY)
    assert period_window("Day", "Consent", anchor, anchor + MS_PER_DAY - 1) == (anchor, anchor + MS_PER_DAY)
    # the calendar midnight in between is no boundary
    assert period_window("Day", "Consent", anchor, ms(2026, 3, 11, 0, 0, 0, 1)) == (anchor, anchor + MS_PER_DAY)
    at = ms(2026, 3, 13, 19, 0)
    start = ms(2026, 3, 13, 14, 30, 15, 250)
    assert period_window("Day", "Consent", anchor, at) == (start, start + MS_PER_DAY)
    assert period_window("Day", "Consent", anchor, start + MS_PER_DAY) == (start + MS_PER_DAY, start + 2 * MS_PER_DAY)


def test_consent_week_repeats_every_7d_from_the_anchor() -> None:
    anchor = ms(2026, 3, 12, 9, 0)  # a Thursday
    assert period_window("Week", "Consent", anchor, anchor) == (anchor, anchor + MS_PER_WEEK)
    # the next Monday is no boundary
    assert period_window("Week", "Consent", anchor, ms(2026, 3, 16, 0, 0)) == (anchor, anchor + MS_PER_WEEK)
    assert period_window("Week", "Consent", anchor, ms(2026, 3, 19, 8, 59, 59, 999)) == (anchor, ms(2026, 3, 19, 9))
    assert period_window("Week", "Consent", anchor, ms(2026, 3, 19, 9)) == (ms(2026, 3, 19, 9), ms(2026, 3, 26, 9))
    assert period_window("Week", "Consent", anchor, ms(2026, 4, 30, 12)) == (ms(2026, 4, 30, 9), ms(2026, 5, 7, 9))


def test_consent_month_from_jan_31() -> None:
    anchor = ms(2026, 1, 31, 10)
    feb28, mar31, apr30 = ms(2026, 2, 28, 10), ms(2026, 3, 31, 10), ms(2026, 4, 30, 10)
    assert period_window("Month", "Consent", anchor, anchor) == (anchor, feb28)
    assert period_window("Month", "Consent", anchor, ms(2026, 2, 15)) == (anchor, feb28)
    assert period_window("Month", "Consent", anchor, feb28 - 1) == (anchor, feb28)
    assert period_window("Month", "Consent", anchor, feb28) == (feb28, mar31)
    assert period_window("Month", "Consent", anchor, ms(2026, 3, 30, 23)) == (feb28, mar31)
    assert period_window("Month", "Consent", anchor, mar31) == (mar31, apr30)
    assert period_window("Month", "Consent", anchor, ms(2026, 5, 1)) == (apr30, ms(2026, 5, 31, 10))
    assert period_window("Month", "Consent", anchor, ms(2027, 2, 1)) == (ms(2027, 1, 31, 10), ms(2027, 2, 28, 10))


def test_consent_month_from_jan_31_in_a_leap_year() -> None:
    anchor = ms(2028, 1, 31)
    feb29, mar31 = ms(2028, 2, 29), ms(2028, 3, 31)
    assert period_window("Month", "Consent", anchor, ms(2028, 2, 28, 23)) == (anchor, feb29)
    assert period_window("Month", "Consent", anchor, feb29) == (feb29, mar31)
    assert period_window("Month", "Consent", anchor, ms(2028, 3, 1)) == (feb29, mar31)
    assert period_window("Month", "Consent", anchor, mar31) == (mar31, ms(2028, 4, 30))


def test_consent_month_from_the_15th_is_plain() -> None:
    anchor = ms(2026, 11, 15, 8)
    assert period_window("Month", "Consent", anchor, ms(2027, 1, 3)) == (ms(2026, 12, 15, 8), ms(2027, 1, 15, 8))
    assert period_window("Month", "Consent", anchor, ms(2027, 1, 15, 8)) == (ms(2027, 1, 15, 8), ms(2027, 2, 15, 8))


def test_consent_year_from_feb_29() -> None:
    anchor = ms(2028, 2, 29, 12)
    assert period_window("Year", "Consent", anchor, anchor) == (anchor, ms(2029, 2, 28, 12))
    assert period_window("Year", "Consent", anchor, ms(2029, 2, 28, 11, 59, 59, 999)) == (anchor, ms(2029, 2, 28, 12))
    assert period_window("Year", "Consent", anchor, ms(2029, 3, 1)) == (ms(2029, 2, 28, 12), ms(2030, 2, 28, 12))
    assert period_window("Year", "Consent", anchor, ms(2031, 6, 1)) == (ms(2031, 2, 28, 12), ms(2032, 2, 29, 12))
    # back on Feb 29 in the next leap year
    assert period_window("Year", "Consent", anchor, ms(2032, 2, 29, 12)) == (ms(2032, 2, 29, 12), ms(2033, 2, 28, 12))
    assert period_window("Year", "Consent", anchor, ms(2032, 2, 29, 11)) == (ms(2031, 2, 28, 12), ms(2032, 2, 29, 12))


def test_unknown_period_or_alignment_is_an_error() -> None:
    with pytest.raises(ValueError):
        period_window("Fortnight", "Calendar", 0, 0)
    with pytest.raises(ValueError):
        period_window("Day", "Lunar", 0, 0)


_MIN_MS = ms(2000, 1, 1)
_MAX_MS = ms(2100, 1, 1)


@settings(max_examples=400, deadline=None)
@given(
    period=st.sampled_from(PERIODS),
    alignment=st.sampled_from(ALIGNMENTS),
    anchor=st.integers(_MIN_MS, _MAX_MS),
    offset=st.one_of(st.integers(0, 3 * MS_PER_DAY), st.integers(0, 40 * 366 * MS_PER_DAY)),
)
def test_windows_contain_the_time_and_are_contiguous(period: str, alignment: str, anchor: int, offset: int) -> None:
    at = anchor + offset
    start, end = period_window(period, alignment, anchor, at)
    assert start <= at < end
    # the next window starts where this one ends, and is itself well formed
    next_start, next_end = period_window(period, alignment, anchor, end)
    assert next_start == end and next_end > end
    if alignment == "Calendar" or start - 1 >= anchor:
        prev_start, prev_end = period_window(period, alignment, anchor, start - 1)
        assert prev_end == start and prev_start < start
    # the same window answers for every time inside it
    assert period_window(period, alignment, anchor, start) == (start, end)
    assert period_window(period, alignment, anchor, end - 1) == (start, end)

    begin, anchor_dt = utc(start), utc(anchor)
    if alignment == "Calendar":
        assert (begin.hour, begin.minute, begin.second, begin.microsecond) == (0, 0, 0, 0)
        if period == "Day":
            assert end - start == MS_PER_DAY
        elif period == "Week":
            assert begin.weekday() == 0 and end - start == MS_PER_WEEK
        elif period == "Month":
            assert begin.day == 1 and utc(end).day == 1
            assert 28 * MS_PER_DAY <= end - start <= 31 * MS_PER_DAY
        else:
            assert (begin.month, begin.day) == (1, 1) and (utc(end).month, utc(end).day) == (1, 1)
            assert end - start in (365 * MS_PER_DAY, 366 * MS_PER_DAY)
    else:
        assert start >= anchor
        if period in ("Day", "Week"):
            length = MS_PER_DAY if period == "Day" else MS_PER_WEEK
            assert end - start == length and (start - anchor) % length == 0
        else:
            # a whole number of months after the anchor, same time of day, day clamped
            assert begin.time() == anchor_dt.time()
            months = (begin.year - anchor_dt.year) * 12 + begin.month - anchor_dt.month
            assert months % (1 if period == "Month" else 12) == 0
            assert start == add_months(anchor, months)
            last_day = (utc(add_months(ms(begin.year, begin.month, 1), 1)) - datetime.timedelta(days=1)).day
            assert begin.day == min(anchor_dt.day, last_day)


# ---- limits -------------------------------------------------------------------------------
def test_per_payment_limit_comes_first() -> None:
    at = ms(2026, 3, 15, 12)
    day = PeriodicLimit("Day", "Calendar", 100)
    assert limit_refusal(50, [day], 0, 51, at) == ("AGREEMENT_PER_PAYMENT_LIMIT", {"limit_minor": 50})
    # the per-payment limit is inclusive
    assert limit_refusal(50, [day], 0, 50, at) is None
    # a payment over both limits names the per-payment one
    spend([day], 0, 100, at)
    assert limit_refusal(50, [day], 0, 60, at) == ("AGREEMENT_PER_PAYMENT_LIMIT", {"limit_minor": 50})
    refusal = limit_refusal(50, [day], 0, 1, at)
    assert refusal is not None and refusal[0] == "AGREEMENT_PERIODIC_LIMIT"


def test_periodic_limit_rejects_with_details_and_resets_next_window() -> None:
    day = PeriodicLimit("Day", "Calendar", 1_000)
    morning, evening = ms(2026, 3, 15, 8), ms(2026, 3, 15, 23, 59, 59, 999)
    assert limit_refusal(10_000, [day], 0, 700, morning) is None
    spend([day], 0, 700, morning)
    assert (day.window_start_ms, day.window_end_ms, day.spent_minor) == (ms(2026, 3, 15), ms(2026, 3, 16), 700)
    refusal = limit_refusal(10_000, [day], 0, 301, evening)
    assert refusal == (
        "AGREEMENT_PERIODIC_LIMIT",
        {
            "period": "Day",
            "alignment": "Calendar",
            "limit_minor": 1_000,
            "remaining_minor": 300,
            "period_start_ms": ms(2026, 3, 15),
            "period_end_ms": ms(2026, 3, 16),
        },
    )
    assert limit_refusal(10_000, [day], 0, 300, evening) is None  # up to the limit exactly
    spend([day], 0, 300, evening)
    refusal = limit_refusal(10_000, [day], 0, 1, evening)
    assert refusal is not None and refusal[1]["remaining_minor"] == 0
    # the next UTC day starts from zero
    next_day = ms(2026, 3, 16)
    assert limit_refusal(10_000, [day], 0, 1_000, next_day) is None
    assert day.spent_minor == 0 and (day.window_start_ms, day.window_end_ms) == (next_day, ms(2026, 3, 17))
    spend([day], 0, 1_000, next_day)
    assert day.spent_minor == 1_000
    refusal = limit_refusal(10_000, [day], 0, 1, next_day + 1)
    assert refusal is not None and refusal[1]["period_start_ms"] == next_day and refusal[1]["remaining_minor"] == 0


def test_consent_limit_details_name_the_consent_window() -> None:
    anchor = ms(2026, 1, 31, 10)
    month = PeriodicLimit("Month", "Consent", 500)
    spend([month], anchor, 500, ms(2026, 2, 20))
    refusal = limit_refusal(1_000, [month], anchor, 1, ms(2026, 2, 28, 9, 59))
    assert refusal == (
        "AGREEMENT_PERIODIC_LIMIT",
        {
            "period": "Month",
            "alignment": "Consent",
            "limit_minor": 500,
            "remaining_minor": 0,
            "period_start_ms": anchor,
            "period_end_ms": ms(2026, 2, 28, 10),
        },
    )
    assert limit_refusal(1_000, [month], anchor, 500, ms(2026, 2, 28, 10)) is None


def test_day_and_month_limits_together_the_month_bites_across_days() -> None:
    day = PeriodicLimit("Day", "Calendar", 1_000)
    month = PeriodicLimit("Month", "Calendar", 2_500)
    limits = [day, month]
    for d in (3, 4):
        at = ms(2026, 3, d, 9)
        assert limit_refusal(5_000, limits, 0, 1_000, at) is None
        spend(limits, 0, 1_000, at)
    assert month.spent_minor == 2_000 and day.spent_minor == 1_000
    # day 5: the day limit would allow 1 000, the month only 500 more
    at = ms(2026, 3, 5, 9)
    refusal = limit_refusal(5_000, limits, 0, 600, at)
    assert refusal == (
        "AGREEMENT_PERIODIC_LIMIT",
        {
            "period": "Month",
            "alignment": "Calendar",
            "limit_minor": 2_500,
            "remaining_minor": 500,
            "period_start_ms": ms(2026, 3, 1),
            "period_end_ms": ms(2026, 4, 1),
        },
    )
    assert limit_refusal(5_000, limits, 0, 500, at) is None
    spend(limits, 0, 500, at)
    # a later day in the month: the day is fresh, the month is spent
    at = ms(2026, 3, 20)
    refusal = limit_refusal(5_000, limits, 0, 1, at)
    assert refusal is not None and refusal[1]["period"] == "Month" and refusal[1]["remaining_minor"] == 0
    assert day.spent_minor == 0
    # over the day limit the day limit (listed first) is named
    refusal = limit_refusal(5_000, limits, 0, 1_001, at)
    assert refusal is not None and refusal[1]["period"] == "Day"
    # the next month starts over
    at = ms(2026, 4, 1)
    assert limit_refusal(5_000, limits, 0, 1_000, at) is None
    spend(limits, 0, 1_000, at)
    assert (day.spent_minor, month.spent_minor) == (1_000, 1_000)


def test_spend_counts_what_was_taken_and_remaining_does_not_move_the_window() -> None:
    day = PeriodicLimit("Day", "Calendar", 1_000)
    at = ms(2026, 3, 15, 10)
    assert remaining(day, 0, at) == (1_000, ms(2026, 3, 15), ms(2026, 3, 16))
    spend([day], 0, 400, at)
    spend([day], 0, 100, at + 1)
    assert remaining(day, 0, at + 2) == (500, ms(2026, 3, 15), ms(2026, 3, 16))
    # in a later window the full amount remains, and the limit itself is untouched
    assert remaining(day, 0, ms(2026, 3, 16, 1)) == (1_000, ms(2026, 3, 16), ms(2026, 3, 17))
    assert (day.window_start_ms, day.spent_minor) == (ms(2026, 3, 15), 500)


def test_a_clock_stepped_back_counts_against_the_newer_window() -> None:
    day = PeriodicLimit("Day", "Calendar", 1_000)
    spend([day], 0, 900, ms(2026, 3, 16, 0, 0, 0, 5))
    earlier = ms(2026, 3, 15, 23, 59, 59, 999)
    refusal = limit_refusal(5_000, [day], 0, 200, earlier)
    assert refusal is not None and refusal[1]["period_start_ms"] == ms(2026, 3, 16)
    assert remaining(day, 0, earlier) == (100, ms(2026, 3, 16), ms(2026, 3, 17))


# ---- the state machine --------------------------------------------------------------------
OK, SAME, FORBIDDEN, INVALID = "OK", "SAME", "FORBIDDEN", "INVALID_TRANSITION"
A = Action
STORED = (S.AWAITING, S.AUTHORISED, S.REJECTED, S.SUSPENDED, S.REVOKED)
ACTIONS = (A.AUTHORISE, A.REJECT, A.SUSPEND, A.RESUME, A.REVOKE)

# What the customer gets, within the agreement's validity: (status, action) -> (code, new status).
CUSTOMER_VALID: dict[tuple[str, str], tuple[str, str | None]] = {
    (S.AWAITING, A.AUTHORISE): (OK, S.AUTHORISED),
    (S.AWAITING, A.REJECT): (OK, S.REJECTED),
    (S.AWAITING, A.SUSPEND): (INVALID, None),
    (S.AWAITING, A.RESUME): (INVALID, None),
    (S.AWAITING, A.REVOKE): (OK, S.REVOKED),
    (S.AUTHORISED, A.AUTHORISE): (SAME, S.AUTHORISED),
    (S.AUTHORISED, A.REJECT): (INVALID, None),
    (S.AUTHORISED, A.SUSPEND): (OK, S.SUSPENDED),
    (S.AUTHORISED, A.RESUME): (SAME, S.AUTHORISED),
    (S.AUTHORISED, A.REVOKE): (OK, S.REVOKED),
    (S.REJECTED, A.AUTHORISE): (INVALID, None),
    (S.REJECTED, A.REJECT): (SAME, S.REJECTED),
    (S.REJECTED, A.SUSPEND): (INVALID, None),
    (S.REJECTED, A.RESUME): (INVALID, None),
    (S.REJECTED, A.REVOKE): (INVALID, None),
    (S.SUSPENDED, A.AUTHORISE): (INVALID, None),
    (S.SUSPENDED, A.REJECT): (INVALID, None),
    (S.SUSPENDED, A.SUSPEND): (SAME, S.SUSPENDED),
    (S.SUSPENDED, A.RESUME): (OK, S.AUTHORISED),
    (S.SUSPENDED, A.REVOKE): (OK, S.REVOKED),
    (S.REVOKED, A.AUTHORISE): (INVALID, None),
    (S.REVOKED, A.REJECT): (INVALID, None),
    (S.REVOKED, A.SUSPEND): (INVALID, None),
    (S.REVOKED, A.RESUME): (INVALID, None),
    (S.REVOKED, A.REVOKE): (SAME, S.REVOKED),
}

# Past valid_to: only revoke moves a non-terminal agreement; asking for the status it is
# already in stays SAME (an idempotent no-op, nothing recorded); terminal ones never expire.
CUSTOMER_EXPIRED: dict[tuple[str, str], tuple[str, str | None]] = {
    (S.AWAITING, A.AUTHORISE): (INVALID, None),
    (S.AWAITING, A.REJECT): (INVALID, None),
    (S.AWAITING, A.SUSPEND): (INVALID, None),
    (S.AWAITING, A.RESUME): (INVALID, None),
    (S.AWAITING, A.REVOKE): (OK, S.REVOKED),
    (S.AUTHORISED, A.AUTHORISE): (SAME, S.AUTHORISED),
    (S.AUTHORISED, A.REJECT): (INVALID, None),
    (S.AUTHORISED, A.SUSPEND): (INVALID, None),
    (S.AUTHORISED, A.RESUME): (SAME, S.AUTHORISED),
    (S.AUTHORISED, A.REVOKE): (OK, S.REVOKED),
    (S.REJECTED, A.AUTHORISE): (INVALID, None),
    (S.REJECTED, A.REJECT): (SAME, S.REJECTED),
    (S.REJECTED, A.SUSPEND): (INVALID, None),
    (S.REJECTED, A.RESUME): (INVALID, None),
    (S.REJECTED, A.REVOKE): (INVALID, None),
    (S.SUSPENDED, A.AUTHORISE): (INVALID, None),
    (S.SUSPENDED, A.REJECT): (INVALID, None),
    (S.SUSPENDED, A.SUSPEND): (SAME, S.SUSPENDED),
    (S.SUSPENDED, A.RESUME): (INVALID, None),
    (S.SUSPENDED, A.REVOKE): (OK, S.REVOKED),
    (S.REVOKED, A.AUTHORISE): (INVALID, None),
    (S.REVOKED, A.REJECT): (INVALID, None),
    (S.REVOKED, A.SUSPEND): (INVALID, None),
    (S.REVOKED, A.RESUME): (INVALID, None),
    (S.REVOKED, A.REVOKE): (SAME, S.REVOKED),
}

NOW = ms(2026, 6, 1, 12)
VALIDITY = {"open-ended": None, "valid": NOW + MS_PER_HOUR, "valid to exactly now": NOW, "expired": NOW - 1}


def _expected(status: str, action: str, actor: str, expired: bool) -> tuple[str, str | None]:
    if actor == "partner" and action != A.REVOKE:
        return FORBIDDEN, None
    if actor not in ("partner", "customer") or action not in ACTIONS:
        return FORBIDDEN, None
    table = CUSTOMER_EXPIRED if expired else CUSTOMER_VALID
    return table[(status, action)]


def test_transition_tables_cover_every_stored_status_and_action() -> None:
    assert set(S.STORED) == set(STORED)
    assert set(CUSTOMER_VALID) == set(CUSTOMER_EXPIRED) == {(s, a) for s in STORED for a in ACTIONS}
    # the tables differ only for non-terminal agreements, and only to refuse
    for key, valid in CUSTOMER_VALID.items():
        if CUSTOMER_EXPIRED[key] != valid:
            assert key[0] not in S.TERMINAL and key[1] != A.REVOKE and CUSTOMER_EXPIRED[key] == (INVALID, None)


@pytest.mark.parametrize("validity", list(VALIDITY))
@pytest.mark.parametrize("actor", ["partner", "customer", "bank", ""])
@pytest.mark.parametrize("action", [*ACTIONS, "delete", ""])
@pytest.mark.parametrize("status", STORED)
def test_decide_transition_table(status: str, action: str, actor: str, validity: str) -> None:
    valid_to = VALIDITY[validity]
    expired = validity == "expired"
    assert decide_transition(status, valid_to, action, actor, NOW) == _expected(status, action, actor, expired)


def test_only_the_customer_decides_and_the_partner_may_only_revoke() -> None:
    for status in (S.AWAITING, S.AUTHORISED, S.SUSPENDED):
        assert decide_transition(status, None, A.REVOKE, "partner", NOW) == (OK, S.REVOKED)
    for action in (A.AUTHORISE, A.REJECT, A.SUSPEND, A.RESUME):
        for status in STORED:
            assert decide_transition(status, None, action, "partner", NOW) == (FORBIDDEN, None)


def test_expiry_is_strictly_after_valid_to() -> None:
    valid_to = ms(2026, 6, 30, 23, 59, 59, 999)
    assert decide_transition(S.AWAITING, valid_to, A.AUTHORISE, "customer", valid_to) == (OK, S.AUTHORISED)
    assert decide_transition(S.AWAITING, valid_to, A.AUTHORISE, "customer", valid_to + 1) == (INVALID, None)
    assert decide_transition(S.AUTHORISED, valid_to, A.SUSPEND, "customer", valid_to) == (OK, S.SUSPENDED)
    assert decide_transition(S.AUTHORISED, valid_to, A.SUSPEND, "customer", valid_to + 1) == (INVALID, None)
    assert decide_transition(S.SUSPENDED, valid_to, A.RESUME, "customer", valid_to + 1) == (INVALID, None)
    assert decide_transition(S.SUSPENDED, valid_to, A.REVOKE, "partner", valid_to + 1) == (OK, S.REVOKED)


@pytest.mark.parametrize(
    "status, valid_to, at, expected",
    [
        (S.AWAITING, None, NOW, S.AWAITING),
        (S.AUTHORISED, NOW, NOW, S.AUTHORISED),
        (S.AUTHORISED, NOW, NOW + 1, S.EXPIRED),
        (S.AWAITING, NOW, NOW + 1, S.EXPIRED),
        (S.SUSPENDED, NOW, NOW + 1, S.EXPIRED),
        (S.REJECTED, NOW, NOW + 1, S.REJECTED),
        (S.REVOKED, NOW, NOW + 1, S.REVOKED),
    ],
)
def test_effective_status(status: str, valid_to: int | None, at: int, expected: str) -> None:
    assert effective_status(status, valid_to, at) == expected


# ---- payment_refusal ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, expected",
    [
        (S.AWAITING, "AGREEMENT_NOT_AUTHORISED"),
        (S.AUTHORISED, None),
        (S.REJECTED, "AGREEMENT_NOT_AUTHORISED"),
        (S.SUSPENDED, "AGREEMENT_SUSPENDED"),
        (S.REVOKED, "AGREEMENT_REVOKED"),
    ],
)
def test_payment_refusal_by_status(status: str, expected: str | None) -> None:
    assert payment_refusal(status, None, None, NOW) == expected
    # within an explicit validity, the same
    assert payment_refusal(status, NOW - MS_PER_DAY, NOW + MS_PER_DAY, NOW) == expected


@pytest.mark.parametrize(
    "status, expected",
    [
        (S.AWAITING, "AGREEMENT_EXPIRED"),
        (S.AUTHORISED, "AGREEMENT_EXPIRED"),
        (S.SUSPENDED, "AGREEMENT_EXPIRED"),
        (S.REJECTED, "AGREEMENT_NOT_AUTHORISED"),
        (S.REVOKED, "AGREEMENT_REVOKED"),
    ],
)
def test_payment_refusal_after_valid_to(status: str, expected: str) -> None:
    assert payment_refusal(status, None, NOW, NOW + 1) == expected


def test_payment_validity_bounds_are_inclusive() -> None:
    valid_from, valid_to = ms(2026, 6, 1), ms(2026, 6, 30, 23, 59, 59, 999)
    cases: list[tuple[int, Any]] = [
        (valid_from - 1, "AGREEMENT_NOT_YET_VALID"),
        (valid_from, None),
        (ms(2026, 6, 15), None),
        (valid_to, None),  # exactly at valid_to is still valid
        (valid_to + 1, "AGREEMENT_EXPIRED"),
    ]
    for at, expected in cases:
        assert payment_refusal(S.AUTHORISED, valid_from, valid_to, at) == expected, at
    assert payment_refusal(S.AUTHORISED, valid_from, None, valid_from - 1) == "AGREEMENT_NOT_YET_VALID"
    assert payment_refusal(S.AUTHORISED, None, valid_to, valid_to + 1) == "AGREEMENT_EXPIRED"
    # before valid_from, a not-authorised agreement says why it is not authorised
    assert payment_refusal(S.SUSPENDED, valid_from, valid_to, valid_from - 1) == "AGREEMENT_SUSPENDED"
    assert payment_refusal(S.AWAITING, valid_from, valid_to, valid_from - 1) == "AGREEMENT_NOT_AUTHORISED"
    assert payment_refusal(S.REVOKED, valid_from, valid_to, valid_from - 1) == "AGREEMENT_REVOKED"


# ---- pending expiry (authorise_by) --------------------------------------------------------
@pytest.mark.parametrize(
    "status, valid_to, authorise_by, expected",
    [
        ("AwaitingAuthorisation", None, 100, 100),
        ("AwaitingAuthorisation", 50, 100, 50),  # whichever comes first
        ("AwaitingAuthorisation", 150, 100, 100),
        ("AwaitingAuthorisation", None, None, None),  # stored before pending expiry existed
        ("Authorised", None, 100, None),  # authorised: authorise_by no longer matters
        ("Authorised", 150, 100, 150),
        ("Suspended", 150, 100, 150),
        ("Revoked", 150, 100, 150),
    ],
)
def test_ends_at(status: str, valid_to: int | None, authorise_by: int | None, expected: int | None) -> None:
    from ledger.agreements import ends_at_ms

    assert ends_at_ms(status, valid_to, authorise_by) == expected


def test_a_pending_agreement_past_authorise_by_reads_expired_and_can_only_be_revoked() -> None:
    from ledger.agreements import PENDING_EXPIRY_S, decide_transition, effective_status, payment_refusal

    assert PENDING_EXPIRY_S == 24 * 3_600
    by = 1_000
    assert effective_status("AwaitingAuthorisation", None, by, by) == "AwaitingAuthorisation"  # inclusive
    assert effective_status("AwaitingAuthorisation", None, by + 1, by) == "Expired"
    assert effective_status("Rejected", None, by + 1, by) == "Rejected"
    assert effective_status("Authorised", None, by + 1, by) == "Authorised"
    assert decide_transition("AwaitingAuthorisation", None, "authorise", "customer", by, by) == ("OK", "Authorised")
    for action in ("authorise", "reject"):
        assert decide_transition("AwaitingAuthorisation", None, action, "customer", by + 1, by) == (
            "INVALID_TRANSITION",
            None,
        )
    assert decide_transition("AwaitingAuthorisation", None, "revoke", "partner", by + 1, by) == ("OK", "Revoked")
    assert payment_refusal("AwaitingAuthorisation", None, None, by, by) == "AGREEMENT_NOT_AUTHORISED"
    assert payment_refusal("AwaitingAuthorisation", None, None, by + 1, by) == "AGREEMENT_EXPIRED"
