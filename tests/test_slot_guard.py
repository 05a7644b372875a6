"""The shard's slot guard (issue 21): at intake, before anything is queued, a shard refuses a
write for an account whose slot its held map puts elsewhere, with MOVED (shard, version);
under version 1 it never fires. The gateway refetches the map and retries once at the shard
named; MOVED again is a retryable 503 with Retry-After in the one error shape, never a 4xx or
a 500. In memory first (the worker's dispatch, no socket), then a private stack whose shards
were restarted on maps that put two slots on shard 0 while the control map stays version 1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from conftest import Stack, start_stack, stop_stack

from kernel.ids import shard_of
from kernel.slots import SlotMap, slot_of
from ledger.client import ShardClient, ShardError
from loadtest.pay_many_microbench import _worker, pay_command


# ---- in memory --------------------------------------------------------------------------
def _replies() -> tuple[list[tuple[bool, Any]], Any]:
    got: list[tuple[bool, Any]] = []
    return got, lambda ok, result: got.append((ok, result))


async def test_version_1_refuses_nothing() -> None:
    worker = _worker(with_fraud=False)
    assert worker.held_slot_map == SlotMap.initial(1)
    got, reply = _replies()
    worker.dispatch("pay_many", [pay_command(k) for k in range(50)], reply)
    worker.dispatch("fund", _fund("acc_7"), reply)
    assert got == []  # nothing answered at intake: all queued
    _op, queued, _reply = worker.queue[0]
    assert queued.results == [None] * 50 and len(queued.pending) == 50
    assert worker.queue[1][0] == "fund"


async def test_a_slot_the_held_map_puts_elsewhere_is_refused_per_item_before_queueing() -> None:
    worker = _worker(with_fraud=False)
    moved_slot = slot_of("acc_3")  # pay_command(3) pays under agr_3, debtor acc_3
    worker.held_slot_map = SlotMap.initial(1).moved(moved_slot, 4)
    expected = {
        "code": "MOVED",
        "message": f"slot {moved_slot} is on shard 4 under slot map version 2",
        "slot": moved_slot,
        "shard": 4,
        "version": 2,
    }
    got, reply = _replies()
    worker.dispatch("pay_many", [pay_command(k) for k in range(6)], reply)
    _op, queued, _reply = worker.queue[0]
    assert queued.results[3] == [False, expected]
    assert [index for index, _ in queued.pending] == [0, 1, 2, 4, 5]
    assert worker.queued_weight == 5
    worker.dispatch("pay", pay_command(3), reply)
    worker.dispatch("fund", _fund("acc_3"), reply)
    worker.dispatch("create_agreement", _agreement("acc_3"), reply)
    worker.dispatch("open_accounts", [{"id": "acc_new", "currency": "CNY"}, {"id": "acc_3", "currency": "CNY"}], reply)
    assert got == [(False, expected)] * 4
    assert len(worker.queue) == 1  # none of them was queued
    worker.dispatch("fund", _fund("acc_4"), reply)  # another slot: queued as before
    assert len(worker.queue) == 2 and len(got) == 4
    # An agreement this shard does not hold: guarded by the slot a gateway's retry carries.
    unknown = {**pay_command(0), "agreement_id": "agr_elsewhere", "slot": moved_slot}
    worker.dispatch("pay", unknown, reply)
    worker.dispatch("pay_many", [unknown, {**unknown, "slot": slot_of("acc_4")}], reply)
    assert got[4] == (False, expected)
    _op, queued, _reply = worker.queue[-1]
    assert queued.results[0] == [False, expected] and [index for index, _ in queued.pending] == [1]


def _fund(account_id: str) -> dict[str, Any]:
    return {
        "transfer_id": "fund_" + uuid.uuid4().hex,
        "account_id": account_id,
        "amount_minor": 100,
        "currency": "CNY",
        "reference": "r",
        "body_hash": "0" * 64,
    }


def _agreement(debtor: str) -> dict[str, Any]:
    return {
        "id": "agr_" + uuid.uuid4().hex[:20],
        "partner_id": "ptn",
        "debtor_account": debtor,
        "currency": "CNY",
        "per_payment_limit_minor": 100,
        "periodic_limits": [],
    }


# ---- a stack whose shards hold maps the control map does not ------------------------------
def _account_on_shard_1(avoid_slot: int | None = None) -> str:
    while True:
        account = "acc_" + uuid.uuid4().hex[:20]
        if shard_of(account, 2) == 1 and slot_of(account) != avoid_slot:
            return account


@pytest.fixture(scope="module")
def moved_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, dict[str, Any]]]:
    """Shard 0 holds version 2 (slot X on shard 0), shard 1 version 3 (X and Y on shard 0); the
    control map in shard 0's database stays version 1, so the gateway routes X and Y to shard 1.
    Y is the slot of a customer (on shard 1, with an authorised agreement) made before."""
    own = start_stack(tmp_path_factory.mktemp("slotguard"), demo=False)
    try:
        partner = own.new_partner("Slot Guard Partner")
        customer = own.new_customer(partner, shard=1, funding="100.00")
        account_y = customer["account"]
        account_x = _account_on_shard_1(avoid_slot=slot_of(account_y))
        v2 = SlotMap.initial(2).moved(slot_of(account_x), 0)
        v3 = v2.moved(slot_of(account_y), 0)
        asyncio.run(_restart_on_maps(own, {0: v2, 1: v3}))
        yield own, account_x, {**customer, "partner": partner}
    finally:
        stop_stack(own)


async def _restart_on_maps(own: Stack, maps: dict[int, SlotMap]) -> None:
    for shard, held in maps.items():
        conn = await asyncpg.connect(own.dsn(shard))
        try:
            await conn.execute(
                "UPDATE slot_map_held SET version = $1, map = $2::jsonb", held.version, json.dumps(held.to_wire())
            )
        finally:
            await conn.close()
        old = own.shard_worker_pids(shard)
        assert len(old) == 1, old
        os.kill(old[0], signal.SIGKILL)  # the supervisor restarts it; it loads the map above
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, f"shard {shard} did not come back\n{own.log()[-4000:]}"
            client = ShardClient(own.shard_socket(shard), call_timeout_s=5.0)
            try:
                if (await client.call("ping"))["slot_map_version"] == held.version:
                    break
            except Exception:
                pass
            finally:
                await client.close()
            await asyncio.sleep(0.2)


async def test_the_gateway_follows_moved_once_then_answers_a_retryable_503(moved_stack: tuple[Stack, str, str]) -> None:
    own, account_x, customer = moved_stack
    account_y = customer["account"]
    shard_0 = ShardClient(own.shard_socket(0), call_timeout_s=10.0)
    shard_1 = ShardClient(own.shard_socket(1), call_timeout_s=10.0)
    try:
        # Shard 1 refuses an account of slot X (its map: on shard 0); shard 0 takes it.
        with pytest.raises(ShardError) as refused:
            await shard_1.call("open_accounts", [{"id": account_x, "currency": "CNY"}])
        assert refused.value.code == "MOVED"
        assert {k: refused.value.args[0][k] for k in ("slot", "shard", "version")} == {
            "slot": slot_of(account_x),
            "shard": 0,
            "version": 3,
        }
        await shard_0.call("open_accounts", [{"id": account_x, "currency": "CNY"}])
        # The gateway holds version 1 (X on shard 1): shard 1 answers MOVED, the gateway
        # refetches (still version 1 in the control database) and retries once at shard 0.
        funded = own.admin(
            "POST",
            f"/admin/v1/accounts/{account_x}/fundings",
            {"amount": "5.00", "currency": "CNY"},
            headers={"x-idempotency-key": "fund-" + uuid.uuid4().hex},
        )
        assert funded.status == 201, funded.body
        assert (await shard_0.call("balance", {"id": account_x}))["balance_minor"] == 500
        assert await shard_1.call("balance", {"id": account_x}) is None
        # Slot Y: shard 1 names shard 0, whose own map (version 2) names shard 1: after one
        # retry, a retryable 503 in the one error shape.
        moving = own.admin(
            "POST",
            f"/admin/v1/accounts/{account_y}/fundings",
            {"amount": "5.00", "currency": "CNY"},
            headers={"x-idempotency-key": "fund-" + uuid.uuid4().hex},
        )
        assert moving.status == 503, moving.body
        assert moving.body["code"] == "QP.Service.Unavailable" and "slot" in moving.body["message"]
        assert moving.headers.get("retry-after") == "1"
        # Shown: each shard's held version, the control map's, the gateway's.
        view = own.admin("GET", "/admin/v1/shards").body
        assert (view["version"], view["gateway_held_version"]) == (1, 1)
        assert [row["held_version"] for row in view["shards"]] == [2, 3]
    finally:
        await shard_0.close()
        await shard_1.close()


def test_a_payment_whose_debtor_slot_moved_is_a_retryable_503_alone_and_nothing_moves(
    moved_stack: tuple[Stack, str, dict[str, Any]],
) -> None:
    own, _account_x, customer = moved_stack
    partner = customer["partner"]
    partner["token"] = own.partner_token(partner["client_id"], partner["client_secret"])
    # The single endpoint: shard 1 holds the agreement but its map puts the debtor's slot on
    # shard 0; shard 0's map puts it back on shard 1: one retry, then 503.
    single = own.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert single.status == 503, single.body
    assert single.body["code"] == "QP.Service.Unavailable" and single.headers.get("retry-after") == "1"
    # The batch endpoint: the moved item fails alone (retried once at the shard named), the
    # other item (a debtor on shard 0, whose slot stays there) is paid.
    other = own.new_customer(partner, shard=0, funding="100.00")
    items = [
        {
            "idempotency_key": uuid.uuid4().hex,
            "agreement_id": agreement_id,
            "amount": "1.00",
            "currency": "CNY",
            "creditor_account": partner["settlement_account"],
            "reference": "slot guard",
        }
        for agreement_id in (customer["agreement_id"], other["agreement_id"])
    ]
    batch = own.call("POST", "/v1/quick-payments/batch", {"payments": items}, token=partner["token"])
    assert batch.status == 200, batch.body
    moved, paid = batch.body["results"]
    assert moved["status"] == 503 and moved["error"]["code"] == "QP.Service.Unavailable", moved
    assert paid["status"] == 201, paid
    assert own.balance(other["account"]) == "99.00"
    # Nothing was taken from the moved debtor (read on the shard that holds its row).
    assert asyncio.run(_balance_on(own, 1, customer["account"])) == 10_000


async def _balance_on(own: Stack, shard: int, account_id: str) -> int:
    client = ShardClient(own.shard_socket(shard), call_timeout_s=10.0)
    try:
        return int((await client.call("balance", {"id": account_id}))["balance_minor"])
    finally:
        await client.close()
