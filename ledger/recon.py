"""Daily reconciliation files: a partner's accepted payments and succeeded refunds of one
UTC day, then a summary. Pure (no I/O): rows in, CSV text out; the gateway and
`quickpay recon` feed it from every shard's journal.

A row's day is the day its debtor shard recorded it (`created_at`). The file lists three
kinds: `payment` (credited to the partner's settlement account), `payment_to_customer`
(credited to a customer account) and `refund` (from the settlement account back to the
debtor). The summary gives count and total per kind and currency, and `settlement_net`:
payments minus refunds, which is exactly how the partner's settlement account moved over
the day, across all its stripes.

A day is final once it is over plus CLOSE_GRACE_MS (cross-shard credits still travelling
at midnight land by then; they do not change the file's rows, which are the debtor
shard's, but the grace keeps "final" meaning final). Before that, only a provisional file
is available, marked so in its first line.
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable
from typing import Any

from kernel.money import format_amount

__all__ = [
    "CLOSE_GRACE_MS",
    "COLUMNS",
    "DAY_MS",
    "RECON_ROWS_MAX",
    "Reconciliation",
    "day_bounds",
    "is_closed",
    "row_kind",
]

DAY_MS = 86_400_000
CLOSE_GRACE_MS = 10 * 60_000
# Rows one file may hold (a bound on the report's memory and time; a partner past it
# needs a narrower report, which this prototype does not offer).
RECON_ROWS_MAX = 500_000
COLUMNS = (
    "kind",
    "id",
    "created_at",
    "amount",
    "amount_minor",
    "currency",
    "agreement_id",
    "debtor_account",
    "creditor_account",
    "reference",
    "payment_id",
)


def day_bounds(day: datetime.date) -> tuple[int, int]:
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    start_ms = int(start.timestamp()) * 1000
    return start_ms, start_ms + DAY_MS


def is_closed(day: datetime.date, now_ms: int) -> bool:
    return now_ms >= day_bounds(day)[1] + CLOSE_GRACE_MS


def row_kind(row: dict[str, Any], settlement_account: str) -> str | None:
    """The file's kind of a journal row of this partner, or None (not in the file)."""
    if row["status"] == "Rejected":
        return None
    if row["kind"] == "refund":
        return "refund"
    if row["kind"] == "payment":
        return "payment" if row["creditor_account"] == settlement_account else "payment_to_customer"
    return None


def _iso(ms: int) -> str:
    return (
        datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Reconciliation:
    """Builds one file incrementally (rows in any order; the caller sorts if it wants)."""

    def __init__(self, partner_id: str, day: datetime.date, *, provisional: bool, generated_at_ms: int) -> None:
        self.partner_id = partner_id
        self.settlement_account = "set_" + partner_id
        self.day = day
        self.out = io.StringIO()
        self.writer = csv.writer(self.out, lineterminator="\n")
        if provisional:
            self.out.write(
                f"# PROVISIONAL: {day.isoformat()} is not closed yet (generated {_iso(generated_at_ms)}); "
                "rows may still be added\n"
            )
        self.writer.writerow(COLUMNS)
        self.totals: dict[tuple[str, str], list[int]] = {}
        self.rows = 0
        # Journal rows of this partner and day that could not be read (None from the reader,
        # which quarantined them, or a row these columns cannot show): the file says it is
        # incomplete, in its first line, and `quickpay check` names them.
        self.unreadable = 0

    def add(self, rows: Iterable[dict[str, Any] | None]) -> None:
        for row in rows:
            if row is None:
                self.unreadable += 1
                continue
            try:
                kind = row_kind(row, self.settlement_account)
                if kind is None:
                    continue
                currency = row["currency"]
                line = (
                    kind,
                    row["id"],
                    _iso(row["created_at_ms"]),
                    format_amount(row["amount_minor"], currency),
                    row["amount_minor"],
                    currency,
                    row["agreement_id"] or "",
                    row["debit_account"] if kind != "refund" else row["credit_account"],
                    row["creditor_account"] if kind != "refund" else row["debit_account"],
                    row["reference"] or "",
                    (row.get("details") or {}).get("payment_id", "") if kind == "refund" else "",
                )
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError):
                self.unreadable += 1
                continue
            if self.rows >= RECON_ROWS_MAX:
                raise ValueError(f"more than {RECON_ROWS_MAX} rows in one file")
            self.writer.writerow(line)
            total = self.totals.setdefault((kind, currency), [0, 0])
            total[0] += 1
            total[1] += row["amount_minor"]
            self.rows += 1

    def settlement_net(self) -> dict[str, int]:
        """Per currency: payments to the settlement account minus refunds from it."""
        net: dict[str, int] = {}
        for (kind, currency), (_, total) in self.totals.items():
            if kind == "payment":
                net[currency] = net.get(currency, 0) + total
            elif kind == "refund":
                net[currency] = net.get(currency, 0) - total
        return net

    def text(self) -> str:
        """The whole file: rows, a blank line, the summary."""
        self.out.write("\n")
        summary = csv.writer(self.out, lineterminator="\n")
        summary.writerow(("summary", "kind", "currency", "count", "total", "total_minor"))
        for (kind, currency), (count, total) in sorted(self.totals.items()):
            summary.writerow(("summary", kind, currency, count, format_amount(total, currency), total))
        for currency, net in sorted(self.settlement_net().items()):
            text = format_amount(abs(net), currency)
            summary.writerow(("summary", "settlement_net", currency, "", ("-" if net < 0 else "") + text, net))
        if self.unreadable:
            return (
                f"# INCOMPLETE: {self.unreadable} journal rows of this day could not be read and are "
                "left out (quarantined; `quickpay check` names them)\n" + self.out.getvalue()
            )
        return self.out.getvalue()
