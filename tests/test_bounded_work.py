"""Bounded work per request (issue 17, point 4), end to end on a real stack:

- a partner cannot create more pending (AwaitingAuthorisation) agreements than its caps, per
  customer account and in total (409 QP.Agreement.TooManyPending in the one error shape), also
  after its shard worker is SIGKILLed and reloads; while it hammers, another partner's balance
  reads of the same account are answered;
- a pending agreement expires after --pending-expiry-s: it reads Expired, cannot be
  authorised (409) or pay (422), no longer counts against the caps, and the notifier emits
  agreement.expired;
- the list queries (reconciliation page, an account's transactions, fraud decisions, alerts,
  the event feed by type) read a bounded number of rows through an index, whatever the
  table holds (EXPLAIN ANALYZE on a database filled with rejected rows)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from conftest import Stack, plan_nodes, start_stack, stop_stack

from ledger import pg

PENDING_EXPIRY_S = 30
PER_ACCOUNT = 3
IN_TOTAL = 8  # two shards: 4 per shard (ledger.state.pending_share)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(
        tmp_path_factory.mktemp("bounded"),
        extra=(
            "--pending-expiry-s",
            str(PENDING_EXPIRY_S),
            "--pending-per-account-max",
            str(PER_ACCOUNT),
            "--pending-per-partner-max",
            str(IN_TOTAL),
        ),
    )
    try:
        yield s
    finally:
        stop_stack(s)


def _ask(own: Stack, partner: dict[str, Any], account: str) -> Any:
    return own.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "10.00", "daily_limit": "100.00"},
        token=partner["token"],
    )


def _assert_too_many(reply: Any, path: str) -> None:
    assert reply.status == 409, reply.body
    assert reply.body["code"] == "QP.Agreement.TooManyPending", reply.body
    assert set(reply.body) >= {"code", "message", "errors"} and reply.body["errors"][0]["path"] == path, reply.body
    assert reply.body["errors"][0]["code"] == "QP.Agreement.TooManyPending"


# Agreements the tests created, for the expiry test at the end: (token owner, agreement id, authorise_by).
_created: list[dict[str, Any]] = []


def test_pending_caps_per_account_and_in_total_and_balance_reads_stay_answered(own: Stack) -> None:
    hostile, good = own.new_partner("Pending Hog"), own.new_partner("Good Partner")
    customer = own.new_customer(good, shard=0)
    account = customer["account"]
    for _ in range(PER_ACCOUNT):
        reply = _ask(own, hostile, account)
        assert reply.status == 201 and reply.body["status"] == "AwaitingAuthorisation", reply.body
        assert reply.body["authorise_by"] is not None
        _created.append(reply.body)
    _assert_too_many(_ask(own, hostile, account), "$.debtor_account")
    # Pending is not consent: the hostile partner sees nothing; the good one reads its customer.
    assert own.call("GET", f"/v1/accounts/{account}/balance", token=hostile["token"]).status == 404
    # The total: 4 per shard. One more on another shard-0 account fills shard 0's share ...
    second = own.new_account(shard=0)
    reply = _ask(own, hostile, second)
    assert reply.status == 201, reply.body
    _created.append(reply.body)
    _assert_too_many(_ask(own, hostile, own.new_account(shard=0)), "$")
    # ... and another partner, or this partner on the other shard, is not affected.
    assert _ask(own, good, second).status == 201
    reply = _ask(own, hostile, own.new_account(shard=1))
    assert reply.status == 201, reply.body
    _created.append(reply.body)

    # The hostile partner hammers creates (all refused) while the good one reads balances.
    refused: list[int] = []

    def hammer() -> None:
        for _ in range(150):
            refused.append(_ask(own, hostile, account).status)

    thread = threading.Thread(target=hammer)
    thread.start()
    reads = [own.call("GET", f"/v1/accounts/{account}/balance", token=good["token"]) for _ in range(150)]
    thread.join(120)
    assert not thread.is_alive()
    assert all(r.status == 200 and r.body["balance"] == "1000.00" for r in reads), {r.status for r in reads}
    assert set(refused) == {409}, set(refused)
    # The caps hold across a restart: the counts are derived from the loaded agreements.
    old = own.shard_worker_pids(0)
    assert old
    started = time.monotonic()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        new = own.shard_worker_pids(0)
        if new and not set(new) & set(old):
            break
        assert time.monotonic() < deadline, "shard 0's worker was not restarted"
        time.sleep(0.2)
    own.wait_ready(60)
    reply = _ask(own, hostile, account)
    while reply.status == 503 and time.monotonic() < deadline:  # the gateway reconnecting
        time.sleep(0.2)
        reply = _ask(own, hostile, account)
    # (the agreements above must not have expired meanwhile, or this would prove nothing)
    assert time.monotonic() - started < PENDING_EXPIRY_S - 5, "restart too slow for this test's expiry"
    _assert_too_many(reply, "$.debtor_account")
    assert own.call("GET", f"/v1/accounts/{account}/balance", token=good["token"]).status == 200
    _created.append({"partner": hostile, "account": account})


def test_a_pending_agreement_expires_cannot_be_authorised_and_stops_counting(own: Stack) -> None:
    assert _created, "runs after the caps test"
    hostile = _created[-1]["partner"]
    account = _created[-1]["account"]
    first = _created[0]
    due_ms = max(
        int(datetime.datetime.fromisoformat(a["authorise_by"].replace("Z", "+00:00")).timestamp() * 1000)
        for a in _created[:-1]
    )
    created_ms = int(datetime.datetime.fromisoformat(first["created_at"].replace("Z", "+00:00")).timestamp() * 1000)
    deadline_ms = int(datetime.datetime.fromisoformat(first["authorise_by"].replace("Z", "+00:00")).timestamp() * 1000)
    assert deadline_ms - created_ms == PENDING_EXPIRY_S * 1000
    while time.time() * 1000 <= due_ms + 300:
        time.sleep(0.2)
    agreement_id = first["agreement_id"]
    read = own.call("GET", f"/v1/agreements/{agreement_id}", token=hostile["token"])
    assert read.status == 200 and read.body["status"] == "Expired", read.body
    # The customer can no longer authorise it; it cannot pay; its partner may still revoke it.
    refused = own.admin("POST", f"/admin/v1/agreements/{agreement_id}/authorise")
    assert refused.status == 409 and refused.body["code"] == "QP.Agreement.InvalidTransition", refused.body
    assert "Expired" in refused.body["message"]
    paid = own.pay(hostile, agreement_id, hostile["settlement_account"], "1.00")
    assert paid.status == 422 and paid.body["code"] == "QP.Agreement.Expired", paid.body
    # Expired ones do not count: the partner may ask again over the same account.
    again = _ask(own, hostile, account)
    assert again.status == 201, again.body
    revoked = own.call("DELETE", f"/v1/agreements/{agreement_id}", token=hostile["token"])
    assert revoked.status == 200 and revoked.body["status"] == "Revoked", revoked.body
    # The notifier found the expiry (no timer: derived from authorise_by).
    deadline = time.monotonic() + 60
    expired: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        feed = own.call("GET", "/v1/events?type=agreement.expired&limit=200", token=hostile["token"])
        assert feed.status == 200, feed.body
        expired = [e for e in feed.body["events"] if e["data"]["object"]["agreement_id"] == agreement_id]
        if expired:
            break
        time.sleep(0.5)
    assert len(expired) == 1, "no agreement.expired event for the pending agreement"
    assert expired[0]["data"]["object"]["status"] == "Expired"
    assert expired[0]["created_at"] == first["authorise_by"]


# ---- list queries read a bounded number of rows through an index -------------------------------
def _nodes(plan: Any) -> list[dict[str, Any]]:
    return plan_nodes(plan)


class _Analysing:
    """Runs EXPLAIN (ANALYZE, FORMAT JSON) of every fetch before running it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[tuple[str, list[dict[str, Any]]]] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        plan = await self.conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        self.plans.append((sql, _nodes(json.loads(plan) if isinstance(plan, str) else plan)))
        return await self.conn.fetch(sql, *args)

    def last(self) -> tuple[str, list[dict[str, Any]]]:
        return self.plans[-1]


def _scans(nodes: list[dict[str, Any]], relation: str) -> list[dict[str, Any]]:
    return [n for n in nodes if n.get("Relation Name") == relation]


def _read(node: dict[str, Any]) -> int:
    """Rows a scan node looked at: returned, plus removed by its filter or recheck."""
    return (
        int(node["Actual Rows"]) * int(node.get("Actual Loops", 1))
        + int(node.get("Rows Removed by Filter", 0))
        + int(node.get("Rows Removed by Index Recheck", 0))
    )


def test_list_queries_read_a_bounded_number_of_rows_through_an_index(own: Stack) -> None:
    from test_review_fixes import extra_database

    asyncio.run(_bounded_plans(extra_database(own, "qp_bounded_plans")))


async def _bounded_plans(dsn: str) -> None:
    from ledger import notify_store as store
    from ledger.worker import DECISIONS_SCAN_MAX, _read_decisions_async

    day_ms = 86_400_000
    now_ms = int(time.time() * 1000)
    day_start = now_ms - now_ms % day_ms - day_ms  # yesterday, a whole day
    rows = 200_000
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_custom_plan"})
    try:
        await pg.ensure_schema(conn, 0, 1)
        await conn.execute("TRUNCATE transfers, alerts, events CASCADE")
        # One day of journal: 1 in 5 rows is ptn_recon's, two thirds of those Rejected; every 4th
        # row debits acc_hot and is Rejected (1 in 250 of them accepted); 1 in 1,000 is blocked.
        await conn.execute(
            "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
            " status, created_at_ms, partner_id, agreement_id, reasons, fraud)"
            " SELECT 'pay_' || i, i, 'payment',"
            "  CASE WHEN i % 4 = 1 THEN 'acc_hot' ELSE 'acc_' || (i % 5000) END,"
            "  'set_' || CASE WHEN i % 5 = 0 THEN 'ptn_recon' ELSE 'ptn_other' END, 100, 'CNY',"
            "  CASE WHEN i % 4 = 1 AND i % 1000 <> 1 THEN 'Rejected'"
            "       WHEN i % 5 = 0 AND i % 3 <> 0 THEN 'Rejected' ELSE 'AcceptedSettlementCompleted' END,"
            "  $1::bigint + i * ($2::bigint / $3::bigint),"
            "  CASE WHEN i % 5 = 0 THEN 'ptn_recon' ELSE 'ptn_other' END, 'agr_' || (i % 5000), '{}'::text[],"
            '  CASE WHEN i % 1000 = 7 THEN \'{"decision": "block", "score": 90, "reasons": [{"rule_id": "r1"}]}\'::jsonb END'
            " FROM generate_series(1, $3::int) AS i",
            day_start,
            day_ms,
            rows,
        )
        await conn.execute(
            "INSERT INTO alerts (id, rule, account, at_ms, details)"
            " SELECT 'alr_' || i, 'r1', 'acc_' || (i % 500), $1::bigint - i, '{}'::jsonb"
            " FROM generate_series(1, 20000) AS i",
            now_ms,
        )
        await conn.execute(
            "INSERT INTO events (id, partner_id, type, created_at_ms, body)"
            " SELECT 'evt_' || i, 'ptn_feed', CASE WHEN i % 2000 = 0 THEN 'agreement.expired'"
            "  ELSE 'payment.completed' END, $1::bigint, '{}' FROM generate_series(1, 50000) AS i",
            now_ms,
        )
        for table in ("transfers", "alerts", "events"):
            await conn.execute(f"ANALYZE {table}")
        db = _Analysing(conn)

        # A reconciliation page: its rows only, in one range of transfers_partner_recon.
        page_max = 5_000
        after = None
        pages = 0
        total = 0
        while True:
            page = await pg.partner_day_transfers(
                db,
                "ptn_recon",
                day_start,
                day_start + day_ms,
                after,  # type: ignore[arg-type]
                page_max,
            )
            _sql, nodes = db.last()
            (scan,) = _scans(nodes, "transfers")
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan["Node Type"]
            assert scan["Index Name"] == "transfers_partner_recon"
            assert _read(scan) <= page_max, _read(scan)
            total += len(page)
            pages += 1
            if len(page) < page_max:
                break
            after = (page[-1][0][0], page[-1][0][1])
        expected = await conn.fetchval(
            "SELECT count(*) FROM transfers WHERE partner_id = 'ptn_recon' AND status <> 'Rejected'"
        )
        assert total == expected and pages == expected // page_max + 1
        assert all(wire["status"] != "Rejected" for _, wire in page)

        # An account with 50,000 rejected rows: a transactions page reads its page, not them.
        listed = await pg.list_account_transfers(db, "acc_hot", 2**62, 50)  # type: ignore[arg-type]
        _sql, nodes = db.last()
        scans = _scans(nodes, "transfers")
        assert {n.get("Index Name") for n in scans} == {"transfers_debit_moved", "transfers_credit_moved"}, scans
        assert all(_read(n) <= 50 for n in scans), [_read(n) for n in scans]
        assert len(listed) == 50 and all(t.status != "Rejected" for t in listed)

        # Fraud decisions: a filter that matches nothing reads at most DECISIONS_SCAN_MAX flagged
        # rows through transfers_flagged; without a filter, a page of the newest payments.
        class _Pool:
            def acquire(self) -> Any:
                class _Ctx:
                    async def __aenter__(self) -> Any:
                        return db

                    async def __aexit__(self, *exc: Any) -> None:
                        return None

                return _Ctx()

        worker = SimpleNamespace(read_pool=_Pool(), state=SimpleNamespace(next_seq=rows + 1))
        assert await _read_decisions_async(worker, "block", "no_such_rule", 50) == []  # type: ignore[arg-type]
        _sql, nodes = db.last()
        (scan,) = _scans(nodes, "transfers")
        assert scan.get("Index Name") == "transfers_flagged", scan["Node Type"]
        assert _read(scan) <= min(DECISIONS_SCAN_MAX, rows // 1000), _read(scan)
        blocked = await _read_decisions_async(worker, "block", "r1", 50)  # type: ignore[arg-type]
        assert len(blocked) == 50 and blocked[0]["seq"] > blocked[-1]["seq"]
        assert all(t["fraud"]["decision"] == "block" for t in blocked)
        newest = await _read_decisions_async(worker, None, None, 50)  # type: ignore[arg-type]
        _sql, nodes = db.last()
        (scan,) = _scans(nodes, "transfers")
        assert scan["Node Type"] in ("Index Scan", "Index Only Scan") and _read(scan) <= 50, (scan, _read(scan))
        assert [t["seq"] for t in newest] == list(range(rows, rows - 50, -1))

        # Alerts, newest first: an index, not a sort of all 20,000.
        found = await db.fetch("SELECT id, rule, account, at_ms, details FROM alerts ORDER BY at_ms DESC LIMIT $1", 100)
        _sql, nodes = db.last()
        (scan,) = _scans(nodes, "alerts")
        assert scan.get("Index Name") == "alerts_at" and _read(scan) <= 100, (scan["Node Type"], _read(scan))
        assert len(found) == 100

        # The event feed by type: the rare type's events only.
        events = await store.list_events(db, "ptn_feed", 0, "agreement.expired", 50, now_ms - 1)  # type: ignore[arg-type]
        _sql, nodes = db.last()
        (scan,) = _scans(nodes, "events")
        assert scan.get("Index Name") == "events_partner_type_seq" and _read(scan) <= 50, (scan, _read(scan))
        assert len(events) == 25
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pending_expiry_s", 0, "--pending-expiry-s"),
        ("pending_expiry_s", 30 * 86_400 + 1, "--pending-expiry-s"),
        ("pending_per_account_max", 0, "--pending-per-account-max"),
        ("pending_per_partner_max", 10_000_001, "--pending-per-partner-max"),
    ],
)
def test_pending_settings_out_of_range_are_refused_at_start(field: str, value: int, message: str) -> None:
    from ledger.worker import WorkerConfig

    config = WorkerConfig(shard=0, shard_count=1, dsn="unused", listen="unix:/nonexistent", peers={}, **{field: value})
    with pytest.raises(SystemExit, match=message):
        config.validate()
