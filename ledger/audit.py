"""The conservation audit behind `quickpay check`.

Per shard, in one REPEATABLE READ snapshot:
  * every account's stored balance equals its journal replay (credits - debits of
    money-moving rows), and no row is unbalanced (positive amount, two accounts);
  * the shard's balances sum to zero (each shard balances through its clearing stripe).
Across shards:
  * clearing stripes sum to the credits in flight: cross-shard debit legs whose
    credit leg the creditor shard has not committed yet;
  * every credit leg has its debit leg, and no transfer id is applied twice;
  * a credit leg the creditor shard held (recorded Rejected with BALANCE_OVERFLOW because
    applying it would leave int64) moved nothing: its amount is still in the debtor
    shard's clearing stripe, so it counts as in flight, and it is listed in `held` for
    operators (a notice, not a conservation failure);
  * every payment's refunded amount equals what its succeeded refunds returned and never
    exceeds the payment, and every refund reverses a payment of its own partner to that
    partner's settlement stripe on the same shard;
  * so the sum of all customer, settlement and funding balances plus the credits in
    flight is zero — money is neither created nor lost.
On a live stack the shards are read one after another, so a payment can be seen
on its creditor shard but not yet on its debtor's; such a pair is re-read, and
only a mismatch that persists is reported.

Then, once: every row of every table the readers decode (ledger/rows.py DECODERS), on every
shard, goes through the same decoder the readers use; each row that does not decode (the
rows the readers quarantine) is a problem naming its shard, table and key.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from kernel.ids import CLEARING_ACCOUNT

from .rows import DECODERS, RowError, decode_agreement

__all__ = ["AuditReport", "audit", "audit_once"]


@dataclass
class AuditReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    in_flight_minor: int = 0
    in_flight_count: int = 0
    total_minor: int = 0
    # Credit legs held by their creditor shard (see Code.HELD): part of in_flight_*.
    held: list[dict[str, Any]] = field(default_factory=list)
    held_minor: int = 0
    held_count: int = 0
    # Rows the readers cannot read (and quarantine): {shard, table, key, problem}, the first
    # UNREADABLE_LISTED_MAX of them; unreadable_count counts all.
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    unreadable_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        # The report's JSON, field by field (the same shape as ledger/model.py's to_wire: a
        # literal dict per type is the fastest and the clearest; dataclasses.asdict deep-copies).
        return {
            "ok": self.ok,
            "problems": self.problems,
            "shards": self.shards,
            "in_flight_minor": self.in_flight_minor,
            "in_flight_count": self.in_flight_count,
            "total_minor": self.total_minor,
            "held_minor": self.held_minor,
            "held_count": self.held_count,
            "held": self.held,
            "unreadable_count": self.unreadable_count,
            "unreadable": self.unreadable,
        }


UNREADABLE_LISTED_MAX = 1_000
# Rows fetched at a time by the scan's cursor (a bound on its memory, whatever the table's size).
SCAN_FETCH_ROWS = 5_000


async def scan_rows(dsn: str, shard: int, at_ms: int, report: AuditReport) -> None:
    """Decode every row of every table the readers read; add each that fails to the report."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for table, decode in DECODERS.items():
                async for row in conn.cursor(f"SELECT * FROM {table}", prefetch=SCAN_FETCH_ROWS):
                    try:
                        if table == "agreements":
                            decode_agreement(row, at_ms)  # its limit windows now, as the load places them
                        else:
                            decode(row)
                    except RowError as exc:
                        report.unreadable_count += 1
                        if len(report.unreadable) < UNREADABLE_LISTED_MAX:
                            report.unreadable.append(
                                {"shard": shard, "table": exc.table, "key": exc.key, "problem": exc.problem}
                            )
    finally:
        await conn.close()


async def _read_shard(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            mismatched = await conn.fetch(
                "WITH moves AS ("
                "  SELECT credit_account AS id, amount_minor AS delta FROM transfers WHERE status <> 'Rejected'"
                "  UNION ALL"
                "  SELECT debit_account, -amount_minor FROM transfers WHERE status <> 'Rejected'),"
                " replay AS (SELECT id, sum(delta) AS replayed FROM moves GROUP BY id)"
                " SELECT a.id, a.balance_minor, coalesce(r.replayed, 0) AS replayed"
                " FROM accounts a LEFT JOIN replay r ON r.id = a.id"
                " WHERE a.balance_minor <> coalesce(r.replayed, 0) LIMIT 20"
            )
            orphans = await conn.fetchval(
                "SELECT count(*) FROM transfers t WHERE status <> 'Rejected' AND NOT EXISTS"
                " (SELECT 1 FROM accounts a WHERE a.id = t.credit_account)"
            )
            unbalanced = await conn.fetchval(
                "SELECT count(*) FROM transfers WHERE amount_minor <= 0 OR debit_account = credit_account"
            )
            # numeric sums, read as ints: a broken shard's totals may lie outside bigint,
            # and the audit must report that, not fail on the cast.
            total = int(await conn.fetchval("SELECT coalesce(sum(balance_minor), 0) FROM accounts"))
            clearing = await conn.fetchval("SELECT balance_minor FROM accounts WHERE id = $1", CLEARING_ACCOUNT)
            debit_legs = await conn.fetch(
                "SELECT id, amount_minor FROM transfers WHERE kind = 'payment' AND credit_account = $1"
                " AND status <> 'Rejected'",
                CLEARING_ACCOUNT,
            )
            credit_legs = await conn.fetch(
                "SELECT id, amount_minor, status, credit_account, reasons FROM transfers WHERE kind = 'credit_leg'"
            )
            # Refunds: each payment's refunded_minor is what its succeeded refunds returned, never
            # more than the payment; each refund returns a payment of its own partner, from that
            # partner's settlement stripe to the payment's debtor (so it never crossed shards).
            refund_problems = await conn.fetch(
                "WITH r AS (SELECT details->>'payment_id' AS payment_id, sum(amount_minor) AS refunded"
                "  FROM transfers WHERE kind = 'refund' AND status <> 'Rejected'"
                "  GROUP BY 1)"
                " SELECT p.id, p.amount_minor, p.refunded_minor, coalesce(r.refunded, 0) AS refunded"
                " FROM transfers p FULL JOIN r ON r.payment_id = p.id"
                " WHERE (p.id IS NULL OR p.refunded_minor <> coalesce(r.refunded, 0)"
                "        OR p.refunded_minor > p.amount_minor) LIMIT 20"
            )
            misdirected_refunds = await conn.fetchval(
                "SELECT count(*) FROM transfers f LEFT JOIN transfers p ON p.id = f.details->>'payment_id'"
                " WHERE f.kind = 'refund' AND (p.id IS NULL OR p.kind <> 'payment' OR p.partner_id <> f.partner_id"
                " OR f.debit_account <> p.credit_account OR f.credit_account <> p.debit_account)"
            )
            meta = {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM meta")}
            counts = await conn.fetchrow(
                "SELECT count(*) AS transfers, count(*) FILTER (WHERE status = 'Rejected') AS rejected,"
                " count(*) FILTER (WHERE status = 'AcceptedSettlementInProcess') AS in_process FROM transfers"
            )
    finally:
        await conn.close()
    return {
        "mismatched": [{**dict(r), "replayed": int(r["replayed"])} for r in mismatched],
        "refund_problems": [
            {
                "payment_id": r["id"],
                "amount_minor": r["amount_minor"],
                "refunded_minor": r["refunded_minor"],
                "refunds_minor": int(r["refunded"]),
            }
            for r in refund_problems
        ],
        "misdirected_refunds": misdirected_refunds,
        "orphans": orphans,
        "unbalanced": unbalanced,
        "total": total,
        "clearing": clearing or 0,
        "meta": meta,
        "counts": dict(counts),
        "debit_legs": {r["id"]: r["amount_minor"] for r in debit_legs},
        "credit_legs": {r["id"]: r["amount_minor"] for r in credit_legs},
        "held_legs": {
            r["id"]: {
                "transfer_id": r["id"],
                "creditor_account": r["credit_account"],
                "amount_minor": r["amount_minor"],
                "reasons": list(r["reasons"]),
            }
            for r in credit_legs
            if r["status"] == "Rejected"
        },
    }


async def audit_once(dsns: list[str]) -> AuditReport:
    shards = [await _read_shard(dsn) for dsn in dsns]
    report = AuditReport(ok=True)
    debit_legs: dict[str, int] = {}
    credit_legs: dict[str, int] = {}
    held: dict[str, dict[str, Any]] = {}
    for index, shard in enumerate(shards):
        if shard["meta"].get("shard") not in (None, str(index)):
            report.problems.append(f"DSN #{index} holds shard {shard['meta'].get('shard')}")
        for row in shard["mismatched"]:
            report.problems.append(
                f"shard {index}: account {row['id']} balance {row['balance_minor']} != journal {row['replayed']}"
            )
        for row in shard["refund_problems"]:
            report.problems.append(
                f"shard {index}: payment {row['payment_id']} of {row['amount_minor']} shows refunded "
                f"{row['refunded_minor']} but its refunds returned {row['refunds_minor']}"
            )
        if shard["misdirected_refunds"]:
            report.problems.append(
                f"shard {index}: {shard['misdirected_refunds']} refunds do not reverse "
                "a payment of their partner to its settlement account"
            )
        if shard["orphans"]:
            report.problems.append(f"shard {index}: {shard['orphans']} transfers credit unknown accounts")
        if shard["unbalanced"]:
            report.problems.append(f"shard {index}: {shard['unbalanced']} unbalanced journal rows")
        if shard["total"] != 0:
            report.problems.append(f"shard {index}: balances sum to {shard['total']}, not 0")
        for transfer_id, amount in shard["debit_legs"].items():
            if transfer_id in debit_legs:
                report.problems.append(f"transfer {transfer_id} debited on two shards")
            debit_legs[transfer_id] = amount
        for transfer_id, amount in shard["credit_legs"].items():
            if transfer_id in credit_legs:
                report.problems.append(f"transfer {transfer_id} credited on two shards")
            credit_legs[transfer_id] = amount
        for transfer_id, leg in shard["held_legs"].items():
            held[transfer_id] = {"shard": index, **leg}
        report.shards.append(
            {
                "shard": index,
                **shard["counts"],
                "clearing_minor": shard["clearing"],
                "balance_sum_minor": shard["total"],
            }
        )
    for transfer_id, amount in credit_legs.items():
        if transfer_id not in debit_legs:
            report.problems.append(f"credit leg {transfer_id} has no debit leg")
        elif debit_legs[transfer_id] != amount:
            report.problems.append(f"credit leg {transfer_id} amount {amount} != debit {debit_legs[transfer_id]}")
    # Held legs moved nothing on the creditor shard: their money is still in clearing.
    in_flight = {t: a for t, a in debit_legs.items() if t not in credit_legs or t in held}
    report.held = sorted(held.values(), key=lambda h: str(h["transfer_id"]))[:100]
    report.held_count = len(held)
    report.held_minor = sum(h["amount_minor"] for h in held.values())
    report.in_flight_minor = sum(in_flight.values())
    report.in_flight_count = len(in_flight)
    clearing_total = sum(s["clearing"] for s in shards)
    if clearing_total != report.in_flight_minor:
        report.problems.append(
            f"clearing stripes hold {clearing_total} but credits in flight are {report.in_flight_minor}"
        )
    report.total_minor = sum(s["total"] for s in shards) - clearing_total + report.in_flight_minor
    if report.total_minor != 0:
        report.problems.append(f"balances plus credits in flight sum to {report.total_minor}, not 0")
    report.ok = not report.problems
    return report


async def audit(
    dsns: list[str], *, attempts: int = 5, pause_s: float = 0.5, rows: bool = True, at_ms: int | None = None
) -> AuditReport:
    report = await audit_once(dsns)
    for _ in range(attempts - 1):
        if report.ok:
            break
        await asyncio.sleep(pause_s)
        report = await audit_once(dsns)
    if rows:
        now_ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
        for shard, dsn in enumerate(dsns):
            await scan_rows(dsn, shard, now_ms, report)
        report.problems.extend(
            f"shard {u['shard']}: {u['table']} row {u['key']} cannot be read: {u['problem']}" for u in report.unreadable
        )
        if report.unreadable_count > len(report.unreadable):
            report.problems.append(f"... and {report.unreadable_count - len(report.unreadable)} more unreadable rows")
        report.ok = not report.problems
    return report
