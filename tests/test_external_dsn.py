"""`quickpay up` on PostgreSQL servers it did not start (--dsn once per shard, or
QUICKPAY_DSNS), and a whole stack restarted on the same state keeps its data.

Proves: with DSNs given, no embedded server is started under the state directory, payments
work and `quickpay check --dsn …` audits those databases; after `up` is stopped and started
again on the same state directory, balances and payments are still there and the demo
partner is reused, not created again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, start_stack, stop_stack

from quickpay.embedded_pg import EmbeddedPostgres


@pytest.fixture(scope="module")
def external_pg(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A PostgreSQL server of 'the user', with two empty databases."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("external-pg"))
    server.start()
    server.create_databases(["ledger_a", "ledger_b"])
    try:
        yield server
    finally:
        server.stop()


def test_up_with_dsns_uses_those_servers(
    external_pg: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsns = [external_pg.dsn("ledger_a"), external_pg.dsn("ledger_b")]
    monkeypatch.setenv("QUICKPAY_DSNS", ",".join(dsns))
    stack = start_stack(tmp_path)
    try:
        assert not (stack.state_dir / "pg").exists(), "an embedded server was started despite the DSNs"
        demo = stack.demo
        token = stack.partner_token()
        partner = {"token": token}
        example = demo["example"]
        paid = stack.pay(partner, example["agreement_id"], demo["settlement_account"], "3.21")
        assert paid.status == 201 and paid.body["status"] == "AcceptedSettlementCompleted", paid.body
    finally:
        stop_stack(stack)
    env = {k: v for k, v in os.environ.items() if k != "QUICKPAY_DSNS"}
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--dsn", dsns[0], "--dsn", dsns[1], "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and sum(s["transfers"] for s in report["shards"]) > 0


def test_restarted_stack_keeps_its_data(tmp_path: Path) -> None:
    first = start_stack(tmp_path)
    try:
        demo = first.demo
        partner = {"token": first.partner_token()}
        paid = first.pay(partner, demo["example"]["agreement_id"], demo["settlement_account"], "7.00")
        assert paid.status == 201
        debtor = demo["example"]["debtor_account"]
        balance_before = first.balance(debtor)
    finally:
        stop_stack(first)
    second = start_stack(tmp_path)
    try:
        assert second.demo["client_id"] == demo["client_id"], "the demo partner was created again"
        assert second.balance(debtor) == balance_before
        token = second.partner_token()
        again = second.call("GET", f"/v1/quick-payments/{paid.body['payment_id']}", token=token)
        assert again.status == 200 and again.body["amount"] == "7.00"
    finally:
        stop_stack(second)
