"""Honest health (issue 17 point 8): /readyz tells anonymous callers only ready / degraded /
not ready, nothing internal; GET /admin/v1/health (admin token) gives the reasons and the
details; a background service that crash-loops (the notifier, SIGKILLed as it comes back)
makes readiness *degraded* with a reason, and its restarts are counted in /metrics, while
payments go on (degraded is still a 200: the payment API stays in the load balancer)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from typing import Any

import pytest
from conftest import Stack, start_stack, stop_stack

from gateway import health
from quickpay.supervisor import CRASH_LOOP_AFTER


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("health"))
    try:
        yield s
    finally:
        stop_stack(s)


def children(stack: Stack) -> dict[str, dict[str, Any]]:
    data = json.loads((stack.state_dir / "supervisor.json").read_text())
    return {c["name"]: c for c in data["children"]}


def test_readyz_shows_anonymous_callers_nothing_internal(own: Stack) -> None:
    reply = own.call("GET", "/readyz")
    assert reply.status == 200 and reply.body == {"status": "ready"}
    raw = json.dumps(reply.body)
    assert "sock" not in raw and "shard" not in raw and "version" not in raw
    assert own.call("GET", "/admin/v1/health").status == 401
    details = own.admin("GET", "/admin/v1/health")
    assert details.status == 200 and details.body["status"] == "ready", details.body
    assert {c["name"] for c in details.body["children"]} >= {"notifier", "shard-0", "shard-1"}
    assert set(details.body["services"]) >= {"notifier", "relay-0", "relay-1"}


def test_a_crash_looping_notifier_makes_readiness_degraded_and_is_counted(own: Stack) -> None:
    for _ in range(CRASH_LOOP_AFTER):
        deadline = time.monotonic() + 30
        while children(own)["notifier"].get("state") != "running" or not children(own)["notifier"].get("pid"):
            assert time.monotonic() < deadline, children(own)["notifier"]
            time.sleep(0.05)
        os.kill(int(children(own)["notifier"]["pid"]), signal.SIGKILL)
        time.sleep(0.3)
    deadline = time.monotonic() + 20
    while True:
        ready = own.call("GET", "/readyz")
        if ready.body == {"status": "degraded"}:
            break
        assert time.monotonic() < deadline, (ready.status, ready.body, children(own)["notifier"])
        time.sleep(0.1)
    assert ready.status == 200  # still serving payments
    details = own.admin("GET", "/admin/v1/health")
    assert details.body["status"] == health.DEGRADED
    assert any(r.startswith("notifier is crash-looping") for r in details.body["reasons"]), details.body
    deadline = time.monotonic() + 20  # the last death's restart comes after its backoff
    while True:
        text = own.admin("GET", "/metrics").raw.decode()
        restarts = re.search(r'quickpay_service_restarts_total\{service="notifier"\} ([0-9.]+)', text)
        assert restarts is not None, text[:2000]
        if float(restarts.group(1)) >= CRASH_LOOP_AFTER:
            break
        assert time.monotonic() < deadline, restarts.group(0)
        time.sleep(0.2)
    assert re.search(r'quickpay_service_crash_looping\{service="notifier"\} 1\.0', text)
    # Payments go on meanwhile.
    partner = own.new_partner("Degraded but paying")
    customer = own.new_customer(partner, funding="10.00")
    paid = own.call(
        "POST",
        "/v1/quick-payments",
        {
            "agreement_id": customer["agreement_id"],
            "amount": "1.00",
            "currency": "CNY",
            "creditor_account": partner["settlement_account"],
            "reference": "while degraded",
        },
        token=partner["token"],
        headers={"x-idempotency-key": uuid.uuid4().hex},
    )
    assert paid.status == 201, paid.body


def test_the_assessment_states() -> None:
    ok = [{"shard": 0, "ready": True}]
    assert health.evaluate(ok, None)["status"] == health.READY
    assert health.evaluate([{"shard": 0, "ready": False, "error": "down"}], None)["status"] == health.NOT_READY
    looping = [{"shard": 0, "ready": True, "relay": {"crash_looping": True, "failures_in_a_row": 3}}]
    report = health.evaluate(looping, None)
    assert report["status"] == health.DEGRADED and "relay is crash-looping" in report["reasons"][0]
    assert health.evaluate(ok, "/nonexistent/supervisor.json")["status"] == health.DEGRADED
