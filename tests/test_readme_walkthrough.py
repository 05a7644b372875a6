"""README's agreements-and-refunds walk-through runs as written against a demo stack, and
shows what README says it shows (consent, limits with their period, refunds, lifecycle,
`quickpay check` passing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Stack


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- walkthrough:begin -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", text, re.S)
    assert match, "README has no walk-through block"
    return match.group(1)


def test_readme_walkthrough_runs(stack: Stack, tmp_path: Path) -> None:
    quickpay = tmp_path / "quickpay"
    quickpay.write_text(f'#!/bin/sh\nexec {sys.executable} -m quickpay.cli "$@"\n')
    quickpay.chmod(0o755)
    env = {**os.environ, "QP_URL": stack.base_url, "QP_STATE": str(stack.state_dir), "QUICKPAY": str(quickpay)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _walkthrough()],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    shown = [json.loads(line) for line in lines if line.startswith("{")]
    checks = [line for line in lines if not line.startswith("{") and line.strip()]
    assert [s.get("code") or s.get("status") for s in shown] == [
        "QP.Agreement.NotAuthorised",
        "Authorised",
        "Rejected",
        "AcceptedSettlementCompleted",
        "Rejected",
        "Authorised",
        "Succeeded",
        "Succeeded",
        "QP.Refund.ExceedsPayment",
        None,
        "Suspended",
        "QP.Agreement.Suspended",
        "Authorised",
        "AcceptedSettlementCompleted",
        "Revoked",
        "QP.Agreement.Revoked",
        None,
    ]
    day, month = shown[2]["reason_details"], shown[4]["reason_details"]
    assert (day["period"], day["remaining"], month["period"], month["remaining"]) == ("Day", "45.00", "Month", "20.00")
    limits = {p["period"]: p["remaining"] for p in shown[5]["periodic_limits"]}
    assert limits == {"Month": "20.00", "Day": "5.00"}
    assert [shown[6]["amount"], shown[7]["amount"]] == ["25.00", "35.00"]
    assert shown[9] == {"amount": "60.00", "refunded_amount": "60.00"}
    assert [h["to"] for h in shown[16]["status_history"]] == [
        "AwaitingAuthorisation",
        "Authorised",
        "Suspended",
        "Authorised",
        "Revoked",
    ]
    assert len(checks) == 2 and all("ok" in line.lower() for line in checks), checks
    assert '"status": "AwaitingAuthorisation"' in done.stderr.replace('":"', '": "')


def _notify_walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- walkthrough-notify:begin -->\n```bash\n(.*?)```\n<!-- walkthrough-notify:end -->", text, re.S
    )
    assert match, "README has no webhooks walk-through block"
    return match.group(1)


def test_readme_webhooks_walkthrough_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On its own demo stack: the block lowers the demo partner's rate limit for a while."""
    from conftest import free_port, start_stack, stop_stack

    own = start_stack(tmp_path_factory.mktemp("readme-notify"))
    tmp_path = tmp_path_factory.mktemp("readme-notify-bin")
    try:
        quickpay = tmp_path / "quickpay"
        quickpay.write_text(f'#!/bin/sh\nexec {sys.executable} -m quickpay.cli "$@"\n')
        quickpay.chmod(0o755)
        env = {
            **os.environ,
            "QP_URL": own.base_url,
            "QP_STATE": str(own.state_dir),
            "QUICKPAY": str(quickpay),
            "PY": sys.executable,
            "RECEIVER_PORT": str(free_port()),
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _notify_walkthrough()],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        verified = [json.loads(line) for line in out.splitlines() if line.startswith('{"verified"')]
        assert [v["type"] for v in verified[:2]] == ["payment.completed", "refund.succeeded"], out
        away = re.search(r"paid (pay_\w+) while the receiver was away", out)
        assert away, out
        assert [v["object"] for v in verified[2:]] == [away.group(1)], out  # retried, delivered once
        assert re.search(r"^\d+ payment.completed events; poll again from \d+$", out, re.M), out
        assert re.search(r"quickpay-reconciliation: final", out, re.I) and "sha256" in out.lower()
        assert re.search(r"^summary,settlement_net,CNY", out, re.M), out
        statuses = re.findall(r"^HTTP/1.1 (\d{3})", out, re.M)
        assert statuses[:1] == ["200"] and "429" in statuses, out
        assert re.search(r"429.*retry-after: \d+", out, re.I | re.M), out
        assert re.search(r"^quickpay_http_requests_total\{", out, re.M), out
    finally:
        stop_stack(own)
