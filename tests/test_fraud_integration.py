"""The fraud filter inside a running stack.

Proves: a blocked payment names the rule and the values that fired it; a rule set
activated while payments flow judges every payment wholly by one version; a velocity
window survives a SIGKILLed shard worker (rebuilt from the journal); the post-event
monitor raises a mule alert once, resumes from its stored position without gaps or
duplicates; and `quickpay fraud backtest` reports per-rule hits for recorded payments.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, Stack, start_stack, stop_stack

RULES_V1 = """
list blocked_accounts = []
rule marker_v1 {
    action review
    shadow
    description "Fires on every payment judged by version 1"
    when amount > 0
}
rule velocity {
    action block
    score 100
    description "More than 3 payments from one debtor in 10 minutes"
    when count(by debtor, 10m) > 3
}
rule big_payment {
    action block
    score 100
    description "No single payment above 500.00 CNY"
    when currency == "CNY" and amount > 50000
}
"""

RULES_V2 = RULES_V1.replace("marker_v1", "marker_v2").replace("version 1", "version 2")


@pytest.fixture(scope="module")
def fraud_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("fraud")
    rules = base / "v1.rules"
    rules.write_text(RULES_V1)
    s = start_stack(base, flags=("--no-monitor",), extra=("--rules", str(rules)))
    try:
        yield s
    finally:
        stop_stack(s)


def _partner_customer(
    stack: Stack, shard: int | None = None, funding: str = "5000.00"
) -> tuple[dict[str, Any], dict[str, str]]:
    partner = stack.new_partner("Fraud Test Partner")
    return partner, stack.new_customer(partner, shard=shard, funding=funding)


def test_block_names_rule_and_values(fraud_stack: Stack) -> None:
    partner, customer = _partner_customer(fraud_stack)
    reply = fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "600.00")
    assert reply.status == 201
    assert reply.body["status"] == "Rejected"
    assert reply.body["reasons"] == ["big_payment"]
    hit = next(h for h in reply.body["fraud"]["reasons"] if h["rule_id"] == "big_payment")
    assert hit["values"]["amount"] == 60000 and hit["values"]["currency"] == "CNY"
    # The decision is stored with the payment and comes back on a read.
    again = fraud_stack.call("GET", f"/v1/quick-payments/{reply.body['payment_id']}", token=partner["token"])
    assert again.body["fraud"]["reasons"] == reply.body["fraud"]["reasons"]
    assert fraud_stack.balance(customer["account"]) == "5000.00"
    # ...and can be queried by rule.
    found = fraud_stack.admin("GET", "/admin/v1/fraud/decisions?decision=block&rule_id=big_payment")
    assert found.status == 200
    assert reply.body["payment_id"] in {p["payment_id"] for p in found.body["payments"]}
    assert all(p["fraud"]["decision"] == "block" for p in found.body["payments"])


def test_hot_reload_is_atomic_per_payment(fraud_stack: Stack) -> None:
    partner = fraud_stack.new_partner("Reload Partner")
    customers = [fraud_stack.new_customer(partner, funding="1000.00", per_payment="10.00") for _ in range(6)]
    answers: list[dict[str, Any]] = []
    stop = threading.Event()

    def pay_loop(customer: dict[str, str]) -> None:
        # Up to 3 payments per debtor, so the velocity rule never blocks here.
        for _ in range(3):
            if stop.is_set():
                return
            reply = fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "0.01")
            assert reply.status == 201, reply.body
            answers.append(reply.body)
            time.sleep(0.05)

    threads = [threading.Thread(target=pay_loop, args=(c,)) for c in customers]
    for t in threads:
        t.start()
    time.sleep(0.08)
    proposed = fraud_stack.admin("POST", "/admin/v1/fraud/rules", {"text": RULES_V2, "author": "tester"})
    for t in threads:
        t.join(30)
    stop.set()
    assert proposed.status == 201, proposed.body
    assert len(answers) == 18
    versions = []
    for body in answers:
        markers = {h["rule_id"] for h in body["fraud"]["reasons"]} & {"marker_v1", "marker_v2"}
        assert len(markers) == 1, f"payment judged by a mix of versions: {body['fraud']}"
        versions.append(markers.pop())
    after = fraud_stack.pay(
        partner, customers[0]["agreement_id"], partner["settlement_account"], "0.01", key=uuid.uuid4().hex
    )
    assert {h["rule_id"] for h in after.body["fraud"]["reasons"]} >= {"marker_v2"}
    shown = fraud_stack.admin("GET", "/admin/v1/fraud/rules").body["shards"]
    assert all(s["active_version"] == shown[0]["active_version"] for s in shown)
    assert any(entry["author"] == "tester" for entry in shown[0]["audit"])
    # Roll back: version 1 judges again.
    back = fraud_stack.admin("POST", "/admin/v1/fraud/rules/rollback")
    assert back.status == 200, back.body
    last = fraud_stack.pay(partner, customers[1]["agreement_id"], partner["settlement_account"], "0.01")
    assert "marker_v1" in {h["rule_id"] for h in last.body["fraud"]["reasons"]}


def test_bad_rule_set_is_refused_with_position(fraud_stack: Stack) -> None:
    reply = fraud_stack.admin(
        "POST",
        "/admin/v1/fraud/rules",
        {"text": "rule x {\n  action block\n  when amount >> 3\n}\n", "filename": "x.rules"},
    )
    assert reply.status == 422
    assert reply.body["message"].startswith("x.rules:3:")


def _kill_shard_worker(stack: Stack, shard: int) -> None:
    pids = stack.shard_worker_pids(shard)
    assert pids, f"shard {shard} worker not found"
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = stack.shard_worker_pids(shard)
        if current and current != pids:
            break
        time.sleep(0.1)
    stack.wait_ready()


def test_lists_and_rule_versions_survive_restart(fraud_stack: Stack) -> None:
    before = fraud_stack.admin("GET", "/admin/v1/fraud/rules").body["shards"][0]
    added = fraud_stack.admin("POST", "/admin/v1/fraud/lists/blocked_accounts", {"add": ["acc_x", "acc_y"]})
    assert added.status == 200
    fraud_stack.admin("POST", "/admin/v1/fraud/lists/blocked_accounts", {"remove": ["acc_y"]})
    _kill_shard_worker(fraud_stack, 0)
    lists = fraud_stack.admin("GET", "/admin/v1/fraud/lists").body["lists"]
    assert "acc_x" in lists["blocked_accounts"] and "acc_y" not in lists["blocked_accounts"]
    after = fraud_stack.admin("GET", "/admin/v1/fraud/rules").body["shards"][0]
    # The restarted worker was given the same --rules file: not a new version.
    assert len(after["versions"]) == len(before["versions"])
    assert after["active_version"] == before["active_version"]


def test_velocity_window_survives_worker_kill(fraud_stack: Stack) -> None:
    partner, customer = _partner_customer(fraud_stack, shard=0)
    for _ in range(3):
        ok = fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
        assert ok.body["status"] == "AcceptedSettlementCompleted", ok.body
    _kill_shard_worker(fraud_stack, 0)
    fourth = fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert fourth.status == 201
    assert fourth.body["status"] == "Rejected", "the restarted worker forgot the debtor's window"
    assert fourth.body["reasons"] == ["velocity"]


def test_backtest_cli_reports_rule_hits(fraud_stack: Stack, tmp_path: Path) -> None:
    partner, customer = _partner_customer(fraud_stack)
    for amount in ("1.00", "2.00"):
        fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], amount)
    candidate = tmp_path / "candidate.rules"
    candidate.write_text('rule any_payment {\n  action review\n  description "all"\n  when amount > 0\n}\n')
    dsns = [arg for i in range(fraud_stack.shards) for arg in ("--dsn", fraud_stack.dsn(i))]
    result = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "fraud", "backtest", "--rules", str(candidate), "--json", *dsns],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["payments"] >= 2
    assert report["candidate"]["rule_hits"]["any_payment"] == report["payments"]
    assert report["candidate"]["review_rate"] == 1.0
    assert "big_payment" in report["active"]["rule_hits"]


def test_monitor_alerts_once_and_resumes(fraud_stack: Stack) -> None:
    from quickpay.monitor import monitor_pass

    dsns = [fraud_stack.dsn(i) for i in range(fraud_stack.shards)]

    async def alerts_for(account: str) -> list[Any]:
        conn = await asyncpg.connect(dsns[0])
        try:
            return list(
                await conn.fetch("SELECT id, rule, details FROM alerts WHERE account = $1 ORDER BY at_ms", account)
            )
        finally:
            await conn.close()

    async def forget_snapshot() -> None:
        conn = await asyncpg.connect(dsns[0])
        try:
            await conn.execute("DELETE FROM monitor_snapshot")
        finally:
            await conn.close()

    partner = fraud_stack.new_partner("Mule Partner")
    mule = fraud_stack.new_account()
    payers = [fraud_stack.new_customer(partner, funding="100.00") for _ in range(3)]
    for payer in payers:
        reply = fraud_stack.pay(partner, payer["agreement_id"], mule, "20.00")
        assert reply.body["status"].startswith("Accepted"), reply.body
    asyncio.run(monitor_pass(dsns))
    first = asyncio.run(alerts_for(mule))
    assert len(first) == 1
    # A restarted monitor resumes from its position: nothing new, nothing doubled.
    asyncio.run(monitor_pass(dsns))
    assert asyncio.run(alerts_for(mule)) == first
    # Even re-reading everything (as if no snapshot had ever been stored) raises no
    # duplicate, because alert ids are deterministic.
    asyncio.run(forget_snapshot())
    asyncio.run(monitor_pass(dsns))
    assert asyncio.run(alerts_for(mule)) == first
    # A monitor that crashes after raising an alert but before its snapshot re-reads
    # those events on restart: same alert, once; and a further payment to the same
    # account in the same episode raises nothing new.
    mule2 = fraud_stack.new_account()
    for payer in payers:
        fraud_stack.pay(partner, payer["agreement_id"], mule2, "10.00")
    asyncio.run(monitor_pass(dsns, snapshot=False))
    raised = asyncio.run(alerts_for(mule2))
    assert len(raised) == 1
    extra = fraud_stack.new_customer(partner, funding="100.00")
    fraud_stack.pay(partner, extra["agreement_id"], mule2, "10.00")
    asyncio.run(monitor_pass(dsns))
    assert asyncio.run(alerts_for(mule2)) == raised
    listed = fraud_stack.admin("GET", "/admin/v1/fraud/alerts").body["alerts"]
    assert {a["account"] for a in listed} >= {mule, mule2}


def test_monitor_sees_a_refund_forwarded_at_once(fraud_stack: Stack) -> None:
    """The journal loop feeds refunds to the monitor as their own kind: refunded money the
    customer sends straight on is a pass-through alert; the refunds alone raise nothing."""
    from quickpay.monitor import monitor_pass

    dsns = [fraud_stack.dsn(i) for i in range(fraud_stack.shards)]

    async def alerts_for(account: str) -> list[Any]:
        conn = await asyncpg.connect(dsns[0])
        try:
            return list(await conn.fetch("SELECT rule FROM alerts WHERE account = $1", account))
        finally:
            await conn.close()

    partner = fraud_stack.new_partner("Refund Partner")
    customer = fraud_stack.new_customer(partner, shard=0, funding="100.00", per_payment="100.00")
    paid = fraud_stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "90.00").body
    for amount in ("40.00", "50.00"):
        refund = fraud_stack.call(
            "POST",
            f"/v1/quick-payments/{paid['payment_id']}/refunds",
            {"amount": amount},
            token=partner["token"],
            headers={"x-idempotency-key": uuid.uuid4().hex},
        )
        assert refund.status == 201 and refund.body["status"] == "Succeeded", refund.body
    asyncio.run(monitor_pass(dsns))
    assert asyncio.run(alerts_for(customer["account"])) == []
    forwarded = fraud_stack.pay(partner, customer["agreement_id"], fraud_stack.new_account(shard=0), "95.00")
    assert forwarded.body["status"] == "AcceptedSettlementCompleted", forwarded.body
    asyncio.run(monitor_pass(dsns))
    assert [r["rule"] for r in asyncio.run(alerts_for(customer["account"]))] == ["pass_through"]


def test_monitor_starts_again_after_losing_its_database(fraud_stack: Stack) -> None:
    """A failover (`up --ha`) or a restarted PostgreSQL ends the monitor's connections: it
    starts again from its snapshot instead of exiting with a traceback, and still alerts
    once per episode."""
    from quickpay.monitor import APPLICATION_NAME, run_monitor

    dsns = [fraud_stack.dsn(i) for i in range(fraud_stack.shards)]
    partner = fraud_stack.new_partner("Mule Partner 2")
    payers = [fraud_stack.new_customer(partner, funding="100.00") for _ in range(3)]

    async def scenario() -> tuple[bool, list[Any]]:
        task = asyncio.get_running_loop().create_task(run_monitor(dsns))
        mule = fraud_stack.new_account()
        try:
            await asyncio.sleep(1.0)
            conn = await asyncpg.connect(dsns[0])  # one server holds every shard's database here
            try:
                assert await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                    APPLICATION_NAME,
                ) == len(dsns)
            finally:
                await conn.close()
            for payer in payers:
                fraud_stack.pay(partner, payer["agreement_id"], mule, "20.00")
            conn = await asyncpg.connect(dsns[0])
            try:
                for _ in range(100):
                    alerts = list(await conn.fetch("SELECT rule FROM alerts WHERE account = $1", mule))
                    if alerts:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            return task.done(), alerts
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    ended, alerts = asyncio.run(scenario())
    assert not ended, "the monitor stopped when its connections were terminated"
    assert [a["rule"] for a in alerts] == ["fan_in"]
