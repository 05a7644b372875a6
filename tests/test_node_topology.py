"""`quickpay up --topology node`: each process serves HTTP and owns one shard (quickpay/node.py,
ledger/local_client.py). The same API answers: payments on the node's own shard (in-process)
and on the other node's shard (over the shard protocol), replays, cross-shard credits, the
batch endpoint; a SIGKILL of a node under a stream of payments heals like a shard worker's:
retries with the same key converge to one payment each, balances match, `quickpay check` passes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest
from conftest import Stack, start_stack, stop_stack
from test_faults import child_pid, disturbed, run_check, run_with_fault, wait_child_replaced

SHARDS = 2


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    stack = start_stack(
        tmp_path_factory.mktemp("nodes"), shards=SHARDS, flags=("--no-rules", "--no-monitor", "--topology", "node")
    )
    try:
        yield stack
    finally:
        stop_stack(stack)


@pytest.fixture(scope="module")
def world(nodes: Stack) -> dict[str, Any]:
    partner = nodes.new_partner("Nodes")
    debtors = {s: [nodes.new_customer(partner, shard=s, funding="2000.00") for _ in range(5)] for s in range(SHARDS)}
    creditors = {s: [nodes.new_account(shard=s) for _ in range(3)] for s in range(SHARDS)}
    return {"partner": partner, "debtors": debtors, "creditors": creditors}


def test_one_process_per_shard_and_no_gateway_workers(nodes: Stack) -> None:
    import json

    names = {c["name"] for c in json.loads((nodes.state_dir / "supervisor.json").read_text())["children"]}
    assert {"node-0", "node-1"} <= names
    assert not any(name.startswith(("gateway-", "shard-")) for name in names), names
    assert "2 nodes (HTTP + shard each)" in nodes.log()


def test_payments_replays_and_cross_shard_credits(nodes: Stack, world: dict[str, Any]) -> None:
    partner = world["partner"]
    settlement = partner["settlement_account"]
    for shard in range(SHARDS):  # whichever node takes the connection, both shards answer
        debtor = world["debtors"][shard][0]
        key = uuid.uuid4().hex
        first = nodes.pay(partner, debtor["agreement_id"], settlement, "1.25", key=key)
        assert first.status == 201 and first.body["status"] == "AcceptedSettlementCompleted", first.body
        again = nodes.pay(partner, debtor["agreement_id"], settlement, "1.25", key=key)
        assert again.status == 201 and again.body["payment_id"] == first.body["payment_id"]
        assert again.headers.get("x-idempotent-replayed") == "true"
        changed = nodes.pay(partner, debtor["agreement_id"], settlement, "1.26", key=key)
        assert changed.status == 422, changed.body
    creditor = world["creditors"][1][0]
    before = nodes.balance(creditor)
    cross = nodes.pay(partner, world["debtors"][0][1]["agreement_id"], creditor, "3.00")
    assert cross.status == 201, cross.body
    deadline = time.monotonic() + 30
    while nodes.balance(creditor) == before:
        assert time.monotonic() < deadline, "the cross-shard credit never arrived"
        time.sleep(0.1)
    assert float(nodes.balance(creditor)) == float(before) + 3.0


def test_batch_spans_both_shards(nodes: Stack, world: dict[str, Any]) -> None:
    partner = world["partner"]
    items = [
        {
            "idempotency_key": f"nb-{uuid.uuid4().hex}",
            "agreement_id": world["debtors"][s][2]["agreement_id"],
            "amount": "0.50",
            "currency": "CNY",
            "creditor_account": partner["settlement_account"],
            "reference": "node batch",
        }
        for s in (0, 1, 0, 1)
    ]
    reply = nodes.call("POST", "/v1/quick-payments/batch", {"payments": items}, token=partner["token"])
    assert reply.status == 200, reply.body
    assert [r["status"] for r in reply.body["results"]] == [201] * 4
    assert {r["payment"]["payment_id"].rsplit("_", 1)[1] for r in reply.body["results"]} == {"0", "1"}
    result = run_check(nodes)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_node_sigkill_under_load_converges(nodes: Stack, world: dict[str, Any]) -> None:
    old = child_pid(nodes, "node-0")

    async def fault() -> None:
        os.kill(old, signal.SIGKILL)

    out = await run_with_fault(nodes, world, "node", 7, fault)
    assert wait_child_replaced(nodes, "node-0", old) != old
    assert disturbed(out["first_round"]), "the kill did not disturb the stream; the test proves nothing"
    assert "node-0 exited with -9" in nodes.log()
