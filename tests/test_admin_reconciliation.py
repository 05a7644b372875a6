"""GET /admin/v1/reconciliation, the operator's reconciliation status: the days shown and their
closing (pure, injected time); the cache that keeps the O(rows) reads off the console's
refresh (a closed day read once, the open day at most once per RECON_STATUS_OPEN_REUSE_S, a
failed read retried after as long, a slow read answered "reading" within RECON_STATUS_WAIT_S);
the shard's summary read against a real PostgreSQL equals the sum of every partner's file
made by the reconciliation file's own reader; and on the shared stack, the route needs the
admin token and counts the payments and refunds just made."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from conftest import Stack

from gateway.recon_status import (
    RECON_STATUS_OPEN_REUSE_S,
    RECON_STATUS_WAIT_S,
    ReconStatus,
    merge_summaries,
    status_days,
)
from ledger import pg, recon
from ledger.reads import _read_recon_summary_async

DAY_MS = recon.DAY_MS
# 2026-12-07 06:00 UTC: today open, the two days before closed.
NOW_MS = int(datetime.datetime(2026, 12, 7, 6, tzinfo=datetime.UTC).timestamp() * 1000)


# ---- pure ------------------------------------------------------------------------------------
def test_the_days_shown_are_today_and_the_two_before_newest_first() -> None:
    assert status_days(NOW_MS) == [datetime.date(2026, 12, 7), datetime.date(2026, 12, 6), datetime.date(2026, 12, 5)]
    midnight = int(datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC).timestamp() * 1000)
    assert status_days(midnight)[0] == datetime.date(2027, 1, 1)
    assert status_days(midnight - 1)[:2] == [datetime.date(2026, 12, 31), datetime.date(2026, 12, 30)]


def test_shards_merge_into_the_files_summary_with_the_settlement_net() -> None:
    merged = merge_summaries(
        [
            [
                {"kind": "payment", "currency": "CNY", "rows": 2, "total_minor": 1500},
                {"kind": "refund", "currency": "CNY", "rows": 1, "total_minor": 200},
            ],
            [
                {"kind": "payment", "currency": "CNY", "rows": 1, "total_minor": 25},
                {"kind": "payment_to_customer", "currency": "JPY", "rows": 4, "total_minor": 9000},
                {"kind": "refund", "currency": "JPY", "rows": 1, "total_minor": 10},
            ],
        ]
    )
    assert merged["rows"] == 9
    assert merged["totals"] == [
        {"kind": "payment", "currency": "CNY", "count": 3, "total": "15.25", "total_minor": 1525},
        {"kind": "payment_to_customer", "currency": "JPY", "count": 4, "total": "9000", "total_minor": 9000},
        {"kind": "refund", "currency": "CNY", "count": 1, "total": "2.00", "total_minor": 200},
        {"kind": "refund", "currency": "JPY", "count": 1, "total": "10", "total_minor": 10},
    ]
    # payments to customers are not the settlement account's
    assert merged["settlement_net"] == [
        {"currency": "CNY", "net": "13.25", "net_minor": 1325},
        {"currency": "JPY", "net": "-10", "net_minor": -10},
    ]
    assert merge_summaries([[], []]) == {"rows": 0, "totals": [], "settlement_net": []}


class FakeShards:
    """The shards' recon_summary reads: counted, optionally slow or failing."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def read(self, from_ms: int, to_ms: int) -> list[list[dict[str, Any]]]:
        self.reads.append((from_ms, to_ms))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("shard 1 unreachable")
        return [[{"kind": "payment", "currency": "CNY", "rows": len(self.reads), "total_minor": 100}]]


def test_a_closed_day_is_read_once_and_the_open_day_once_per_window() -> None:
    async def scenario() -> None:
        shards, clock = FakeShards(), {"ms": NOW_MS, "s": 1000.0}
        status = ReconStatus(shards.read, clock_ms=lambda: clock["ms"], monotonic_s=lambda: clock["s"])
        first = await status.status()
        assert [d["day"] for d in first["days"]] == ["2026-12-07", "2026-12-06", "2026-12-05"]
        assert [d["closed"] for d in first["days"]] == [False, True, True]
        assert first["days"][0]["closes_at"] == "2026-12-08T00:10:00.000Z"
        assert all(d["summary_state"] == "read" and d["summary"]["rows"] >= 1 for d in first["days"])
        assert len(shards.reads) == 3
        # today is read up to now (+1 ms), the closed days whole
        today_start = recon.day_bounds(datetime.date(2026, 12, 7))[0]
        assert (today_start, NOW_MS + 1) in shards.reads
        assert first["days"][0]["summary_as_of"] == "2026-12-07T06:00:00.000Z"

        for _ in range(5):  # the console's refreshes, within the window: no read at all
            clock["s"] += 2.0
            clock["ms"] += 2000
            await status.status()
        assert len(shards.reads) == 3

        clock["s"] += RECON_STATUS_OPEN_REUSE_S
        clock["ms"] += int(RECON_STATUS_OPEN_REUSE_S * 1000)
        again = await status.status()
        assert len(shards.reads) == 4  # only the open day again
        assert again["days"][0]["summary"]["rows"] == 4 and again["days"][1]["summary"]["rows"] <= 3

    asyncio.run(scenario())


def test_a_day_that_closes_is_read_again_and_old_days_are_dropped() -> None:
    async def scenario() -> None:
        shards, clock = FakeShards(), {"ms": NOW_MS, "s": 0.0}
        status = ReconStatus(shards.read, clock_ms=lambda: clock["ms"], monotonic_s=lambda: clock["s"])
        await status.status()
        # past midnight and the grace: 12-07 is closed now, read once more, whole; 12-05 is gone
        clock["ms"] = recon.day_bounds(datetime.date(2026, 12, 7))[1] + recon.CLOSE_GRACE_MS
        clock["s"] += 1.0
        shards.reads.clear()
        later = await status.status()
        assert [d["day"] for d in later["days"]] == ["2026-12-08", "2026-12-07", "2026-12-06"]
        assert [d["closed"] for d in later["days"]] == [False, True, True]
        assert sorted(shards.reads) == sorted(
            [
                recon.day_bounds(datetime.date(2026, 12, 7)),
                (recon.day_bounds(datetime.date(2026, 12, 8))[0], clock["ms"] + 1),
            ]
        )

    asyncio.run(scenario())


def test_a_failed_read_is_said_and_retried_only_after_the_window() -> None:
    async def scenario() -> None:
        shards, clock = FakeShards(), {"ms": NOW_MS, "s": 0.0}
        shards.fail = True
        status = ReconStatus(shards.read, clock_ms=lambda: clock["ms"], monotonic_s=lambda: clock["s"])
        failed = await status.status()
        assert [d["summary_state"] for d in failed["days"]] == ["error"] * 3
        assert failed["days"][1]["error"] == "shard 1 unreachable" and failed["days"][1]["summary"] is None
        clock["s"] += 2.0
        await status.status()
        assert len(shards.reads) == 3  # not on every refresh
        shards.fail = False
        clock["s"] += RECON_STATUS_OPEN_REUSE_S
        healed = await status.status()
        assert len(shards.reads) == 6 and [d["summary_state"] for d in healed["days"]] == ["read"] * 3
        assert all(d["error"] is None for d in healed["days"])

    asyncio.run(scenario())


def test_a_slow_read_answers_reading_within_the_wait_and_is_shared() -> None:
    async def scenario() -> None:
        shards, clock = FakeShards(), {"ms": NOW_MS, "s": 0.0}
        shards.gate = asyncio.Event()
        status = ReconStatus(shards.read, clock_ms=lambda: clock["ms"], monotonic_s=lambda: clock["s"])
        started = time.monotonic()
        one, two = await asyncio.gather(status.status(), status.status())
        waited = time.monotonic() - started
        assert RECON_STATUS_WAIT_S * 0.9 <= waited < RECON_STATUS_WAIT_S + 1.0, waited
        assert [d["summary_state"] for d in one["days"]] == ["reading"] * 3 == [d["summary_state"] for d in two["days"]]
        assert len(shards.reads) == 3  # two callers, one read per day
        shards.gate.set()
        await asyncio.sleep(0)
        done = await status.status()
        assert [d["summary_state"] for d in done["days"]] == ["read"] * 3 and len(shards.reads) == 3

    asyncio.run(scenario())


# ---- the shard's read against a real PostgreSQL: the files' own reader agrees ---------------
def test_the_shard_summary_is_the_sum_of_every_partners_file(stack: Stack) -> None:
    from test_review_fixes import extra_database

    asyncio.run(_summary_equals_files(extra_database(stack, "qp_recon_summary")))


async def _summary_equals_files(dsn: str) -> None:
    day = datetime.date(2026, 12, 6)
    from_ms, to_ms = recon.day_bounds(day)
    partners = ["ptn_a", "ptn_b", "ptn_c"]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await pg.ensure_schema(conn, 0, 1)
            await conn.execute("TRUNCATE transfers CASCADE")
            # 3,000 rows around the day: payments to the partner's settlement account, to a
            # customer (every 7th), to another partner's settlement account (every 11th: a
            # payment to a customer as far as this partner's file goes), refunds (every 13th),
            # Rejected ones (every 5th), fundings without a partner (every 17th), two currencies,
            # and rows just before and after the day.
            await conn.execute(
                "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
                " status, created_at_ms, partner_id, agreement_id, creditor_account, reasons)"
                " SELECT 'trf_' || i, i,"
                "  CASE WHEN i % 17 = 0 THEN 'funding' WHEN i % 13 = 0 THEN 'refund' ELSE 'payment' END,"
                "  CASE WHEN i % 13 = 0 THEN 'set_' || p ELSE 'acc_' || (i % 50) END,"
                "  CASE WHEN i % 13 = 0 THEN 'acc_' || (i % 50) ELSE c END,"
                "  1 + i % 997, CASE WHEN i % 3 = 0 THEN 'JPY' ELSE 'CNY' END,"
                "  CASE WHEN i % 5 = 0 THEN 'Rejected' WHEN i % 13 = 0 THEN 'Succeeded'"
                "   ELSE 'AcceptedSettlementCompleted' END,"
                "  $1::bigint + (i - 5) * ($2::bigint - $1::bigint) / 2990,"
                "  CASE WHEN i % 17 = 0 THEN NULL ELSE p END, 'agr_' || i, c, '{}'::text[]"
                " FROM (SELECT i, ($3::text[])[1 + i % 3] AS p,"
                "   CASE WHEN i % 7 = 0 THEN 'acc_c' || i WHEN i % 11 = 0 THEN 'set_ptn_other'"
                "    ELSE 'set_' || ($3::text[])[1 + i % 3] END AS c"
                "  FROM generate_series(1, 3000) AS i) AS g",
                from_ms,
                to_ms,
                partners,
            )
            outside = await conn.fetchval(
                "SELECT count(*) FROM transfers WHERE created_at_ms < $1 OR created_at_ms >= $2", from_ms, to_ms
            )
            assert outside == 10  # i < 5 before the day, i >= 2995 from its end on
        worker: Any = SimpleNamespace(read_pool=pool)
        summary = merge_summaries([await _read_recon_summary_async(worker, from_ms, to_ms)])

        # The same day, one file per partner, through pg.partner_day_transfers and recon.Reconciliation.
        totals: dict[tuple[str, str], list[int]] = {}
        net: dict[str, int] = {}
        rows = 0
        async with pool.acquire() as conn:
            for partner_id in partners:
                report = recon.Reconciliation(partner_id, day, provisional=False, generated_at_ms=to_ms)
                after = None
                while True:
                    page = await pg.partner_day_transfers(conn, partner_id, from_ms, to_ms, after, 500)
                    report.add(wire for _, wire in page)
                    if len(page) < 500:
                        break
                    after = (page[-1][0][0], page[-1][0][1])
                assert report.unreadable == 0
                rows += report.rows
                for key, (count, total_minor) in report.totals.items():
                    seen = totals.setdefault(key, [0, 0])
                    seen[0] += count
                    seen[1] += total_minor
                for currency, value in report.settlement_net().items():
                    net[currency] = net.get(currency, 0) + value
        assert rows > 1000 and summary["rows"] == rows
        assert {(t["kind"], t["currency"]): [t["count"], t["total_minor"]] for t in summary["totals"]} == totals
        assert {n["currency"]: n["net_minor"] for n in summary["settlement_net"]} == net
        assert {kind for kind, _ in totals} == {"payment", "payment_to_customer", "refund"}
    finally:
        await pool.close()


# ---- on the shared stack ------------------------------------------------------------------
def test_reconciliation_status_needs_the_admin_token(stack: Stack) -> None:
    assert stack.call("GET", "/admin/v1/reconciliation").status == 401
    partner = stack.new_partner("Recon Status Auth Partner")
    refused = stack.call("GET", "/admin/v1/reconciliation", token=partner["token"])
    assert refused.status == 401 and refused.body["code"] == "QP.Auth.Admin", refused.body


def test_reconciliation_status_counts_todays_payments_and_refunds(stack: Stack) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now.hour == 23 and now.minute >= 58:
        pytest.skip("too close to midnight UTC for a one-day test")
    partner = stack.new_partner("Recon Status Partner")
    customer = stack.new_customer(partner, funding="100.00")
    paid = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "12.00")
    assert paid.body["status"] == "AcceptedSettlementCompleted", paid.body
    refund = stack.call(
        "POST",
        f"/v1/quick-payments/{paid.body['payment_id']}/refunds",
        {"amount": "2.00"},
        token=partner["token"],
        headers={"x-idempotency-key": uuid.uuid4().hex},
    )
    assert refund.body["status"] == "Succeeded", refund.body
    made_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # An earlier test may have had today counted before these rows: wait for a count after them
    # (at most one window of RECON_STATUS_OPEN_REUSE_S per gateway process).
    deadline = time.monotonic() + RECON_STATUS_OPEN_REUSE_S + 15
    while True:
        reply = stack.admin("GET", "/admin/v1/reconciliation")
        assert reply.status == 200, reply.body
        today = reply.body["days"][0]
        if today["summary_state"] == "read" and today["summary_as_of"] > made_at:
            break
        assert time.monotonic() < deadline, today
        time.sleep(1.0)
    days = reply.body["days"]
    assert [d["day"] for d in days] == [(now.date() - datetime.timedelta(days=n)).isoformat() for n in range(3)]
    assert [d["closed"] for d in days][1:] == [True, True] and days[0]["closed"] is False
    assert all(d["summary_state"] in ("read", "reading") for d in days), days
    totals = {(t["kind"], t["currency"]): t for t in today["summary"]["totals"]}
    assert totals[("payment", "CNY")]["count"] >= 1 and totals[("payment", "CNY")]["total_minor"] >= 1200
    assert totals[("refund", "CNY")]["count"] >= 1 and totals[("refund", "CNY")]["total_minor"] >= 200
    assert today["summary"]["rows"] >= 2


def test_every_state_of_a_day_matches_the_document() -> None:
    """Read, reading and error days against the documented ReconciliationStatus schema (the
    shared stack shows Schemathesis only what it has at that moment)."""
    import jsonschema

    from gateway.openapi import openapi_document

    schema = {"$ref": "#/components/schemas/ReconciliationStatus", "components": openapi_document()["components"]}
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())

    async def scenario() -> list[dict[str, Any]]:
        shards, clock = FakeShards(), {"ms": NOW_MS, "s": 0.0}
        status = ReconStatus(shards.read, clock_ms=lambda: clock["ms"], monotonic_s=lambda: clock["s"])
        shards.gate = asyncio.Event()
        reading = await status.status()
        shards.gate.set()
        await asyncio.sleep(0)
        read = await status.status()
        shards.fail, shards.gate = True, None
        clock["s"] += RECON_STATUS_OPEN_REUSE_S
        failed = await status.status()
        return [reading, read, failed]

    answers = asyncio.run(scenario())
    assert [answers[0]["days"][0]["summary_state"], answers[1]["days"][0]["summary_state"]] == ["reading", "read"]
    assert answers[2]["days"][0]["summary_state"] == "error"
    for answer in answers:
        validator.validate(answer)
