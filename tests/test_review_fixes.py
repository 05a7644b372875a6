"""Regression tests for four review findings of issue 7, each against real processes:

1. transfer-cache eviction inside a batch: a retry of an old key in the same batch as new
   payments was decided as a NEW payment (primary-key violation at write, worker stopped);
2. a cross-shard credit leg that would push its creditor beyond INT64_MAX stopped the
   creditor shard's worker, and the relay's resend made it a crash loop;
3. transaction pages sorted by time but paged by seq, so a late credit leg was skipped;
4. start-up reloads (daily spend, fraud windows) scanned the whole journal.

One stack serves the module. Order matters: the pagination test injects a credit leg
with no debit leg (the audit would flag it), so it runs after the test that runs
`quickpay check`; the overflow test leaves shard 1's funding stripe near -INT64_MAX, so
the pagination test works on shard 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, Stack, plan_nodes, start_stack, stop_stack
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.ids import FUNDING_ACCOUNT, payment_id_for, shard_of_payment
from kernel.money import INT64_MAX, format_amount
from ledger import pg
from ledger.client import ShardClient
from ledger.fraud_port import FraudAdapter
from ledger.state import ShardState

IN_PROCESS = "AcceptedSettlementInProcess"


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("review-fixes"))
    try:
        yield s
    finally:
        stop_stack(s)


def extra_database(stack: Stack, name: str) -> str:
    """A fresh database in the stack's embedded PostgreSQL, outside the stack's topology."""
    from quickpay.embedded_pg import EmbeddedPostgres

    embedded = EmbeddedPostgres(stack.state_dir)
    embedded.create_databases([name])
    return embedded.dsn(name)


def run_check(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# ---- 1. cache eviction within a batch, against a live shard worker ----------------------
_WORKER_SCRIPT = """
import asyncio, logging, sys
from ledger.worker import WorkerConfig, run_worker
logging.basicConfig(level=logging.INFO)
asyncio.run(run_worker(WorkerConfig(shard=0, shard_count=1, dsn=sys.argv[1], listen=sys.argv[2],
                                    peers={}, transfer_cache_max=2, batch_wait_ms=50, no_rules=True)))
"""


def test_retries_of_old_keys_in_a_batch_of_new_payments_replay(own: Stack, tmp_path: Path) -> None:
    """A worker whose transfer cache holds 2 ids gets batches that mix new payments with
    retries of older keys (one still cached, one only in PostgreSQL). Each retry must be
    answered REPLAY with the original, nothing is debited twice, and the worker lives."""
    dsn = extra_database(own, "qp_review_cache")
    socket_path = f"unix:{tmp_path / 'cache.sock'}"
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SCRIPT, dsn, socket_path],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path[5:]):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        asyncio.run(_cache_scenario(socket_path))
        assert proc.poll() is None, "the worker stopped:\n" + log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


async def _cache_scenario(address: str) -> None:
    client = ShardClient(address, call_timeout_s=30.0)
    partner, debtor, settlement, agreement = "ptn_cache", "acc_cache_debtor", "set_ptn_cache", "agr_cache"
    try:
        await client.call(
            "open_accounts",
            [
                {"id": debtor, "currency": "CNY"},
                {"id": settlement, "kind": "settlement", "currency": "CNY", "partner_id": partner},
            ],
        )
        funded = await client.call(
            "fund",
            {
                "transfer_id": "fund_cache",
                "account_id": debtor,
                "amount_minor": 1_000_000,
                "currency": "CNY",
                "reference": "r",
                "body_hash": "h",
            },
        )
        assert funded["code"] == "OK"
        made = await client.call(
            "create_agreement",
            {
                "id": agreement,
                "partner_id": partner,
                "debtor_account": debtor,
                "currency": "CNY",
                "per_payment_limit_minor": 10_000,
                "periodic_limits": [["Day", "Calendar", 1_000_000]],
            },
        )
        assert made["code"] == "OK"
        authorised = await client.call(
            "agreement_action", {"id": agreement, "action": "authorise", "actor": "customer"}
        )
        assert authorised["code"] == "OK"

        def pay(payment_id: str) -> Any:
            return client.call(
                "pay",
                {
                    "payment_id": payment_id,
                    "partner_id": partner,
                    "agreement_id": agreement,
                    "amount_minor": 100,
                    "currency": "CNY",
                    "creditor_account": settlement,
                    "creditor_shard": 0,
                    "reference": "r",
                    "body_hash": "same-body",
                },
            )

        originals = {}
        for payment_id in ("p_stored", "p_cached"):  # p_cached is the most recent: still cached
            answer = await pay(payment_id)
            assert answer["code"] == "OK"
            originals[payment_id] = answer["transfer"]
        # One batch: two new payments decided before the retry of the cached key.
        batch = await asyncio.gather(pay("p_new_1"), pay("p_new_2"), pay("p_cached"))
        assert [a["code"] for a in batch] == ["OK", "OK", "REPLAY"]
        assert batch[2]["transfer"] == originals["p_cached"]
        # One batch: the retry of a key held only in PostgreSQL after two new payments.
        batch = await asyncio.gather(pay("p_new_3"), pay("p_new_4"), pay("p_stored"), pay("p_new_1"))
        assert [a["code"] for a in batch] == ["OK", "OK", "REPLAY", "REPLAY"]
        assert batch[2]["transfer"] == originals["p_stored"]
        balance = await client.call("balance", {"id": debtor})
        assert balance["balance_minor"] == 1_000_000 - 6 * 100  # six distinct payments
        assert (await client.call("ping"))["shard"] == 0
    finally:
        await client.close()


def test_prefetch_skips_malformed_commands_and_touches_cached_ids() -> None:
    """The prefetch runs before any decider can answer BAD_REQUEST: a malformed command
    must not raise there (that would end the batcher, and the worker with it)."""
    from ledger.model import Transfer
    from ledger.worker import ShardWorker, WorkerConfig

    async def scenario() -> None:
        worker = ShardWorker(
            WorkerConfig(
                shard=0, shard_count=1, dsn="unused", listen="unix:/nonexistent", peers={}, transfer_cache_max=2
            )
        )
        for transfer_id in ("t_a", "t_b"):
            worker.state.remember(Transfer(transfer_id, 1, "payment", "a", "b", 1, "CNY", "s", 0, committed=True))
        reply = lambda ok, result: None  # noqa: E731
        await worker._prefetch(
            [
                ("pay", "not a dict", reply),
                ("pay", {"payment_id": ["unhashable"]}, reply),
                ("credit", [7, None, []], reply),
                ("credit", 5, reply),
                ("fund", {}, reply),
                ("pay", {"payment_id": "t_a"}, reply),
            ]
        )
        assert list(worker.state.transfers) == ["t_b", "t_a"]  # t_a touched; no DB needed

    asyncio.run(scenario())


# ---- 4. restart scans are bounded by an index ---------------------------------------------
class _ExplainingConnection:
    """Runs EXPLAIN (FORMAT JSON) of every statement on `transfers` before running it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[tuple[str, Any]] = []

    async def _explain(self, sql: str, args: tuple[Any, ...]) -> None:
        if "transfers" in sql:
            plan = await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
            self.plans.append((sql, json.loads(plan) if isinstance(plan, str) else plan))

    async def fetch(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self.conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self.conn.fetchval(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self.conn.fetchrow(sql, *args)


def _nodes(plan: Any) -> list[dict[str, Any]]:
    return plan_nodes(plan)


def test_restart_reloads_use_an_index_not_a_journal_scan(own: Stack) -> None:
    asyncio.run(_plans(extra_database(own, "qp_review_plans")))


async def _plans(dsn: str) -> None:
    day_ms = 86_400_000
    now_ms = int(time.time() * 1000)
    conn = await asyncpg.connect(dsn)
    try:
        await pg.ensure_schema(conn, 0, 1)
        await conn.execute("TRUNCATE transfers CASCADE")
        # 200,000 journal rows over 180 days, appended in time order as the writer does;
        # a credit leg carries another shard's (slightly earlier) time.
        await conn.execute(
            "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
            " status, created_at_ms, partner_id, agreement_id, reasons)"
            " SELECT 'pay_' || i, i,"
            "  CASE WHEN i % 20 = 0 THEN 'credit_leg' WHEN i % 20 = 1 THEN 'funding' ELSE 'payment' END,"
            "  'acc_' || (i % 5000), 'set_ptn_x', 100, 'CNY',"
            "  CASE WHEN i % 10 = 3 THEN 'Rejected' ELSE 'AcceptedSettlementCompleted' END,"
            "  $1::bigint + i * ($2::bigint / 200000) - CASE WHEN i % 20 = 0 THEN 5000 ELSE 0 END,"
            "  'ptn_x', 'agr_' || (i % 5000), '{}'::text[]"
            " FROM generate_series(1, 200000) AS i",
            now_ms - 180 * day_ms,
            180 * day_ms,
        )
        # 5,000 agreements with a Calendar Day limit, so the start-up spend query runs too.
        await conn.execute("TRUNCATE agreements, accounts CASCADE")
        await conn.execute(
            "INSERT INTO accounts (id, kind, currency, balance_minor, allow_negative, created_at_ms)"
            " SELECT 'acc_' || i, 'customer', 'CNY', 0, false, 0 FROM generate_series(0, 4999) AS i"
        )
        await conn.execute(
            "INSERT INTO agreements (id, partner_id, debtor_account, currency, per_payment_limit_minor,"
            " periodic_limits, status, created_at_ms, status_updated_at_ms)"
            " SELECT 'agr_' || i, 'ptn_x', 'acc_' || i, 'CNY', 1000,"
            ' \'[{"period": "Day", "alignment": "Calendar", "amount_minor": 100000}]\', \'Authorised\', 0, 0'
            " FROM generate_series(0, 4999) AS i"
        )
        await conn.execute("ANALYZE transfers")
        await conn.execute("ANALYZE agreements")
        explaining = _ExplainingConnection(conn)
        state = ShardState(0, 1)
        await pg.load_state(explaining, state, now_ms)  # type: ignore[arg-type]
        adapter = FraudAdapter(SimpleNamespace(write_conn=explaining, config=SimpleNamespace(shard=0)))  # type: ignore[arg-type]
        # The longest window the rebuild replays (REBUILD_WINDOW_MS caps rule windows at 7 days).
        adapter.filter = SimpleNamespace(ruleset=SimpleNamespace(max_window_s=7 * 86_400), record=lambda facts: None)
        await adapter._rebuild_windows(now_ms)
    finally:
        await conn.close()
    assert state.next_seq == 200_001
    # Today's spend per agreement, rebuilt from the journal: every agreement's Day limit holds
    # what its accepted payments since midnight UTC took (1 in 10 of the rows is Rejected).
    assert len(state.agreements) == 5_000
    day_start = now_ms - now_ms % day_ms
    assert all(a.periodic_limits[0].window_start_ms == day_start for a in state.agreements.values())
    assert sum(a.periodic_limits[0].spent_minor for a in state.agreements.values()) > 0
    window_queries = [(sql, plan) for sql, plan in explaining.plans if "created_at_ms" in sql]
    assert len(window_queries) == 2, [sql for sql, _ in explaining.plans]  # daily spend, fraud windows
    for sql, plan in explaining.plans:
        on_transfers = [n for n in _nodes(plan) if n.get("Relation Name") == "transfers"]
        scans = {n["Node Type"] for n in on_transfers}
        assert "Seq Scan" not in scans, f"{sql}\n scans the journal: {json.dumps(plan)[:2000]}"
        assert on_transfers and scans <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}, scans


# ---- 2. a credit leg beyond INT64_MAX, end to end ------------------------------------------
def test_cross_shard_credit_beyond_int64_is_held_and_the_creditor_shard_survives(own: Stack) -> None:
    partner = own.new_partner("Overflow Partner")
    creditor = own.new_account(shard=1)
    funding_rows = asyncio.run(_fetch(own.dsn(1), "SELECT balance_minor FROM accounts WHERE id = $1", FUNDING_ACCOUNT))
    used = -funding_rows[0]["balance_minor"]
    # Fund the creditor as close to INT64_MAX as shard 1's funding stripe allows.
    near_top = INT64_MAX - used - 1
    reply = own.admin(
        "POST",
        f"/admin/v1/accounts/{creditor}/fundings",
        {"amount": format_amount(near_top, "CNY"), "currency": "CNY", "reference": "near the top"},
        headers={"x-idempotency-key": "fund-" + uuid.uuid4().hex},
    )
    assert reply.status == 201 and reply.body["status"] == "AcceptedSettlementCompleted", reply.body
    before_balance = own.balance(creditor)
    # A payment from shard 0 that takes the creditor 100 minor units beyond INT64_MAX.
    amount_minor = INT64_MAX - near_top + 100
    amount = format_amount(amount_minor, "CNY")
    debtor = own.new_customer(partner, shard=0, funding=amount, per_payment=amount, daily=amount)
    pids_before = own.shard_worker_pids(1)
    assert pids_before
    paid = own.pay(partner, debtor["agreement_id"], creditor, amount)
    assert paid.status == 201, paid.body
    payment_id = paid.body["payment_id"]

    held: list[asyncpg.Record] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not held:
        held = asyncio.run(
            _fetch(
                own.dsn(1),
                "SELECT status, reasons, amount_minor FROM transfers WHERE id = $1 AND kind = 'credit_leg'",
                payment_id,
            )
        )
        time.sleep(0.2)
    assert held, "the credit leg was never recorded on the creditor shard:\n" + own.log()[-3000:]
    assert held[0]["status"] == "Rejected" and list(held[0]["reasons"]) == ["BALANCE_OVERFLOW"]
    assert held[0]["amount_minor"] == amount_minor
    # The relay got its answer: the outbox drains, and the worker never stopped.
    deadline = time.monotonic() + 60
    while asyncio.run(_fetch(own.dsn(0), "SELECT 1 FROM outbox WHERE transfer_id = $1", payment_id)):
        assert time.monotonic() < deadline, "the leg is still in the outbox"
        time.sleep(0.2)
    assert own.shard_worker_pids(1) == pids_before, "the creditor shard's worker restarted"
    assert own.balance(creditor) == before_balance
    assert own.balance(debtor["account"]) == "0.00"
    # The payment's money never reached its creditor, so the partner must not read it as
    # settled: it stays InProcess (it used to become Completed when the held leg was acked).
    status = asyncio.run(_fetch(own.dsn(0), "SELECT status FROM transfers WHERE id = $1", payment_id))
    assert status[0]["status"] == "AcceptedSettlementInProcess", status
    read = own.call("GET", f"/v1/quick-payments/{payment_id}", token=partner["token"])
    assert read.status == 200 and read.body["status"] == "AcceptedSettlementInProcess", read.body
    # Money is conserved: the held amount is still in the debtor shard's clearing stripe.
    check = run_check(own)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "HELD credit legs" in check.stdout and payment_id in check.stdout, check.stdout
    # Other credits to the shard still apply.
    payer = own.new_customer(partner, shard=0, funding="1.00")
    other = own.new_account(shard=1)
    assert own.pay(partner, payer["agreement_id"], other, "0.50").status == 201
    deadline = time.monotonic() + 60
    while own.balance(other) != "0.50":
        assert time.monotonic() < deadline, "the next credit leg was not applied"
        time.sleep(0.2)
    assert own.shard_worker_pids(1) == pids_before


def test_audit_counts_a_held_leg_as_in_flight_and_stays_exact(own: Stack) -> None:
    """The decision and the batch write of a held leg, on two real shard databases: the
    audit passes, lists the held leg, counts it in flight; tampering is still caught."""
    dsns = [extra_database(own, f"qp_review_held_{s}") for s in (0, 1)]
    asyncio.run(_held_audit(dsns))


async def _held_audit(dsns: list[str]) -> None:
    from ledger.agreements import PeriodicLimit
    from ledger.audit import audit
    from ledger.model import Account, Agreement, Code, FundingCommand, PaymentCommand
    from ledger.state import WriteSet

    now_ms = int(time.time() * 1000)
    states = [ShardState(s, 2) for s in (0, 1)]
    conns = [await asyncpg.connect(dsn) for dsn in dsns]
    try:
        for s, conn in enumerate(conns):
            await pg.ensure_schema(conn, s, 2)
            await pg.load_state(conn, states[s], now_ms)

        async def write(s: int, ws: WriteSet) -> None:
            await pg.write_batch(conns[s], ws)
            for transfer in ws.transfers:
                transfer.committed = True

        ws = WriteSet()
        states[0].open_account(Account("acc_debtor", "customer", "CNY", 0, False), ws)
        states[0].create_agreement(
            Agreement(
                "agr_held",
                "ptn_held",
                "acc_debtor",
                "CNY",
                1_000,
                [PeriodicLimit("Day", "Calendar", 1_000)],
                "",
                now_ms,
            ),
            ws,
        )
        states[0].transition_agreement("agr_held", None, "authorise", "customer", now_ms, ws)
        states[0].execute_funding(FundingCommand("fund_debtor", "acc_debtor", 1_000, "CNY", "r", "h", now_ms), ws)
        await write(0, ws)
        ws = WriteSet()
        states[1].open_account(Account("acc_top", "customer", "CNY", 0, False), ws)
        states[1].execute_funding(FundingCommand("fund_top", "acc_top", INT64_MAX - 10, "CNY", "r", "h", now_ms), ws)
        await write(1, ws)
        ws = WriteSet()
        code, _ = states[0].execute_payment(
            PaymentCommand("pay_held_0", "ptn_held", "agr_held", 100, "CNY", "acc_top", 1, "r", "h", now_ms), ws
        )
        assert code == Code.OK
        await write(0, ws)
        (leg,) = ws.outbox
        ws = WriteSet()
        assert states[1].execute_credit(leg, ws) == Code.HELD
        await write(1, ws)  # the batch write accepts it (it used to fail: bigint out of range)

        report = await audit(dsns, attempts=1)
        assert report.ok, report.problems
        assert (report.held_count, report.held_minor, report.in_flight_minor) == (1, 100, 100)
        assert report.held[0]["transfer_id"] == "pay_held_0" and report.held[0]["reasons"] == ["BALANCE_OVERFLOW"]
        # Pretending the held leg was applied, without moving its money, breaks conservation.
        await conns[1].execute(
            "UPDATE transfers SET status = 'AcceptedSettlementCompleted', reasons = '{}' WHERE id = 'pay_held_0'"
        )
        report = await audit(dsns, attempts=1)
        assert not report.ok and report.held_count == 0
    finally:
        for conn in conns:
            await conn.close()


# ---- 3. pages are consistent with their cursor ---------------------------------------------
def test_pages_include_a_late_arriving_credit_leg_exactly_once(own: Stack) -> None:
    partner = own.new_partner("Paging Partner")
    customer = own.new_customer(partner, shard=0, funding="")
    account = customer["account"]
    for _ in range(3):
        own.fund(account, "1.00")
    # A credit leg committed now, stamped with its debtor shard's time an hour ago (a leg
    # the relay delivers late): the newest row by seq, the oldest by time.
    late_id = payment_id_for("ptn_elsewhere", uuid.uuid4().hex, 0)
    assert shard_of_payment(late_id, own.shards) == 0

    async def deliver() -> Any:
        client = ShardClient(own.shard_socket(0), call_timeout_s=10.0)
        try:
            return await client.call("credit", [[late_id, 1, account, 500, "CNY", int(time.time() * 1000) - 3_600_000]])
        finally:
            await client.close()

    assert asyncio.run(deliver())["applied"] == 1
    for _ in range(3):
        own.fund(account, "1.00")
    expected = 7
    token = partner["token"]
    for limit in (1, 2, 3, 4, 6, 7, 8):
        seen: list[str] = []
        cursor = None
        for _ in range(expected + 2):
            query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            reply = own.call("GET", f"/v1/accounts/{account}/transactions{query}", token=token)
            assert reply.status == 200, reply.body
            assert len(reply.body["transactions"]) <= limit
            seen.extend(t["transfer_id"] for t in reply.body["transactions"])
            cursor = reply.body["next_cursor"]
            if cursor is None:
                break
        assert cursor is None, f"limit {limit}: pages did not end"
        assert len(seen) == len(set(seen)) == expected, f"limit {limit}: {seen}"
        assert late_id in seen, f"limit {limit}: the late credit leg was skipped"


def _shard_answer(journal: list[dict[str, Any]], before_seq: int | None, limit: int) -> list[dict[str, Any]]:
    """What a shard answers (ledger.pg.list_account_transfers): seq < before, seq descending."""
    bound = 2**62 if before_seq is None else before_seq
    return sorted((r for r in journal if r["seq"] < bound), key=lambda r: -r["seq"])[:limit]


def _page_through(
    journals: dict[int, list[dict[str, Any]]], limit: int, between_pages: Any = None
) -> list[tuple[int, int]]:
    from gateway.paging import merge_page

    seen: list[tuple[int, int]] = []
    cursor: dict[int, int] = {}
    for page_number in range(10_000):
        answers = {s: _shard_answer(j, cursor.get(s), limit + 1) for s, j in journals.items()}
        page, next_cursor = merge_page(answers, cursor, limit)
        assert len(page) <= limit
        seen.extend((s, r["seq"]) for s, r in page)
        if next_cursor is None:
            return seen
        cursor = next_cursor
        if between_pages is not None:
            between_pages(page_number)
    raise AssertionError("pages did not end")


@settings(max_examples=200, deadline=None)
@given(shards=st.integers(1, 3), data=st.data(), limit=st.integers(1, 6))
def test_merged_pages_emit_every_row_once_whatever_the_times(shards: int, data: Any, limit: int) -> None:
    journals: dict[int, list[dict[str, Any]]] = {}
    for s in range(shards):
        times = data.draw(st.lists(st.integers(0, 50), max_size=15))  # any order: late legs included
        journals[s] = [{"seq": i + 1, "created_at_ms": t} for i, t in enumerate(times)]
    seen = _page_through(journals, limit)
    assert sorted(seen) == sorted((s, r["seq"]) for s, j in journals.items() for r in j)
    assert len(seen) == len(set(seen))
    for s in journals:  # within a shard, journal order (newest first)
        seqs = [seq for shard, seq in seen if shard == s]
        assert seqs == sorted(seqs, reverse=True)


def test_rows_committed_after_the_first_page_do_not_slip_into_later_pages() -> None:
    journals = {0: [{"seq": i, "created_at_ms": 100 + i} for i in range(1, 6)], 1: []}

    def append(page_number: int) -> None:
        for s in (0, 1):
            seq = len(journals[s]) + 1
            journals[s].append({"seq": seq, "created_at_ms": 1_000 + seq})

    seen = _page_through(journals, 2, append)
    assert sorted(seen) == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]


def test_documented_fraud_hit_covers_every_rule_action() -> None:
    """Schemathesis (stateful phase, CI 2026-11-24) saw a 201 whose fraud hit had action
    "score": the rule language has four actions, the document listed three."""
    import jsonschema

    from fraud import FraudFilter, PaymentFacts, parse_rules
    from fraud.parser import RULE_ACTIONS
    from gateway.openapi import openapi_document

    components = openapi_document()["components"]
    assert set(components["schemas"]["FraudHit"]["properties"]["action"]["enum"]) == set(RULE_ACTIONS)
    text = "".join(
        f'rule r_{action} {{ action {action} score 1 description "{action}" when amount > 0 }}\n'
        for action in RULE_ACTIONS
    )
    facts = PaymentFacts(
        transfer_id="tr_1",
        partner_id="partner_1",
        agreement_id="agr_1",
        debtor_account="acc_d",
        creditor_account="acc_c",
        amount_minor=100,
        currency="CNY",
        device_id=None,
        ip=None,
        at_ms=1_700_000_000_000,
    )
    decision = FraudFilter(parse_rules(text)).evaluate(facts).to_dict()
    assert {hit["action"] for hit in decision["reasons"]} == set(RULE_ACTIONS)
    schema = {"$ref": "#/components/schemas/FraudDecision", "components": components}
    jsonschema.Draft202012Validator(schema).validate(decision)
