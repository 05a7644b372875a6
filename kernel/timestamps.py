"""Instants as int milliseconds since the Unix epoch (UTC), and the range the whole system
can represent end to end. Pure: no clock, no I/O.

Every timestamp a partner sends is normalised to UTC first and only then checked against
this range (normalise, then validate): "9999-12-31T23:00:00-05:00" is a valid RFC 3339
time in its own offset but lies in the year 10000 once in UTC, beyond Python's datetime,
so every reader that renders it (the API's ISO strings, the notifier's event bodies, the
reconciliation files) would fail on it.

The range ends a year and a day before Python's `datetime.max`: an agreement valid until
the last representable instant still has every periodic-limit window (a Year at most,
Consent-aligned from its `valid_from`) end inside the range, so computing "what remains in
this period" can never overflow. PostgreSQL's bigint and timestamptz, JSON (an integer of
at most 15 digits) and msgpack all hold the whole range.
"""

from __future__ import annotations

import datetime

__all__ = ["TIME_MAX_MS", "TIME_MIN_MS", "OutOfRange", "is_representable_ms", "utc_ms"]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MS = datetime.timedelta(milliseconds=1)

TIME_MIN_MS = 0
# 9998-12-30T23:59:59.999Z: datetime.max (9999-12-31) less a leap year and a day.
TIME_MAX_MS = (datetime.datetime(9998, 12, 30, 23, 59, 59, 999_000, tzinfo=datetime.UTC) - _EPOCH) // _MS


class OutOfRange(ValueError):
    """A time outside [TIME_MIN_MS, TIME_MAX_MS] once normalised to UTC."""


def utc_ms(value: datetime.datetime) -> int:
    """Normalise an aware datetime to UTC milliseconds, then check the range.

    Sub-millisecond digits are truncated towards the past (floor), as `//` does."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise OutOfRange("a time needs an offset (which day would it be?)")
    ms = (value - _EPOCH) // _MS
    if not TIME_MIN_MS <= ms <= TIME_MAX_MS:
        raise OutOfRange("times lie between 1970-01-01T00:00:00Z and 9998-12-30T23:59:59.999Z once in UTC")
    return ms


def is_representable_ms(value: object) -> bool:
    return type(value) is int and TIME_MIN_MS <= value <= TIME_MAX_MS
