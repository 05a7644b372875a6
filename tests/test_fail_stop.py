"""Fail-stop: a broken invariant in a shard worker ends the process; the supervisor
restarts it from PostgreSQL, nothing half-applied survives, and the stack keeps serving.

The invariant is broken on purpose by delivering a cross-shard credit leg for an account
that does not exist (the gateway never sends one: it checks creditors first).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import ROOT, Stack, start_stack, stop_stack

from ledger.client import ShardClient, ShardError, ShardUnavailable


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("fail-stop"))
    try:
        yield s
    finally:
        stop_stack(s)


def test_broken_invariant_stops_the_worker_and_it_comes_back(own: Stack) -> None:
    partner = own.new_partner("Fail-stop Partner")
    customer = own.new_customer(partner, shard=0, funding="50.00")
    before = own.shard_worker_pids(0)
    assert before

    async def poison() -> None:
        client = ShardClient(own.shard_socket(0), call_timeout_s=5.0)
        try:
            await client.call("credit", [["pay_poison", 1, "acc_does_not_exist", 100, "CNY", 0]])
        finally:
            await client.close()

    with pytest.raises((ShardUnavailable, ShardError)):
        asyncio.run(poison())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = own.shard_worker_pids(0)
        if now and now != before:
            break
        time.sleep(0.1)
    assert own.shard_worker_pids(0) != before, "the worker did not stop and restart"
    own.wait_ready()
    paid = own.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert paid.status == 201 and paid.body["status"] == "AcceptedSettlementCompleted"
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(own.state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
