"""x-idempotency-key gives exactly-once payments: a retry with the same body answers with
the original payment (same id and status, marked replayed) and moves money once; the same
key with a different body is refused with 422; and 20 identical requests fired at once
through both gateway workers produce one payment, answers of only 201 or 409, and one
debit."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from conftest import Stack

COMPLETED = "AcceptedSettlementCompleted"


def test_same_key_same_body_replays(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=1, funding="20.00")
    creditor = stack.new_account(shard=0)  # cross-shard, so the replay can change status
    key = "idem-" + uuid.uuid4().hex
    first = stack.pay(partner, customer["agreement_id"], creditor, "3.00", key=key)
    assert first.status == 201 and "x-idempotent-replayed" not in first.headers
    answers = [stack.pay(partner, customer["agreement_id"], creditor, "3.00", key=key) for _ in range(3)]
    for again in answers:
        assert again.status == 201
        assert again.headers.get("x-idempotent-replayed") == "true"
        assert again.body["payment_id"] == first.body["payment_id"]
        assert again.body["amount"] == "3.00"
        assert again.body["status"] in (first.body["status"], COMPLETED)
    assert stack.balance(customer["account"]) == "17.00"
    # the credit leg lands once as well
    for _ in range(100):
        if stack.balance(creditor) == "3.00":
            break
        time.sleep(0.05)
    assert stack.balance(creditor) == "3.00"


def test_same_key_different_body_is_refused(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="20.00")
    target = partner["settlement_account"]
    key = "idem-" + uuid.uuid4().hex
    first = stack.pay(partner, customer["agreement_id"], target, "2.00", key=key)
    assert first.status == 201
    for change in ({"amount": "2.01"}, {"reference": "other"}, {"creditor_account": stack.new_account(shard=0)}):
        body = {
            "agreement_id": customer["agreement_id"],
            "amount": "2.00",
            "currency": "CNY",
            "creditor_account": target,
            "reference": "test",
            **change,
        }
        reply = stack.call(
            "POST", "/v1/quick-payments", body, token=partner["token"], headers={"x-idempotency-key": key}
        )
        assert reply.status == 422, reply.body
        assert reply.body["code"] == "QP.Idempotency.Mismatch"
        assert reply.body["errors"][0]["path"] == "header.x-idempotency-key"
    assert stack.balance(customer["account"]) == "18.00"


def test_keys_are_scoped_per_partner(stack: Stack, partner: dict[str, Any]) -> None:
    second = stack.new_partner("Second")
    a = stack.new_customer(partner, shard=0, funding="5.00")
    b = stack.new_customer(second, shard=0, funding="5.00")
    key = "shared-" + uuid.uuid4().hex
    pa = stack.pay(partner, a["agreement_id"], partner["settlement_account"], "1.00", key=key)
    pb = stack.pay(second, b["agreement_id"], second["settlement_account"], "1.00", key=key)
    assert pa.status == pb.status == 201
    assert pa.body["payment_id"] != pb.body["payment_id"]
    assert stack.balance(a["account"]) == stack.balance(b["account"]) == "4.00"


async def _fire(stack: Stack, partner: dict[str, Any], body: dict[str, Any], key: str, n: int) -> list[tuple[int, Any]]:
    # force_close: one connection per request, so both gateway workers take a share.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, Any]:
            async with session.post(
                stack.url("/v1/quick-payments"),
                json=body,
                headers={"authorization": f"Bearer {partner['token']}", "x-idempotency-key": key},
            ) as response:
                return response.status, await response.json()

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_concurrent_duplicates_move_money_once(stack: Stack, partner: dict[str, Any]) -> None:
    for shard, cross in ((0, False), (1, True)):
        customer = stack.new_customer(partner, shard=shard, funding="50.00")
        creditor = stack.new_account(shard=1 - shard) if cross else partner["settlement_account"]
        body = {
            "agreement_id": customer["agreement_id"],
            "amount": "7.00",
            "currency": "CNY",
            "creditor_account": creditor,
            "reference": "dup",
        }
        key = "dup-" + uuid.uuid4().hex
        answers = await _fire(stack, partner, body, key, 20)
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {201, 409}, answers
        assert statuses.count(201) >= 1
        ids = {answer["payment_id"] for status, answer in answers if status == 201}
        assert len(ids) == 1
        for status, answer in answers:
            if status == 409:
                assert answer["code"] == "QP.Idempotency.InFlight"
        assert stack.balance(customer["account"]) == "43.00"
        # a retry after the dust settles answers 201 with the same id
        retry = stack.pay(partner, customer["agreement_id"], creditor, "7.00", key=key, reference="dup")
        assert retry.status == 201 and retry.body["payment_id"] in ids
        assert stack.balance(customer["account"]) == "43.00"
