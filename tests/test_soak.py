"""`quickpay soak --duration 60s` (issue 17 point 10), the CI version of the 10-minute soak: a
stack of its own on an embedded PostgreSQL, 150 partners of which 10 hostile, mixed traffic.
Asserts what happened, never how fast: no 5xx, the audit passed, every partner got answers,
every hostile request was refused in the error shape (or read back as documented), no
well-behaved partner got an unexpected answer, and the RSS of every process is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from loadtest.soak import GOOD_MIX, HOSTILE_CLASSES, parse_duration

SOAK_TIMEOUT_S = 600  # a bound on the run (start, seed, 60 s of traffic, audit), not a speed


def test_durations() -> None:
    assert parse_duration("60s") == 60 and parse_duration("10m") == 600 and parse_duration("1h") == 3600
    assert parse_duration("90") == 90
    for bad in ("", "10x", "-5s", "1s", "25h", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_soak_60s(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "soak", "--duration", "60s", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SOAK_TIMEOUT_S,
    )
    summary = done.stdout + done.stderr[-4000:]
    report = json.loads((out / "soak-report.json").read_text())
    assert (out / "soak-summary.txt").read_text().strip().endswith(("PASSED", "FAILED"))

    assert report["status_5xx"] == {}, summary
    assert report["audit"]["ok"], report["audit"]
    assert report["hostile_violations"] == {}, report["hostile_violation_examples"]
    assert set(report["hostile_by_class"]) == set(HOSTILE_CLASSES), report["hostile_by_class"]
    partners = report["per_partner"]
    assert len(partners) == 150 and sum(p["hostile"] for p in partners) == 10
    assert all(p["answered"] > 0 for p in partners), [p["partner_id"] for p in partners if not p["answered"]]
    good = [p for p in partners if not p["hostile"]]
    assert all(p["unexpected"] == 0 for p in good), [(p["partner_id"], p["examples"]) for p in good if p["unexpected"]]
    assert all(p["p50_ms"] is not None and p["p99_ms"] is not None for p in partners)
    # Every kind of well-behaved traffic ran, and the webhooks were delivered to the local receiver.
    seen = set(report["latency_by_operation"])
    assert {
        "pay",
        "batch",
        "refund",
        "agreement_create",
        "agreement_authorise",
        "agreement_revoke",
        "balance",
        "transactions",
        "agreements_list",
        "events",
        "recon",
        "webhooks_list",
    } <= seen, seen
    assert len(GOOD_MIX) == 11
    assert report["traffic"]["webhook_endpoints"] > 0 and report["traffic"]["webhook_deliveries"] > 0
    assert report["traffic"]["payments_ok"] > 0 and report["traffic"]["refunds_ok"] > 0
    # The RSS of every process of the stack at the start and at the end.
    rss = report["rss"]
    groups = set(rss["by_group"])
    assert {"gateway", "shard", "postgres", "notifier"} <= groups, groups
    quickpay = [p for p in rss["processes"] if p["group"] in ("gateway", "shard", "notifier")]
    assert len(quickpay) >= 5 and all(p["growth_mb"] is not None and p["rss_start_mb"] > 0 for p in quickpay)
    assert rss["total_start_mb"] > 0 and rss["total_end_mb"] > 0
    # Table sizes and errors by code.
    rows = sum(shard["tables"]["transfers"]["rows"] for shard in report["table_sizes"])
    assert rows > 0
    assert "429 QP.RateLimit.Exceeded" in report["errors_hostile"]
    assert report["errors_good"] == {}
    assert report["ok"] and done.returncode == 0, summary
