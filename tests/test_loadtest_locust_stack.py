"""The Locust suite against a real stack: a seeded population, a few seconds, gates on.

Proves that the scenario suite's requests (token, quick-payments including cross-shard and
blocked debtors, status and balance reads, idempotent retries) all succeed against the real
gateway and ledger, that its gates pass, and that the ledger still conserves money after it.
Locust runs as a subprocess (gevent must not monkeypatch the pytest process).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Stack, start_stack, stop_stack

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


@pytest.fixture(scope="module")
def rules_stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """A private stack with the shipped fraud rules (the blocked debtors need them)."""
    s = start_stack(tmp_path_factory.mktemp("locust-stack"), demo=False, flags=("--no-monitor",))
    try:
        yield s
    finally:
        stop_stack(s)


def test_fraud_admin_on_a_stack_without_rules_is_a_clear_409(stack: Stack) -> None:
    reply = stack.admin("POST", "/admin/v1/fraud/lists/blocked_accounts", {"add": ["acc_x"]})
    assert reply.status == 409 and reply.body["code"] == "QP.Fraud.Disabled"
    assert stack.admin("GET", "/admin/v1/fraud/rules").status == 409


def test_locust_suite_against_the_real_stack(rules_stack: Stack, tmp_path: Path) -> None:
    from quickpay.seed import seed_population

    stack = rules_stack

    population = seed_population(argparse.Namespace(
        url=stack.base_url, state_dir=str(stack.state_dir), partners=1, customers=300,
        funding="100000.00", blocked_share=0.02, out=str(tmp_path)))
    assert population["blocked_agreements"], "the mix needs some blocked debtors"
    env = dict(os.environ, QUICKPAY_POPULATION=str(tmp_path / "population.json"),
               QUICKPAY_GATE_FAIL_RATIO="0", QUICKPAY_GATE_P99_MS="2000")
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4",
         "-t", "4s", "--host", stack.base_url, "--csv", str(tmp_path / "locust"), "--only-summary",
         "--loglevel", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "quickpay gates passed" in output
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Request Count"]) > 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0, output
    assert int(rows["POST /v1/quick-payments"]["Request Count"]) > 0
    check = subprocess.run([sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
