"""The Locust suite against a real stack: a seeded population, a few seconds, gates on.

Proves that the scenario suite's requests (token, quick-payments including cross-shard and
blocked debtors, status and balance reads, idempotent retries) all succeed against the real
gateway and ledger, that its gates pass, and that the ledger still conserves money after it.
Locust runs as a subprocess (gevent must not monkeypatch the pytest process).
"""

from __future__ import annotations

import argparse
import csv
import json
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

    population = seed_population(
        argparse.Namespace(
            url=stack.base_url,
            state_dir=str(stack.state_dir),
            partners=1,
            customers=300,
            funding="100000.00",
            blocked_share=0.02,
            out=str(tmp_path),
        )
    )
    assert population["blocked_agreements"], "the mix needs some blocked debtors"
    env = dict(
        os.environ,
        QUICKPAY_POPULATION=str(tmp_path / "population.json"),
        QUICKPAY_GATE_FAIL_RATIO="0",
        QUICKPAY_GATE_P99_MS="2000",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "4s",
            "--host",
            stack.base_url,
            "--csv",
            str(tmp_path / "locust"),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "quickpay gates passed" in output
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Request Count"]) > 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0, output
    assert int(rows["POST /v1/quick-payments"]["Request Count"]) > 0
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr


TARGETS_LOCUSTFILE = ROOT / "loadtest" / "locust_targets.py"


@pytest.mark.parametrize(
    "profile,scale,extra",
    [
        ("quickpay-50k", "0.004", ["--qp-batch-items", "100"]),  # 200 payments/s = 2 requests/s of 100
        ("core-14k", "0.005", []),  # 70 payments/s
    ],
)
def test_target_profile_scaled_down_commits_and_reports(
    rules_stack: Stack, tmp_path: Path, profile: str, scale: str, extra: list[str]
) -> None:
    """A target profile, scaled to a few payments per second, runs from the README command:
    its payments reach the ledger and the verdict file holds the gates (not the speed)."""
    import asyncio

    import asyncpg

    from quickpay.embedded_pg import EmbeddedPostgres, shard_database
    from quickpay.seed import seed_population

    stack = rules_stack
    seed_population(
        argparse.Namespace(
            url=stack.base_url,
            state_dir=str(stack.state_dir),
            partners=1,
            customers=200,
            funding="100000.00",
            blocked_share=0.0,
            out=str(tmp_path),
        )
    )
    pg = EmbeddedPostgres(stack.state_dir)
    dsns = [pg.dsn(shard_database(i)) for i in range(2)]

    async def payments() -> int:
        total = 0
        for dsn in dsns:
            conn = await asyncpg.connect(dsn)
            try:
                total += int(
                    await conn.fetchval(
                        "SELECT count(*) FROM transfers WHERE kind = 'payment' AND reference = 'locust target'"
                    )
                )
            finally:
                await conn.close()
        return total

    before = asyncio.run(payments())
    summary = tmp_path / "target.json"
    env = dict(os.environ, QUICKPAY_POPULATION=str(tmp_path / "population.json"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(TARGETS_LOCUSTFILE),
            "--headless",
            "--host",
            stack.base_url,
            "--qp-profile",
            profile,
            "--qp-scale",
            scale,
            "--qp-ramp-s",
            "1",
            "--qp-hold-s",
            "4",
            "--qp-p99-ms",
            "5000",
            "--qp-rate-fraction",
            "0.5",
            "--qp-summary",
            str(summary),
            *extra,
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    verdict = json.loads(summary.read_text())
    assert verdict["profile"] == profile and set(verdict["gates"]) == {"rate", "p99", "failures"}, verdict
    assert verdict["payments_failed"] == 0 and verdict["payments_ok"] > 0, output
    assert verdict["met"] == (result.returncode == 0), output
    assert f"quickpay target {profile}:" in output
    committed = asyncio.run(payments()) - before
    # every payment answered 201 during the hold is in the ledger (ramp payments too)
    assert committed >= verdict["payments_ok"], (committed, verdict)
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
