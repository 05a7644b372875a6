"""POST /v1/quick-payments/batch: one result per item in request order, each item
validated and answered on its own (the single endpoint's statuses), money moved exactly
once per accepted item, retries of the whole batch with the same keys replay; the
envelope's own limits (items, body bytes) are 400/413; and a shard worker SIGKILLed
mid-batch leaves items that a whole-batch retry completes exactly once, with
`quickpay check` passing afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import ROOT, Reply, Stack, start_stack, stop_stack

from gateway.app import BATCH_BODY_MAX_BYTES
from gateway.schemas import BATCH_ITEMS_MAX
from kernel.ids import shard_of_payment
from kernel.money import parse_amount

BATCH = "/v1/quick-payments/batch"
IN_PROCESS = "AcceptedSettlementInProcess"


def minor(text: str) -> int:
    return int(Decimal(text) * 100)


def item(agreement: str, creditor: str, amount: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "agreement_id": agreement,
        "amount": amount,
        "currency": "CNY",
        "creditor_account": creditor,
        "reference": "batch",
        "idempotency_key": key or uuid.uuid4().hex,
        **extra,
    }


def post_batch(stack: Stack, token: str, items: list[Any], timeout: float = 60.0) -> Reply:
    return stack.call("POST", BATCH, {"payments": items}, token=token, timeout=timeout)


def assert_error_shape(error: dict[str, Any]) -> None:
    assert set(error) == {"code", "message", "errors"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    for e in error["errors"]:
        assert set(e) == {"code", "message", "path"} and all(isinstance(v, str) for v in e.values()), e


def assert_envelope_error(reply: Reply, status: int, code: str | None = None) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert isinstance(reply.body, dict)
    assert_error_shape(reply.body)
    if code is not None:
        assert reply.body["code"] == code, reply.body
    assert reply.headers.get("x-fapi-interaction-id")


async def ledger_rows(stack: Stack, payment_ids: list[str]) -> dict[str, Any]:
    """payment id -> its journal row, asserting each id is there at most once."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for pid in payment_ids:
        shard = shard_of_payment(pid, stack.shards)
        assert shard is not None, pid
        by_shard[shard].append(pid)
    rows: dict[str, Any] = {}
    for shard, pids in by_shard.items():
        conn = await asyncpg.connect(stack.dsn(shard))
        try:
            found = await conn.fetch(
                "SELECT id, count(*) OVER (PARTITION BY id) AS n, status, amount_minor,"
                " debit_account FROM transfers WHERE kind = 'payment' AND id = ANY($1::text[])",
                pids,
            )
        finally:
            await conn.close()
        for row in found:
            assert row["n"] == 1, row
            rows[row["id"]] = row
    return rows


def assert_documented(body: Any) -> None:
    """The body matches the document's QuickPaymentBatchResult (every item's shape)."""
    import jsonschema

    from gateway.openapi import openapi_document

    document = openapi_document()
    schema = {"$ref": "#/components/schemas/QuickPaymentBatchResult", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_document_describes_the_batch_operation() -> None:
    from gateway.openapi import openapi_document

    document = openapi_document()
    op = document["paths"][BATCH]["post"]
    assert set(op["responses"]) == {"200", "400", "401", "403", "413", "429", "500", "503"}
    envelope = document["components"]["schemas"]["QuickPaymentBatchRequest"]["properties"]["payments"]
    assert envelope["minItems"] == 1 and envelope["maxItems"] == BATCH_ITEMS_MAX
    item_schema = document["components"]["schemas"]["QuickPaymentBatchItem"]
    assert "idempotency_key" in item_schema["required"]
    # a wrong item shape must fail the documented result schema
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        assert_documented({"results": [{"status": 201, "error": {"code": "x", "message": "y", "errors": []}}]})


# ---- the shared stack ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def customers(stack: Stack, partner: dict[str, Any]) -> dict[str, Any]:
    return {
        "a": stack.new_customer(partner, shard=0, funding="1000.00"),
        "b": stack.new_customer(partner, shard=1, funding="1000.00"),
        "creditor0": stack.new_account(shard=0),
    }


def test_mixed_batch_answers_each_item_in_order_and_moves_money_once(
    stack: Stack, partner: dict[str, Any], customers: dict[str, Any]
) -> None:
    token = partner["token"]
    a, b, settlement = customers["a"], customers["b"], partner["settlement_account"]
    creditor0 = customers["creditor0"]
    # A key used before, through the single endpoint: the batch item with that key and body replays it.
    earlier_key = "earlier-" + uuid.uuid4().hex
    earlier = stack.pay(partner, a["agreement_id"], settlement, "1.00", key=earlier_key, reference="batch")
    assert earlier.status == 201, earlier.body
    before = {c["account"]: minor(stack.balance(c["account"])) for c in (a, b)}
    creditor_before = minor(stack.balance(creditor0))
    dup_key = "dup-" + uuid.uuid4().hex
    items: list[Any] = [
        item(a["agreement_id"], settlement, "2.00", key=dup_key),  # 0: 201
        item(b["agreement_id"], creditor0, "3.00"),  # 1: 201, cross-shard
        item(a["agreement_id"], settlement, "1.234"),  # 2: 400 bad amount
        item(a["agreement_id"], settlement, "1.00", reference="nul\x00ref"),  # 3: 400 NUL
        item("agr_" + "0" * 20, settlement, "1.00"),  # 4: 404 agreement
        item(a["agreement_id"], settlement, "1.00", key=earlier_key),  # 5: 201 replayed
        item(a["agreement_id"], settlement, "2.00", key=dup_key),  # 6: dup, same body
        {
            k: v for k, v in item(a["agreement_id"], settlement, "1.00").items() if k != "idempotency_key"
        },  # 7: 400 no key
        item(a["agreement_id"], settlement, "1.00", key="ключ"),  # 8: 400 key not ASCII
        item(b["agreement_id"], "acc_" + "f" * 32, "1.00"),  # 9: 422 creditor
        item(b["agreement_id"], settlement, "4.00", surprise=1),  # 10: 400 unknown field
        item(b["agreement_id"], settlement, "5.00"),  # 11: 201
    ]
    reply = post_batch(stack, token, items)
    assert reply.status == 200, reply.body
    assert reply.headers.get("x-fapi-interaction-id")
    assert_documented(reply.body)
    results = reply.body["results"]
    assert len(results) == len(items)
    statuses = [r["status"] for r in results]
    assert statuses[:6] == [201, 201, 400, 400, 404, 201], results
    assert statuses[7:] == [400, 400, 422, 400, 201], results
    for r in results:
        if r["status"] == 201:
            assert set(r) == {"status", "payment", "replayed"}, r
        else:
            assert set(r) == {"status", "error"}, r
            assert_error_shape(r["error"])
    assert [r["replayed"] for r in results if r["status"] == 201 and r is not results[6]] == [False, False, True, False]
    assert results[5]["payment"]["payment_id"] == earlier.body["payment_id"]
    # Error paths name the item.
    assert results[2]["error"]["errors"][0]["path"] == "$.payments[2].amount", results[2]
    assert results[3]["error"]["errors"][0]["path"] == "$.payments[3].reference", results[3]
    assert results[4]["error"]["code"] == "QP.Agreement.NotFound"
    assert results[7]["error"]["errors"][0]["path"] == "$.payments[7].idempotency_key", results[7]
    assert results[8]["error"]["errors"][0]["path"] == "$.payments[8].idempotency_key", results[8]
    assert results[9]["error"]["code"] == "QP.Creditor.NotFound"
    # The same key twice in one batch: the shard decides the second like a concurrent retry.
    dup = results[6]
    if dup["status"] == 409:
        assert dup["error"]["code"] == "QP.Idempotency.InFlight"
        assert dup["error"]["errors"][0]["path"] == "$.payments[6].idempotency_key"
    else:
        assert dup["status"] == 201 and dup["replayed"] is True, dup
        assert dup["payment"]["payment_id"] == results[0]["payment"]["payment_id"]
    accepted = {i: results[i]["payment"] for i in (0, 1, 11)}
    for i, payment in accepted.items():
        assert payment["status"].startswith("Accepted"), payment
        assert payment["amount"] == items[i]["amount"] and payment["agreement_id"] == items[i]["agreement_id"]
        read = stack.call("GET", f"/v1/quick-payments/{payment['payment_id']}", token=token)
        assert read.status == 200 and read.body["payment_id"] == payment["payment_id"]
    # Money moved once per accepted new item (the replayed item moved nothing).
    assert minor(stack.balance(a["account"])) == before[a["account"]] - 200
    assert minor(stack.balance(b["account"])) == before[b["account"]] - 300 - 500
    deadline = time.monotonic() + 15
    while minor(stack.balance(creditor0)) != creditor_before + 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert minor(stack.balance(creditor0)) == creditor_before + 300

    # The whole batch again, same keys: every accepted item replays, nothing moves again.
    again = post_batch(stack, token, items)
    assert again.status == 200, again.body
    again_results = again.body["results"]
    assert [r["status"] for r in again_results] == [201, 201, 400, 400, 404, 201, 201, 400, 400, 422, 400, 201]
    for i in (0, 1, 5, 6, 11):
        assert again_results[i]["replayed"] is True, again_results[i]
    for i in (0, 1, 11):
        assert again_results[i]["payment"]["payment_id"] == results[i]["payment"]["payment_id"]
    assert again_results[6]["payment"]["payment_id"] == results[0]["payment"]["payment_id"]
    # A key reused with another body is the single endpoint's 422 mismatch.
    mismatch = post_batch(stack, token, [item(a["agreement_id"], settlement, "9.00", key=dup_key)])
    assert mismatch.status == 200
    assert mismatch.body["results"][0]["status"] == 422
    assert mismatch.body["results"][0]["error"]["code"] == "QP.Idempotency.Mismatch"
    assert minor(stack.balance(a["account"])) == before[a["account"]] - 200
    assert minor(stack.balance(b["account"])) == before[b["account"]] - 300 - 500
    ids = [results[i]["payment"]["payment_id"] for i in (0, 1, 5, 11)]
    rows = asyncio.run(ledger_rows(stack, ids))
    assert set(rows) == set(ids)


def test_full_batch_over_64_kib_is_accepted(stack: Stack, partner: dict[str, Any], customers: dict[str, Any]) -> None:
    token = partner["token"]
    a, b = customers["a"], customers["b"]
    before = {c["account"]: minor(stack.balance(c["account"])) for c in (a, b)}
    items = [
        item((a if i % 2 else b)["agreement_id"], partner["settlement_account"], "0.01", reference="r" * 100)
        for i in range(BATCH_ITEMS_MAX)
    ]
    size = len(json.dumps({"payments": items}))
    assert 64 * 1024 < size < BATCH_BODY_MAX_BYTES, size
    reply = post_batch(stack, token, items, timeout=120)
    assert reply.status == 200, reply.body
    results = reply.body["results"]
    assert len(results) == BATCH_ITEMS_MAX
    assert all(r["status"] == 201 and r["replayed"] is False for r in results), [
        r for r in results if r["status"] != 201
    ][:3]
    assert len({r["payment"]["payment_id"] for r in results}) == BATCH_ITEMS_MAX
    half = BATCH_ITEMS_MAX // 2
    assert minor(stack.balance(a["account"])) == before[a["account"]] - half
    assert minor(stack.balance(b["account"])) == before[b["account"]] - half


def test_envelope_errors(stack: Stack, partner: dict[str, Any], customers: dict[str, Any]) -> None:
    token = partner["token"]
    a = customers["a"]
    before = minor(stack.balance(a["account"]))
    valid = item(a["agreement_id"], partner["settlement_account"], "1.00")
    # one item too many: 400 in the standard shape, nothing paid
    too_many = [item(a["agreement_id"], partner["settlement_account"], "0.01") for _ in range(BATCH_ITEMS_MAX + 1)]
    reply = post_batch(stack, token, too_many)
    assert_envelope_error(reply, 400, "QP.Batch.TooManyItems")
    assert reply.body["errors"][0]["path"] == "$.payments"
    assert_envelope_error(post_batch(stack, token, []), 400)
    assert_envelope_error(post_batch(stack, token, [valid, 5]), 400)
    assert_envelope_error(stack.call("POST", BATCH, {"payments": [valid], "extra": 1}, token=token), 400)
    assert_envelope_error(stack.call("POST", BATCH, {}, token=token), 400)
    assert_envelope_error(stack.call("POST", BATCH, raw=b'{"payments": [', token=token), 400)
    assert_envelope_error(stack.call("POST", BATCH, {"payments": [valid]}), 401)
    # over the batch's own body bound: 413, whether announced by Content-Length or not
    big = json.dumps({"payments": [valid], "pad": "x" * BATCH_BODY_MAX_BYTES}).encode()
    assert_envelope_error(stack.call("POST", BATCH, raw=big, token=token), 413, "QP.Body.TooLarge")
    # the single endpoint keeps its 64 KiB bound
    reply = stack.call(
        "POST",
        "/v1/quick-payments",
        raw=b" " * (64 * 1024 + 1),
        token=token,
        headers={"x-idempotency-key": uuid.uuid4().hex},
    )
    assert_envelope_error(reply, 413, "QP.Body.TooLarge")
    assert minor(stack.balance(a["account"])) == before


async def test_body_over_the_bound_without_content_length_is_413(stack: Stack, partner: dict[str, Any]) -> None:
    async def chunks() -> Any:
        yield b'{"payments": ['
        for _ in range(BATCH_BODY_MAX_BYTES // 65536 + 1):
            yield b" " * 65536
        yield b"]}"

    async with aiohttp.ClientSession() as session:
        async with session.post(
            stack.url(BATCH),
            data=chunks(),
            headers={"authorization": f"Bearer {partner['token']}", "content-type": "application/json"},
        ) as r:
            assert r.status == 413, await r.text()
            body = await r.json()
    assert body["code"] == "QP.Body.TooLarge"


# ---- SIGKILL of a shard worker mid-batch (a private stack) -------------------------------------------
@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("batch-stack"))
    try:
        yield s
    finally:
        stop_stack(s)


def run_check(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_") or k == "QUICKPAY_CLUSTER_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def wait_drained(stack: Stack, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = 0
        for shard in range(stack.shards):
            conn = await asyncpg.connect(stack.dsn(shard))
            try:
                remaining += await conn.fetchval("SELECT count(*) FROM transfers WHERE status = $1", IN_PROCESS)
            finally:
                await conn.close()
        if remaining == 0:
            return
        assert time.monotonic() < deadline, f"{remaining} payments still in process after {timeout_s}s"
        await asyncio.sleep(0.2)


async def send_batch(
    session: aiohttp.ClientSession, stack: Stack, token: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The batch's results, or None when the request itself failed."""
    try:
        async with session.post(
            stack.url(BATCH),
            json={"payments": items},
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"authorization": f"Bearer {token}"},
        ) as r:
            if r.status != 200:
                return None
            return list((await r.json())["results"])
    except (TimeoutError, aiohttp.ClientError):
        return None


FINAL = {201, 400, 404, 422}  # answers that do not change on a retry


# A request's share of shard 0 is about half its items: at 100 the kill lands in one-statement
# JSON writes, at 600 in writes of pg.COPY_ROWS_MIN rows or more (binary COPY in a transaction).
@pytest.mark.parametrize(("items_per_batch", "batch_count", "kill_after"), [(100, 24, 4), (600, 8, 2)])
async def test_shard_worker_sigkilled_mid_batch_then_whole_batch_retry_is_exactly_once(
    own: Stack, items_per_batch: int, batch_count: int, kill_after: int
) -> None:
    import random

    rng = random.Random(20_261_123)
    partner = own.new_partner("Batch kill")
    token = partner["token"]
    debtors = {s: [own.new_customer(partner, shard=s, funding="1000.00") for _ in range(4)] for s in (0, 1)}
    creditors = {s: [own.new_account(shard=s) for _ in range(2)] for s in (0, 1)}
    batches: list[list[dict[str, Any]]] = []
    debtor_of: dict[str, str] = {}
    for b in range(batch_count):
        items = []
        for i in range(items_per_batch):
            source = rng.randrange(2)
            debtor = rng.choice(debtors[source])
            kind = rng.random()
            creditor = (
                partner["settlement_account"]
                if kind < 0.4
                else rng.choice(creditors[source])
                if kind < 0.6
                else rng.choice(creditors[1 - source])
            )
            it = item(
                debtor["agreement_id"], creditor, f"0.{rng.randint(1, 99):02d}", key=f"kill-{items_per_batch}-{b}-{i}"
            )
            debtor_of[it["idempotency_key"]] = debtor["account"]
            items.append(it)
        batches.append(items)
    balances_before = {d["account"]: minor(own.balance(d["account"])) for s in (0, 1) for d in debtors[s]}
    old_pids = own.shard_worker_pids(0)
    assert len(old_pids) == 1, old_pids
    answers: dict[str, dict[str, Any] | None] = {}
    completed = 0

    async with aiohttp.ClientSession() as session:

        async def sender() -> None:
            nonlocal completed
            # Two batches in flight at a time, so that the kill lands inside one.
            for start in range(0, len(batches), 2):
                pair = batches[start : start + 2]
                replies = await asyncio.gather(*(send_batch(session, own, token, b) for b in pair))
                for items, results in zip(pair, replies):
                    for position, it in enumerate(items):
                        answers[it["idempotency_key"]] = results[position] if results else None
                completed += len(pair)

        async def killer() -> None:
            while completed < kill_after:
                await asyncio.sleep(0.005)
            os.kill(old_pids[0], signal.SIGKILL)

        await asyncio.gather(sender(), killer())
        first_round = dict(answers)
        deadline = time.monotonic() + 60
        while True:
            pids = own.shard_worker_pids(0)
            if pids and pids != old_pids and own.call("GET", "/readyz").status == 200:
                break
            assert time.monotonic() < deadline, "shard 0 was not restarted\n" + own.log()[-4000:]
            await asyncio.sleep(0.2)
        # Retry every batch that has an item without a final answer: the whole batch, same keys.
        for _ in range(40):
            pending = [
                b for b in batches if any((answers[it["idempotency_key"]] or {}).get("status") not in FINAL for it in b)
            ]
            if not pending:
                break
            replies = await asyncio.gather(*(send_batch(session, own, token, b) for b in pending))
            for items, results in zip(pending, replies):
                for position, it in enumerate(items):
                    answers[it["idempotency_key"]] = results[position] if results else None
            await asyncio.sleep(0.25)

    unfinished = {k: a for k, a in answers.items() if (a or {}).get("status") != 201}
    assert not unfinished, f"{len(unfinished)} items never got a 201: {list(unfinished.items())[:3]}"
    disturbed = [a for a in first_round.values() if a is None or a["status"] != 201]
    assert disturbed, "the kill did not disturb any batch; the test proves nothing"
    assert all(a is None or a["status"] in (409, 503) for a in disturbed), {
        a["status"] for a in disturbed if a is not None
    }
    print(f"\nbatch kill test: {len(disturbed)} of {len(answers)} items needed a retry")

    ids = {key: a["payment"]["payment_id"] for key, a in answers.items() if a is not None}
    assert len(set(ids.values())) == len(answers)
    rows = await ledger_rows(own, list(ids.values()))
    assert set(rows) == set(ids.values())
    spent: dict[str, int] = defaultdict(int)
    for items in batches:
        for it in items:
            key = it["idempotency_key"]
            row = rows[ids[key]]
            assert row["debit_account"] == debtor_of[key]
            assert row["amount_minor"] == parse_amount(it["amount"], "CNY")
            answer = answers[key]
            assert answer is not None
            assert (row["status"] == "Rejected") == (answer["payment"]["status"] == "Rejected")
            if row["status"] != "Rejected":
                spent[debtor_of[key]] += row["amount_minor"]
    for debtor, before in balances_before.items():
        assert minor(own.balance(debtor)) == before - spent[debtor], debtor
    await wait_drained(own, 60)
    result = run_check(own)
    assert result.returncode == 0, result.stdout + result.stderr


def test_batch_path_is_not_a_payment_id(stack: Stack, partner: dict[str, Any]) -> None:
    # Schemathesis found it: the payment read's route also matched /v1/quick-payments/batch,
    # so a 405 there advertised `Allow: GET,HEAD,POST`, a GET the document does not declare.
    for method in ("GET", "OPTIONS", "PUT"):
        reply = stack.call(method, BATCH, token=partner["token"])
        assert_envelope_error(reply, 405, "QP.Method.NotAllowed")
        assert reply.headers.get("allow") == "POST", reply.headers


def test_a_lowered_batch_bound_is_enforced_and_documented(tmp_path: Path) -> None:
    """`quickpay up --batch-items-max 3`: four items are a 400 and /openapi.json says 3."""
    from conftest import start_stack, stop_stack

    small = start_stack(tmp_path / "small", shards=1, workers=1, extra=("--batch-items-max", "3"))
    try:
        document = small.call("GET", "/openapi.json")
        assert (
            document.body["components"]["schemas"]["QuickPaymentBatchRequest"]["properties"]["payments"]["maxItems"]
            == 3
        )
        demo = small.demo
        token = small.partner_token()
        agreement = demo["agreements"][0]["agreement_id"]

        def items(n: int) -> list[dict[str, Any]]:
            return [
                {
                    "idempotency_key": f"small-{uuid.uuid4().hex}",
                    "agreement_id": agreement,
                    "amount": "0.01",
                    "currency": "CNY",
                    "creditor_account": demo["settlement_account"],
                    "reference": "small",
                }
                for _ in range(n)
            ]

        ok = small.call("POST", BATCH, {"payments": items(3)}, token=token)
        assert ok.status == 200 and [r["status"] for r in ok.body["results"]] == [201] * 3, ok.body
        too_many = small.call("POST", BATCH, {"payments": items(4)}, token=token)
        assert_envelope_error(too_many, 400, "QP.Batch.TooManyItems")
    finally:
        stop_stack(small)
