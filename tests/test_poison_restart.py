"""Accepted means storable and readable, end to end, on a stack of its own: each class of
input that used to be answered 4xx/500 *and* stored (poisoning lists, the notifier and the
restart) is either refused with a 4xx and leaves nothing behind, or accepted and readable
by every reader. Then every shard worker is SIGKILLed: each is ready again within 20 s,
lists answer 200, the event feed flows (new events after the restart), and `quickpay
check` passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from conftest import ROOT, Stack, start_stack, stop_stack

# Valid RFC 3339 in their own offset, outside the representable range once in UTC.
OUT_OF_RANGE = [
    {"valid_to": "9999-12-31T23:00:00-05:00"},  # the year 10000 in UTC
    {"valid_from": "9999-12-31T20:00:00-05:00"},
    {"valid_from": "1970-01-01T07:59:59+08:00"},  # 1969 in UTC
    {"valid_to": "9998-12-31T00:00:00Z"},  # past TIME_MAX_MS
]
# At the edges of the range: accepted, and every reader shows them.
EDGES = [
    {
        "valid_from": "9998-12-30T00:00:00Z",
        "valid_to": "9998-12-30T23:59:59.999Z",
        "periodic_limits": [
            {"period": "Year", "alignment": "Consent", "amount": "92233720368547758.07"},
            {"period": "Month", "alignment": "Consent", "amount": "1.00"},
        ],
    },
    {
        "valid_to": "9998-12-31T04:59:59.999+05:00",
        "periodic_limits": [{"period": "Year", "alignment": "Calendar", "amount": "1.00"}],
    },
    {
        "per_payment_limit": "92233720368547758.07",
        "periodic_limits": [{"period": "Week", "alignment": "Consent", "amount": "92233720368547758.07"}],
    },
]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("poison-restart"))
    try:
        yield s
    finally:
        stop_stack(s)


def agreements_of(stack: Stack, partner: dict[str, Any]) -> list[dict[str, Any]]:
    reply = stack.call("GET", "/v1/agreements?limit=200", token=partner["token"])
    assert reply.status == 200, reply.body
    return list(reply.body["agreements"])


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


def events_of(stack: Stack, partner: dict[str, Any]) -> list[dict[str, Any]]:
    reply = stack.call("GET", "/v1/events?limit=200", token=partner["token"])
    assert reply.status == 200, reply.body
    return list(reply.body["events"])


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_poison_is_refused_or_readable_and_every_shard_restarts_clean(own: Stack) -> None:
    partner = own.new_partner("Poison restart")
    customer = own.new_customer(partner, shard=0)
    account = own.new_account(shard=1)
    own.fund(account, "10.00")
    base = {"debtor_account": account, "currency": "CNY", "per_payment_limit": "5.00"}

    for extra in OUT_OF_RANGE:
        reply = own.call("POST", "/v1/agreements", {**base, **extra}, token=partner["token"])
        assert reply.status == 422, (extra, reply.status, reply.body)
        assert reply.body["code"] == "QP.Agreement.InvalidValidity", reply.body
    assert [a["agreement_id"] for a in agreements_of(own, partner)] == [customer["agreement_id"]], (
        "a refused agreement was stored"
    )

    accepted = []
    for extra in EDGES:
        reply = own.call("POST", "/v1/agreements", {**base, **extra}, token=partner["token"])
        assert reply.status == 201, (extra, reply.body)
        accepted.append(reply.body["agreement_id"])
        shown = own.call("GET", f"/v1/agreements/{reply.body['agreement_id']}", token=partner["token"])
        assert shown.status == 200 and {k: v for k, v in shown.body.items() if k != "status_history"} == reply.body, (
            shown.body
        )
    # Text is stored in NFC; a reference that NFC lengthens past its limit is a 400, not stored.
    paid = own.pay(partner, customer["agreement_id"], own.new_account(shard=0), "1.00", reference="cafe\u0301")
    assert paid.status == 201 and paid.body["reference"] == "caf\u00e9", paid.body
    too_long = own.pay(partner, customer["agreement_id"], own.new_account(shard=0), "1.00", reference="\u0958" * 140)
    assert too_long.status == 400, too_long.body

    listed = {a["agreement_id"] for a in agreements_of(own, partner)}
    assert listed == {customer["agreement_id"], *accepted}
    by_customer = own.admin("GET", f"/admin/v1/accounts/{account}/agreements")
    assert by_customer.status == 200 and len(by_customer.body["agreements"]) == len(accepted), by_customer.body
    wait_for(
        lambda: (
            {e["data"]["object"]["agreement_id"] for e in events_of(own, partner) if e["type"] == "agreement.created"}
            >= set(accepted)
        ),
        30,
        "agreement.created events",
    )

    # Every shard worker SIGKILLed: each is restarted and ready within 20 s.
    for shard in range(own.shards):
        pids = own.shard_worker_pids(shard)
        assert pids, f"no shard worker {shard}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: (own.shard_worker_pids(shard) or [None])[0] not in (None, *pids),
            20,
            f"shard worker {shard} not restarted",
        )
        own.wait_ready(timeout_s=20 - (time.monotonic() - killed_at))
        assert time.monotonic() - killed_at <= 20

    assert {a["agreement_id"] for a in agreements_of(own, partner)} == listed
    for agreement_id in accepted:
        assert own.call("GET", f"/v1/agreements/{agreement_id}", token=partner["token"]).status == 200
    # The feed flows after the restart: a new agreement's event arrives.
    fresh = own.call(
        "POST", "/v1/agreements", {**base, "valid_to": "2999-01-01T00:00:00+14:00"}, token=partner["token"]
    )
    assert fresh.status == 201, fresh.body
    wait_for(
        lambda: any(
            e["type"] == "agreement.created" and e["data"]["object"]["agreement_id"] == fresh.body["agreement_id"]
            for e in events_of(own, partner)
        ),
        30,
        "the event feed stopped after the restart",
    )
    again = own.pay(partner, customer["agreement_id"], own.new_account(shard=0), "1.00", key=uuid.uuid4().hex)
    assert again.status == 201, again.body
    checked = run_check(own)
    assert checked.returncode == 0, checked.stdout + checked.stderr
