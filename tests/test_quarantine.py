"""Readers never die on one row (issue 17 §3).

Rows that an older, buggy version (or a hand) could have stored are written straight into
PostgreSQL: agreements whose validity ends after year 9999 in UTC or whose limit windows
cannot be placed, journal rows whose fraud JSON has the wrong shape, an unknown status, a
timestamp past what datetime can hold, an agreement transition to an unknown status. Then the
shard worker is SIGKILLed (its restart loads them) and every reader is asked: the worker is
ready, lists answer 200 with the other rows, the event feed flows, recon answers, the monitor
goes on, the metric counts the rows, and `quickpay check` fails naming each of them.

The unit tests below pin the decoders (ledger/rows.py) one bad value at a time.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, Stack, start_stack, stop_stack

from gateway import metrics
from kernel.ids import payment_id_for, settlement_account_for
from kernel.resources import agreement_resource, iso_ms, payment_resource
from ledger import recon
from ledger.rows import (
    MS_MAX,
    Quarantine,
    RowError,
    check_row,
    decode_agreement,
    decode_agreement_event,
    decode_transfer,
)
from quickpay.logs import JsonFormatter

NOW_MS = 1_790_000_000_000  # 2026-09-21, the time the unit tests read at
YEAR_10000_MS = MS_MAX + 1  # 10000-01-01T00:00:00.000Z: no datetime holds it


def _transfer(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "pay_x_0",
        "seq": 7,
        "kind": "payment",
        "debit_account": "acc_a",
        "credit_account": "set_p",
        "amount_minor": 100,
        "currency": "CNY",
        "status": "AcceptedSettlementCompleted",
        "created_at_ms": NOW_MS,
        "partner_id": "p",
        "agreement_id": "agr_1",
        "reference": "r",
        "creditor_account": "set_p",
        "reasons": [],
        "fraud": None,
        "body_hash": "h",
        "device_id": None,
        "ip": None,
        "refunded_minor": 0,
        "details": None,
    }
    row.update(changes)
    return row


def _agreement(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "agr_1",
        "partner_id": "p",
        "debtor_account": "acc_a",
        "currency": "CNY",
        "per_payment_limit_minor": 50_000,
        "periodic_limits": json.dumps([{"period": "Month", "alignment": "Consent", "amount_minor": 90_000}]),
        "status": "Authorised",
        "created_at_ms": NOW_MS - 1000,
        "valid_from_ms": None,
        "valid_to_ms": None,
        "status_updated_at_ms": NOW_MS - 1000,
    }
    row.update(changes)
    return row


# ---- the decoders ------------------------------------------------------------------------
def test_good_rows_decode_and_render() -> None:
    transfer = decode_transfer(
        _transfer(
            fraud=json.dumps(
                {
                    "decision": "review",
                    "score": 40,
                    "reasons": [
                        {"rule_id": "velocity", "action": "review", "score": 40, "shadow": False, "values": {}}
                    ],
                    "reason_codes": ["VELOCITY"],
                }
            )
        )
    )
    assert transfer.fraud is not None and transfer.fraud["decision"] == "review"
    assert payment_resource(transfer.to_wire())["fraud"]["score"] == 40
    agreement = decode_agreement(_agreement(valid_to_ms=MS_MAX), NOW_MS)
    assert agreement_resource(agreement.to_wire(NOW_MS))["valid_to"] == "9999-12-31T23:59:59.999Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"  # both ends of the range render


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"fraud": json.dumps([1, 2])}, "fraud is not an object"),
        ({"fraud": json.dumps({"decision": "maybe", "score": 1})}, "fraud decision"),
        ({"fraud": json.dumps({"decision": "allow", "score": "high"})}, "fraud score"),
        ({"fraud": json.dumps({"decision": "allow", "score": 0, "reasons": "x"})}, "fraud reasons"),
        ({"fraud": "{not json"}, "does not parse"),
        ({"details": json.dumps("text")}, "details is not an object"),
        (
            {
                "details": json.dumps(
                    {
                        "reason_details": {
                            "limit_minor": 1,
                            "period": "Day",
                            "alignment": "Calendar",
                            "remaining_minor": 0,
                            "period_start_ms": YEAR_10000_MS,
                            "period_end_ms": 0,
                        }
                    }
                )
            },
            "outside 1970..9999",
        ),
        ({"status": "Weird"}, "unknown status"),
        ({"kind": "gift"}, "unknown kind"),
        ({"currency": "XXX"}, "unknown currency"),
        ({"created_at_ms": YEAR_10000_MS}, "outside 1970..9999"),
        ({"created_at_ms": -1}, "outside 1970..9999"),
        ({"amount_minor": 2**63}, "int64"),
        ({"reference": "bad \udcff surrogate"}, "UTF-8"),
        ({"refunded_minor": 101}, "refunded_minor exceeds"),
    ],
)
def test_each_bad_transfer_value_is_a_row_error_naming_table_and_key(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(RowError) as caught:
        decode_transfer(_transfer(**changes))
    assert caught.value.table == "transfers" and caught.value.key == "pay_x_0"
    assert problem in caught.value.problem, caught.value.problem


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"valid_to_ms": YEAR_10000_MS + 3_600_000}, "valid_to_ms"),
        ({"valid_from_ms": YEAR_10000_MS}, "valid_from_ms"),
        ({"periodic_limits": json.dumps({"period": "Day"})}, "periodic_limits"),
        (
            {"periodic_limits": json.dumps([{"period": "Fortnight", "alignment": "Calendar", "amount_minor": 1}])},
            "unknown period",
        ),
        ({"periodic_limits": json.dumps([{"period": "Day", "alignment": "Calendar", "amount_minor": 2**63}])}, "int64"),
        ({"status": "Paused"}, "unknown status"),
        ({"valid_from_ms": 20, "valid_to_ms": 10}, "after valid_to_ms"),
    ],
)
def test_each_bad_agreement_value_is_a_row_error(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(RowError) as caught:
        decode_agreement(_agreement(**changes), NOW_MS)
    assert caught.value.table == "agreements" and caught.value.key == "agr_1"
    assert problem in caught.value.problem, caught.value.problem


def test_a_limit_window_that_cannot_be_placed_is_a_row_error() -> None:
    # Anchored on the last representable month: a Consent Month window read in that month ends
    # in year 10000, which neither datetime nor an ISO string holds.
    anchor = int(datetime.datetime(9999, 12, 15, tzinfo=datetime.UTC).timestamp() * 1000)
    row = _agreement(valid_from_ms=anchor, created_at_ms=anchor)
    decode_agreement(row, NOW_MS)  # placeable now
    with pytest.raises(RowError, match="window"):
        decode_agreement(row, anchor + 86_400_000)  # not once the month is the last one


def test_agreement_events_and_partial_rows() -> None:
    good = {
        "seq": 3,
        "agreement_id": "agr_1",
        "from_status": None,
        "to_status": "Authorised",
        "actor": "customer",
        "at_ms": NOW_MS,
    }
    assert decode_agreement_event(good)["to_status"] == "Authorised"
    with pytest.raises(RowError) as caught:
        decode_agreement_event({**good, "to_status": "Bogus"})
    assert caught.value.table == "agreement_events" and caught.value.key == "3"
    # A reader selecting some columns (the monitor, the fraud rebuild) checks those.
    assert check_row("transfers", {"id": "t", "amount_minor": 5})["amount_minor"] == 5
    with pytest.raises(RowError):
        check_row("transfers", {"id": "t", "created_at_ms": YEAR_10000_MS})


def test_quarantine_logs_structured_counts_and_skips(caplog: pytest.LogCaptureFixture) -> None:
    quarantine = Quarantine()
    rows = [_transfer(), _transfer(id="pay_bad_0", status="Weird"), _transfer(id="pay_y_0", seq=8)]
    with caplog.at_level(logging.ERROR, logger="quickpay.quarantine"):
        decoded = quarantine.decode_all("notifier", rows, decode_transfer, shard=0)
    assert [t.id for t in decoded] == ["pay_x_0", "pay_y_0"]
    assert quarantine.summary() == [["notifier", "transfers", 1]]
    assert quarantine.take_unstored()[0]["key"] == "pay_bad_0" and quarantine.take_unstored() == []
    record = next(r for r in caplog.records if r.name == "quickpay.quarantine")
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "row_quarantined" and line["table"] == "transfers" and line["key"] == "pay_bad_0"
    assert line["reader"] == "notifier" and line["shard"] == 0 and "unknown status" in line["problem"]


def test_recon_file_says_it_is_incomplete() -> None:
    report = recon.Reconciliation("p", datetime.date(2026, 9, 21), provisional=False, generated_at_ms=NOW_MS)
    report.add([decode_transfer(_transfer()).to_wire(), None])
    text = report.text()
    assert text.startswith("# INCOMPLETE: 1 journal rows")
    assert "pay_x_0" in text and "summary,payment,CNY,1,1.00,100" in text


def test_metric_merges_every_readers_counts_into_one_family() -> None:
    metrics.QUARANTINED.labels("gateway", "agreements").inc()
    pings: list[tuple[int, Any]] = [
        (0, {"quarantined": [["shard_load", "agreements", 2]]}),
        (1, {"quarantined": [["shard_load", "agreements", 1]]}),
        (2, None),
    ]
    text = metrics.render(
        pings, {"pending": 0, "failed": 0, "events": 0, "quarantined": [["notifier", "transfers", 3]]}
    ).decode()
    assert text.count("# TYPE quickpay_quarantined_rows_total counter") == 1, text
    assert 'quickpay_quarantined_rows_total{reader="shard_load",table="agreements"} 3.0' in text
    assert 'quickpay_quarantined_rows_total{reader="notifier",table="transfers"} 3.0' in text
    assert 'quickpay_quarantined_rows_total{reader="gateway",table="agreements"}' in text


# ---- the whole stack ---------------------------------------------------------------------------
RESTART_READY_S = 20.0  # the bound for a shard worker restarted after poison


async def _plant(dsn: str, hostile: dict[str, Any], now_ms: int) -> dict[str, str]:
    """Bad rows on shard 0, as an older version could have left them; money-moving ones move
    their amount on both accounts, so conservation still holds and only readability fails."""
    partner_id, account = hostile["partner"]["partner_id"], hostile["customer"]["account"]
    settlement = settlement_account_for(partner_id)
    planted = {
        "agreement_valid_to": "agr_q_valid_to_10000",
        "agreement_valid_from": "agr_q_valid_from_10000",
        "fraud_shape": payment_id_for(partner_id, "bad-fraud-key", 0),
        "status": payment_id_for(partner_id, "bad-status-key", 0),
        "timestamp": payment_id_for(partner_id, "bad-time-key", 0),
    }
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            limits = json.dumps([{"period": "Month", "alignment": "Consent", "amount_minor": 100_000}])
            for agreement_id, valid_from, valid_to in (
                (planted["agreement_valid_to"], None, YEAR_10000_MS + 5 * 3_600_000),
                (planted["agreement_valid_from"], YEAR_10000_MS, None),
            ):
                await conn.execute(
                    "INSERT INTO agreements (id, partner_id, debtor_account, currency, per_payment_limit_minor,"
                    " periodic_limits, status, created_at_ms, valid_from_ms, valid_to_ms, status_updated_at_ms)"
                    " VALUES ($1, $2, $3, 'CNY', 10000, $4, 'Authorised', $5, $6, $7, $5)",
                    agreement_id,
                    partner_id,
                    account,
                    limits,
                    now_ms,
                    valid_from,
                    valid_to,
                )
                await conn.execute(
                    "INSERT INTO agreement_events (agreement_id, from_status, to_status, actor, at_ms)"
                    " VALUES ($1, NULL, 'AwaitingAuthorisation', 'partner', $2)",
                    agreement_id,
                    now_ms,
                )
            # A transition to a status nobody knows, on the hostile partner's good agreement.
            await conn.execute(
                "INSERT INTO agreement_events (agreement_id, from_status, to_status, actor, at_ms)"
                " VALUES ($1, 'Authorised', 'Bogus', 'customer', $2)",
                hostile["customer"]["agreement_id"],
                now_ms,
            )
            seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers")
            for offset, (key, status, created, fraud) in enumerate(
                (
                    ("fraud_shape", "AcceptedSettlementCompleted", now_ms, json.dumps([{"decision": "allow"}])),
                    ("status", "Weird", now_ms, None),
                    ("timestamp", "AcceptedSettlementCompleted", YEAR_10000_MS + 1, None),
                )
            ):
                await conn.execute(
                    "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
                    " status, created_at_ms, partner_id, agreement_id, reference, creditor_account, reasons, fraud,"
                    " body_hash) VALUES ($1, $2, 'payment', $3, $4, 1, 'CNY', $5, $6, $7, $8, 'planted', $4, '{}',"
                    " $9, 'x')",
                    planted[key],
                    seq + 1 + offset,
                    account,
                    settlement,
                    status,
                    created,
                    partner_id,
                    hostile["customer"]["agreement_id"],
                    fraud,
                )
            await conn.execute("UPDATE accounts SET balance_minor = balance_minor - 3 WHERE id = $1", account)
            await conn.execute("UPDATE accounts SET balance_minor = balance_minor + 3 WHERE id = $1", settlement)
    finally:
        await conn.close()
    return planted


async def _monitor_position(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        positions = await conn.fetchval("SELECT positions FROM monitor_snapshot WHERE id = 1")
    finally:
        await conn.close()
    return int(json.loads(positions).get("0", 0)) if positions else 0


def _wait_for(what: str, probe: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def qstack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # The fraud filter (window rebuild) and the monitor on: they read the planted rows too.
    stack = start_stack(tmp_path_factory.mktemp("quarantine"), workers=1, flags=())
    try:
        yield stack
    finally:
        stop_stack(stack)


def _check(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pid(stack: Stack, shard: int) -> int:
    pids = _wait_for(
        f"one shard worker {shard}", lambda: (lambda p: p if len(p) == 1 else None)(stack.shard_worker_pids(shard))
    )
    return int(pids[0])


def test_readers_quarantine_planted_rows_and_serve_everything_else(qstack: Stack) -> None:
    stack = qstack
    good_partner, hostile_partner = stack.new_partner("Good"), stack.new_partner("Hostile")
    good = [stack.new_customer(good_partner, shard=s, funding="100.00") for s in range(stack.shards)]
    hostile = {"partner": hostile_partner, "customer": stack.new_customer(hostile_partner, shard=0, funding="50.00")}
    hostile_settlement = hostile_partner["settlement_account"]
    assert stack.pay(hostile_partner, hostile["customer"]["agreement_id"], hostile_settlement, "1.00").status == 201
    assert stack.pay(good_partner, good[0]["agreement_id"], good_partner["settlement_account"], "1.00").status == 201
    assert _check(stack).returncode == 0

    # Plant, then SIGKILL shard 0's worker straight away (nothing is being sent, so it writes
    # nothing in between): its restart loads the planted rows.
    now_ms = time.time_ns() // 1_000_000
    planted = asyncio.run(_plant(stack.dsn(0), hostile, now_ms))
    before = _pid(stack, 0)
    started = time.monotonic()
    subprocess.run(["kill", "-9", str(before)], check=True)
    _wait_for("a new shard 0 worker", lambda: (lambda p: len(p) == 1 and p[0] != before)(stack.shard_worker_pids(0)))
    stack.wait_ready(RESTART_READY_S)
    assert time.monotonic() - started < RESTART_READY_S
    assert "quarantined agreements row agr_q_valid_to_10000" in stack.log()

    # Payments go on, for both partners, on both shards.
    for customer in good:
        assert (
            stack.pay(good_partner, customer["agreement_id"], good_partner["settlement_account"], "1.00").status == 201
        )
    assert stack.pay(hostile_partner, hostile["customer"]["agreement_id"], hostile_settlement, "1.00").status == 201
    # A retry of a key whose stored row cannot be read is an error, never decided as new (its
    # insert would fail the batch and stop the worker); reading it is an error, not a 404.
    retry = stack.call(
        "POST",
        "/v1/quick-payments",
        {
            "agreement_id": hostile["customer"]["agreement_id"],
            "amount": "0.01",
            "currency": "CNY",
            "creditor_account": hostile_settlement,
            "reference": "planted",
        },
        token=hostile_partner["token"],
        headers={"x-idempotency-key": "bad-fraud-key"},
    )
    assert retry.status == 500 and set(retry.body) == {"code", "message", "errors"}, retry.body
    read = stack.call("GET", f"/v1/quick-payments/{planted['fraud_shape']}", token=hostile_partner["token"])
    assert read.status == 500 and set(read.body) == {"code", "message", "errors"}, read.body
    assert stack.shard_worker_pids(0) != [before] and len(stack.shard_worker_pids(0)) == 1

    # Lists answer 200 with the other rows.
    token = hostile_partner["token"]
    agreements = stack.call("GET", "/v1/agreements", token=token)
    assert agreements.status == 200, agreements.body
    assert [a["agreement_id"] for a in agreements.body["agreements"]] == [hostile["customer"]["agreement_id"]]
    one = stack.call("GET", f"/v1/agreements/{hostile['customer']['agreement_id']}", token=token)
    assert one.status == 200 and all(h["to"] != "Bogus" for h in one.body["status_history"]), one.body
    transactions = stack.call("GET", f"/v1/accounts/{hostile['customer']['account']}/transactions", token=token)
    assert transactions.status == 200, transactions.body
    shown = [t["transfer_id"] for t in transactions.body["transactions"]]
    assert not set(shown) & {planted["fraud_shape"], planted["status"], planted["timestamp"]}
    assert sum(1 for t in transactions.body["transactions"] if t["kind"] == "payment") == 2, shown
    decisions = stack.admin("GET", "/admin/v1/fraud/decisions")
    assert decisions.status == 200 and planted["fraud_shape"] not in json.dumps(decisions.body)

    # Recon answers, and says what it left out.
    day = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).date().isoformat()
    file = stack.call("GET", f"/v1/reconciliation-files/{day}?provisional=true", token=token)
    assert file.status == 200, file.raw[:500]
    text = file.raw.decode()
    assert "# INCOMPLETE: 2 journal rows" in text and text.count("\npayment,") == 2, text

    # The feed flows past the planted rows: the good partner's later payments become events.
    def good_events() -> Any:
        body = stack.call("GET", "/v1/events?limit=200", token=good_partner["token"]).body
        completed = [e for e in body["events"] if e["type"] == "payment.completed"]
        return completed if len(completed) >= 1 + len(good) else None

    _wait_for("the good partner's events", good_events)
    hostile_events = stack.call("GET", "/v1/events?limit=200", token=token).body["events"]
    assert all(e["data"]["object"].get("payment_id") not in planted.values() for e in hostile_events)

    # The monitor goes on past them (its stored position moves beyond the planted seqs).
    planted_top = asyncio.run(_max_seq(stack.dsn(0)))
    _wait_for(
        "the monitor's position past the planted rows",
        lambda: asyncio.run(_monitor_position(stack.dsn(0))) >= planted_top,
        timeout_s=40,
    )

    # The metric counts them, per reader and table.
    def quarantined() -> Any:
        text = stack.admin("GET", "/metrics").raw.decode()
        want = (
            'reader="shard_load",table="agreements"',
            'reader="notifier",table="transfers"',
            'reader="notifier",table="agreement_events"',
            'reader="prefetch",table="transfers"',
            'reader="monitor",table="transfers"',
            'reader="fraud_rebuild",table="transfers"',
        )
        lines = [line for line in text.splitlines() if line.startswith("quickpay_quarantined_rows_total")]
        return lines if all(any(w in line for line in lines) for w in want) else None

    lines = _wait_for("quarantine counts in /metrics", quarantined)
    load = next(line for line in lines if 'reader="shard_load",table="agreements"' in line)
    assert float(load.rsplit(" ", 1)[1]) == 2.0, lines

    # `quickpay check` fails, naming every planted row (conservation itself holds).
    check = _check(stack)
    assert check.returncode == 1, check.stdout + check.stderr
    for key in planted.values():
        assert key in check.stdout, (key, check.stdout)
    assert "agreement_events row" in check.stdout and "Bogus" in check.stdout
    assert "balances sum" not in check.stdout and "!= journal" not in check.stdout, check.stdout
    assert "Traceback" not in check.stderr


async def _max_seq(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT max(seq) FROM transfers"))
    finally:
        await conn.close()


def _monitor_pids(stack: Stack) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "monitor" in cmd and "quickpay.cli" in cmd and str(stack.state_dir) in " ".join(cmd):
            found.append(int(proc.info["pid"]))
    return found


async def _snapshot(dsn: str, state: str | None = None) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        if state is not None:
            await conn.execute("UPDATE monitor_snapshot SET state = $1 WHERE id = 1", state)
        return await conn.fetchrow("SELECT positions, state FROM monitor_snapshot WHERE id = 1")
    finally:
        await conn.close()


def test_monitor_starts_again_over_a_snapshot_it_cannot_read(qstack: Stack) -> None:
    stack = qstack
    _wait_for("a monitor snapshot", lambda: asyncio.run(_snapshot(stack.dsn(0))))
    pids = _wait_for("one monitor", lambda: (lambda p: p if len(p) == 1 else None)(_monitor_pids(stack)))
    # Stopped first, so its periodic snapshot cannot overwrite the bad one before it dies
    # (an UPDATE of its own still in flight commits first: ours waits for the row lock).
    subprocess.run(["kill", "-STOP", str(pids[0])], check=True)
    time.sleep(0.2)
    asyncio.run(_snapshot(stack.dsn(0), json.dumps({"format": 999})))
    subprocess.run(["kill", "-9", str(pids[0])], check=True)
    # Restarted, it quarantines the snapshot and goes on: a new, readable snapshot is stored.
    _wait_for(
        "a readable snapshot again",
        lambda: json.loads(asyncio.run(_snapshot(stack.dsn(0)))["state"]).get("format") != 999,
        timeout_s=60,
    )
    text = stack.admin("GET", "/metrics").raw.decode()
    assert 'quickpay_quarantined_rows_total{reader="monitor",table="monitor_snapshot"} 1.0' in text, text[-3000:]
    restarted = _monitor_pids(stack)
    assert len(restarted) == 1 and restarted != pids
    assert "quarantined monitor_snapshot row 1 (reader monitor)" in stack.log()


async def _plant_journal(dsn: str, partner_id: str, account: str, agreement_id: str, now_ms: int) -> list[str]:
    """Only journal rows (nothing the worker loads): a year-10000 timestamp and a fraud array."""
    ids = [payment_id_for(partner_id, key, 1) for key in ("late-key", "array-key")]
    settlement = settlement_account_for(partner_id)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers")
            for offset, (transfer_id, created, fraud) in enumerate(
                ((ids[0], YEAR_10000_MS + 1, None), (ids[1], now_ms, json.dumps(["allow"])))
            ):
                await conn.execute(
                    "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
                    " status, created_at_ms, partner_id, agreement_id, reference, creditor_account, reasons, fraud,"
                    " body_hash) VALUES ($1, $2, 'payment', $3, $4, 1, 'CNY', 'AcceptedSettlementCompleted', $5,"
                    " $6, $7, 'planted', $4, '{}', $8, 'x')",
                    transfer_id,
                    seq + 1 + offset,
                    account,
                    settlement,
                    created,
                    partner_id,
                    agreement_id,
                    fraud,
                )
            await conn.execute("UPDATE accounts SET balance_minor = balance_minor - 2 WHERE id = $1", account)
            await conn.execute("UPDATE accounts SET balance_minor = balance_minor + 2 WHERE id = $1", settlement)
    finally:
        await conn.close()
    return ids


async def _insert_event(dsn: str, partner_id: str, event_id: str, body: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO events (id, partner_id, type, created_at_ms, body)"
            " VALUES ($1, $2, 'payment.completed', $3, $4)",
            event_id,
            partner_id,
            time.time_ns() // 1_000_000,
            body,
        )
    finally:
        await conn.close()


def test_feed_and_lists_flow_past_poisoned_journal_rows(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "journal", workers=1)
    try:
        partner = stack.new_partner("Journal")
        customer = stack.new_customer(partner, shard=1, funding="20.00")
        settlement = partner["settlement_account"]
        assert stack.pay(partner, customer["agreement_id"], settlement, "1.00").status == 201
        planted = asyncio.run(
            _plant_journal(
                stack.dsn(1),
                partner["partner_id"],
                customer["account"],
                customer["agreement_id"],
                time.time_ns() // 1_000_000,
            )
        )
        before = _pid(stack, 1)
        subprocess.run(["kill", "-9", str(before)], check=True)  # its next seq is reloaded
        _wait_for(
            "a new shard 1 worker", lambda: (lambda p: len(p) == 1 and p[0] != before)(stack.shard_worker_pids(1))
        )
        stack.wait_ready(RESTART_READY_S)
        for _ in range(2):
            assert stack.pay(partner, customer["agreement_id"], settlement, "1.00").status == 201

        def completed() -> Any:
            events = stack.call("GET", "/v1/events?limit=200", token=partner["token"]).body["events"]
            found = [e for e in events if e["type"] == "payment.completed"]
            return found if len(found) == 3 else None

        events = _wait_for("three payment.completed events (the two after the planted rows too)", completed)
        assert not {e["data"]["object"]["payment_id"] for e in events} & set(planted)
        listed = stack.call("GET", f"/v1/accounts/{customer['account']}/transactions?limit=2", token=partner["token"])
        assert listed.status == 200, listed.body
        # A full page although rows below the first were quarantined, and the cursor goes on.
        assert len(listed.body["transactions"]) == 2 and listed.body["next_cursor"], listed.body
        rest = stack.call(
            "GET",
            f"/v1/accounts/{customer['account']}/transactions?limit=200&cursor={listed.body['next_cursor']}",
            token=partner["token"],
        )
        kinds = sorted(t["kind"] for t in listed.body["transactions"] + rest.body["transactions"])
        assert kinds == ["funding", "payment", "payment", "payment"], (listed.body, rest.body)
        # A stored event body that is not JSON (the feed embeds bodies as they are stored).
        asyncio.run(_insert_event(stack.dsn(0), partner["partner_id"], "evt_planted_not_json", "{not json"))
        assert stack.pay(partner, customer["agreement_id"], settlement, "1.00").status == 201
        events = _wait_for(
            "a fourth payment.completed past the planted event",
            lambda: (lambda e: e if len(e) == 4 else None)(
                [
                    e
                    for e in stack.call("GET", "/v1/events?limit=200", token=partner["token"]).body["events"]
                    if e["type"] == "payment.completed"
                ]
            ),
        )
        paged, after = [], ""
        for _ in range(20):  # one event a page: the cursor moves past the planted one
            page = stack.call("GET", f"/v1/events?limit=1{after}", token=partner["token"])
            assert page.status == 200, page.body
            paged += page.body["events"]
            if page.body["next_cursor"] is None:
                break
            after = f"&after={page.body['next_cursor']}"
        assert [e["id"] for e in paged if e["type"] == "payment.completed"] == [e["id"] for e in events]
        text = stack.admin("GET", "/metrics").raw.decode()
        assert 'quickpay_quarantined_rows_total{reader="notifier",table="transfers"} 2.0' in text
        assert 'reader="shard_read",table="events"' in text
    finally:
        stop_stack(stack)
