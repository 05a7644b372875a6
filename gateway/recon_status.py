"""The operator's reconciliation status (GET /admin/v1/reconciliation, the console's
"Reconciliation" table): for the last RECON_STATUS_DAYS UTC days, whether each is closed
(its files final) and what every partner's file of that day holds together: rows, count and
total per kind and currency, and the settlement accounts' net, as ledger/recon.py sums them.

Each shard counts its part in PostgreSQL (the `recon_summary` read, ledger/reads.py: the
rows pg.partner_day_transfers gives a file, the kinds of recon.row_kind). That is O(the
day's rows), so it is never run per refresh: a closed day's summary is read once and kept
(a closed day's rows do not change); the open day's is re-read at most once per
RECON_STATUS_OPEN_REUSE_S, and a failed read is retried after as long. A request waits at
most RECON_STATUS_WAIT_S for a read under way, then answers the day as "reading". One read
per day at a time per gateway process, whatever the number of callers.

Pure but for the read it is given (`read_day`) and the clocks (injected in tests).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kernel.money import format_amount
from kernel.resources import _iso
from ledger import recon

__all__ = [
    "RECON_STATUS_DAYS",
    "RECON_STATUS_OPEN_REUSE_S",
    "RECON_STATUS_WAIT_S",
    "ReconStatus",
    "merge_summaries",
    "status_days",
]

RECON_STATUS_DAYS = 3  # today (open) and the two days before it, UTC
RECON_STATUS_OPEN_REUSE_S = 60.0  # the open day's summary, and any failed read, re-read at most this often
RECON_STATUS_WAIT_S = 1.0  # how long a request waits for a read under way before it answers "reading"

# (from_ms, to_ms) -> every shard's rows [{kind, currency, rows, total_minor}]
ReadDay = Callable[[int, int], Awaitable[list[list[dict[str, Any]]]]]


def status_days(now_ms: int, days: int = RECON_STATUS_DAYS) -> list[datetime.date]:
    """The UTC days shown, newest (today) first."""
    today = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).date()
    return [today - datetime.timedelta(days=n) for n in range(days)]


def merge_summaries(answers: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Every shard's counts as one summary, in the reconciliation file's terms: per kind and
    currency the rows and their total; per currency `settlement_net`, payments to the
    settlement accounts minus refunds from them (recon.Reconciliation.settlement_net)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for answer in answers:
        for row in answer:
            total = totals.setdefault((str(row["kind"]), str(row["currency"])), [0, 0])
            total[0] += int(row["rows"])
            total[1] += int(row["total_minor"])
    net: dict[str, int] = {}
    for (kind, currency), (_, total_minor) in totals.items():
        if kind == "payment":
            net[currency] = net.get(currency, 0) + total_minor
        elif kind == "refund":
            net[currency] = net.get(currency, 0) - total_minor
    return {
        "rows": sum(count for count, _ in totals.values()),
        "totals": [
            {
                "kind": kind,
                "currency": currency,
                "count": count,
                "total": format_amount(total_minor, currency),
                "total_minor": total_minor,
            }
            for (kind, currency), (count, total_minor) in sorted(totals.items())
        ],
        "settlement_net": [
            {"currency": currency, "net": format_amount(value, currency), "net_minor": value}
            for currency, value in sorted(net.items())
        ],
    }


@dataclass
class _Day:
    closed: bool  # whether the day was closed when this read began
    started_s: float  # monotonic
    task: asyncio.Task[None] | None = None
    summary: dict[str, Any] | None = None
    as_of_ms: int | None = None
    error: str | None = None


class ReconStatus:
    """The cached summaries, one entry per day shown."""

    def __init__(
        self,
        read_day: ReadDay,
        *,
        clock_ms: Callable[[], int] | None = None,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_day = read_day
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._monotonic_s = monotonic_s
        self._days: dict[datetime.date, _Day] = {}

    async def status(self) -> dict[str, Any]:
        now_ms = self._clock_ms()
        shown = status_days(now_ms)
        for stale in [d for d in self._days if d not in shown]:
            del self._days[stale]  # past the window (a read still running finishes unobserved)
        entries = [self._entry_for(day, now_ms) for day in shown]
        running = [e.task for e in entries if e.task is not None and not e.task.done()]
        if running:
            await asyncio.wait(running, timeout=RECON_STATUS_WAIT_S)
        return {
            "generated_at": _iso(now_ms),
            "close_grace_s": recon.CLOSE_GRACE_MS // 1000,
            "days": [self._view(day, entry, now_ms) for day, entry in zip(shown, entries, strict=True)],
        }

    def _entry_for(self, day: datetime.date, now_ms: int) -> _Day:
        closed = recon.is_closed(day, now_ms)
        entry = self._days.get(day)
        if entry is not None:
            if entry.task is not None and not entry.task.done():
                return entry  # a read under way: shared
            fresh = self._monotonic_s() - entry.started_s < RECON_STATUS_OPEN_REUSE_S
            if entry.closed == closed and (fresh or (closed and entry.error is None)):
                return entry  # a closed day read once is kept; the rest until the window ends
        entry = _Day(closed=closed, started_s=self._monotonic_s())
        previous = self._days.get(day)
        if previous is not None:  # keep showing the last figures while the new ones are read
            entry.summary, entry.as_of_ms = previous.summary, previous.as_of_ms
        entry.task = asyncio.ensure_future(self._read(day, entry))
        self._days[day] = entry
        return entry

    async def _read(self, day: datetime.date, entry: _Day) -> None:
        from_ms, to_ms = recon.day_bounds(day)
        as_of_ms = self._clock_ms()
        try:
            answers = await self._read_day(from_ms, min(to_ms, as_of_ms + 1))
        except Exception as exc:  # a shard down, a statement timeout: said, and retried later
            entry.error = str(exc) or type(exc).__name__
            return
        entry.summary, entry.as_of_ms, entry.error = merge_summaries(answers), as_of_ms, None

    def _view(self, day: datetime.date, entry: _Day, now_ms: int) -> dict[str, Any]:
        _, end_ms = recon.day_bounds(day)
        closed = recon.is_closed(day, now_ms)
        reading = entry.task is not None and not entry.task.done()
        return {
            "day": day.isoformat(),
            "closed": closed,
            # closed: the files are final; before: GET /v1/reconciliation-files/{day}?provisional=true
            "closes_at": _iso(end_ms + recon.CLOSE_GRACE_MS),
            "summary_state": "reading" if reading and entry.summary is None else "error" if entry.error else "read",
            "summary": entry.summary,
            # the summary counts rows recorded before this instant (a closed day's: all of them)
            "summary_as_of": _iso(entry.as_of_ms) if entry.as_of_ms is not None else None,
            "error": entry.error,
        }
