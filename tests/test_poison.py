"""A bad request fails alone (issue 7 §1): poison requests, through the gateway and straight
into the shard protocol, interleaved with another partner's good payments. Every good
payment is answered 201, no shard worker restarts, and `quickpay check` passes after.

Regressions: a quick-payment whose reference held a NUL stopped the shard worker (the batch
write failed and the worker exited 70, failing every partner's in-flight payment); a NUL or
a bad type in any field of a shard command did the same, or killed the batcher.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest
from conftest import ROOT, Stack, http

from kernel.ids import payment_id_for, shard_of
from ledger.client import ShardClient, ShardError

GOOD_TIMEOUT_S = 30.0  # a generous bound: the point is an answer, not its speed


@pytest.fixture(scope="module")
def good(stack: Stack) -> dict[str, Any]:
    """Partner B, who only sends good payments, with a funded customer on each shard."""
    partner = stack.new_partner("Good Partner")
    customers = [stack.new_customer(partner, shard=s, funding="500.00") for s in range(stack.shards)]
    return {"partner": partner, "customers": customers}


@pytest.fixture(scope="module")
def hostile(stack: Stack) -> dict[str, Any]:
    """Partner A, the one sending poison, with a customer of its own."""
    partner = stack.new_partner("Hostile Partner")
    return {"partner": partner, "customer": stack.new_customer(partner, shard=0, funding="10.00")}


def _pids(stack: Stack) -> dict[int, list[int]]:
    pids = {s: stack.shard_worker_pids(s) for s in range(stack.shards)}
    assert all(len(p) == 1 for p in pids.values()), pids
    return pids


def _assert_standard_error(reply: Any, what: str) -> None:
    assert 400 <= reply.status < 500, (what, reply.status, reply.body)
    assert isinstance(reply.body, dict) and set(reply.body) == {"code", "message", "errors"}, (what, reply.body)
    assert reply.headers.get("x-fapi-interaction-id"), what


def _check(stack: Stack) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _http_poison(stack: Stack, hostile: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, kwargs for Stack.call) of poison requests through the gateway."""
    token = hostile["partner"]["token"]
    customer = hostile["customer"]
    account = customer["account"]
    body = {
        "agreement_id": customer["agreement_id"],
        "amount": "1.00",
        "currency": "CNY",
        "creditor_account": hostile["partner"]["settlement_account"],
        "reference": "ok",
    }
    pay = "/v1/quick-payments"

    def payment(**changes: Any) -> dict[str, Any]:
        return {
            "method": "POST",
            "path": pay,
            "body": {**body, **changes},
            "token": token,
            "headers": {"x-idempotency-key": uuid.uuid4().hex},
        }

    return [
        ("nul reference", payment(reference="a\x00b")),
        ("nul only reference", payment(reference="\x00")),
        ("nul device id", payment(risk={"device_id": "d\x00", "ip": "10.0.0.1"})),
        ("nul ip", payment(risk={"ip": "\x00"})),
        ("control reference", payment(reference="line\nbreak")),
        ("nul agreement", payment(agreement_id="agr_\x00")),
        ("nul creditor", payment(creditor_account="acc_\x00")),
        (
            "unicode digit payment id",
            {"method": "GET", "path": f"/v1/quick-payments/pay_{'0' * 32}_" + quote("\u00b2"), "token": token},
        ),
        (
            "arabic digit payment id",
            {"method": "GET", "path": f"/v1/quick-payments/pay_{'0' * 32}_" + quote("\u0663"), "token": token},
        ),
        (
            "int64+1 cursor",
            {
                "method": "GET",
                "path": f"/v1/accounts/{account}/transactions?cursor="
                + _b64({str(shard_of(account, stack.shards)): 2**63}),
                "token": token,
            },
        ),
        (
            "2**70 cursor",
            {
                "method": "GET",
                "path": f"/v1/accounts/{account}/transactions?cursor="
                + _b64({str(shard_of(account, stack.shards)): 2**70}),
                "token": token,
            },
        ),
        ("nul in path", {"method": "GET", "path": f"/v1/accounts/{account}%00/balance", "token": token}),
        ("nul in query", {"method": "GET", "path": f"/v1/accounts/{account}/transactions?limit=1%00", "token": token}),
        (
            "invalid utf-8 body",
            {
                "method": "POST",
                "path": pay,
                "raw": b'{"reference": "\xff\xfe"}',
                "token": token,
                "headers": {"x-idempotency-key": uuid.uuid4().hex},
            },
        ),
    ]


def test_poison_through_the_gateway_interleaved_with_good_payments(
    stack: Stack, good: dict[str, Any], hostile: dict[str, Any]
) -> None:
    before = _pids(stack)
    poison = _http_poison(stack, hostile)
    partner = good["partner"]

    def good_payments(worker: int) -> list[int]:
        statuses = []
        for i in range(15):
            customer = good["customers"][(worker + i) % len(good["customers"])]
            reply = http(
                "POST",
                stack.url("/v1/quick-payments"),
                {
                    "agreement_id": customer["agreement_id"],
                    "amount": "0.01",
                    "currency": "CNY",
                    "creditor_account": partner["settlement_account"],
                    "reference": f"good {worker}/{i}",
                },
                token=partner["token"],
                headers={"x-idempotency-key": uuid.uuid4().hex},
                timeout=GOOD_TIMEOUT_S,
            )
            statuses.append(reply.status)
            assert reply.status == 201, reply.body
        return statuses

    def send_poison(round_: int) -> list[str]:
        seen = []
        for name, kwargs in poison:
            kwargs = dict(kwargs)
            method, path = kwargs.pop("method"), kwargs.pop("path")
            if "headers" in kwargs:  # a fresh key each round
                kwargs["headers"] = {"x-idempotency-key": uuid.uuid4().hex}
            reply = stack.call(method, path, timeout=GOOD_TIMEOUT_S, **kwargs)
            _assert_standard_error(reply, name)
            seen.append(name)
        return seen

    with ThreadPoolExecutor(max_workers=5) as pool:
        goods = [pool.submit(good_payments, w) for w in range(3)]
        bads = [pool.submit(send_poison, r) for r in range(2)]
        assert all(f.result() == [201] * 15 for f in goods)
        assert all(len(f.result()) == len(poison) for f in bads)
    assert _pids(stack) == before, "a shard worker restarted"
    _check(stack)


# ---- straight into the shard protocol: the worker's own line ------------------------------------
def _good_pay(stack: Stack, good: dict[str, Any], shard: int) -> dict[str, Any]:
    partner = good["partner"]
    customer = next(c for c in good["customers"] if shard_of(c["agreement_id"], stack.shards) == shard)
    key = uuid.uuid4().hex
    return {
        "payment_id": payment_id_for(partner["partner_id"], key, shard),
        "partner_id": partner["partner_id"],
        "agreement_id": customer["agreement_id"],
        "amount_minor": 1,
        "currency": "CNY",
        "creditor_account": partner["settlement_account"],
        "creditor_shard": shard,
        "reference": "good",
        "body_hash": uuid.uuid4().hex,
        "device_id": None,
        "ip": None,
    }


NUL = "x\x00y"
BAD_TEXT = [NUL, "\x00", 7, ["list"], "x" * 2000]
BAD_ID = [NUL, "acc_\x00", 7, "", "a" * 65, "bad id"]
BAD_INT = [2**63, -(2**63) - 1, "1", True, 1.5, None]
BAD_AMOUNT = [0, -1, *BAD_INT]
BAD_CURRENCY = ["XXX", "CN\x00", 1, None]


def _hostile_commands(stack: Stack, good: dict[str, Any], shard: int) -> list[tuple[str, str, Any]]:
    """(what, op, args) for every field of every write op, with each hostile value."""
    partner = good["partner"]
    base_pay = _good_pay(stack, good, shard)
    commands: list[tuple[str, str, Any]] = []

    def variants(op: str, base: dict[str, Any], field_values: dict[str, list[Any]]) -> None:
        for name, values in field_values.items():
            for value in values:
                commands.append((f"{op}.{name}={value!r:.20}", op, {**base, name: value}))
        for name in base:
            if name not in ("device_id", "ip", "kind", "partner_id"):
                commands.append((f"{op} without {name}", op, {k: v for k, v in base.items() if k != name}))

    variants(
        "pay",
        base_pay,
        {
            "payment_id": BAD_ID,
            "partner_id": BAD_ID,
            "agreement_id": BAD_ID,
            "amount_minor": BAD_AMOUNT,
            "currency": BAD_CURRENCY,
            "creditor_account": BAD_ID,
            "creditor_shard": [99, -1, "0", 2**63, None],
            "reference": BAD_TEXT + [None],
            "body_hash": BAD_TEXT + [None],
            "device_id": BAD_TEXT,
            "ip": BAD_TEXT,
        },
    )
    variants(
        "fund",
        {
            "transfer_id": payment_id_for("admin-funding", uuid.uuid4().hex, shard),
            "account_id": good["customers"][0]["account"],
            "amount_minor": 1,
            "currency": "CNY",
            "reference": "r",
            "body_hash": "h",
        },
        {
            "transfer_id": BAD_ID,
            "account_id": BAD_ID,
            "amount_minor": BAD_AMOUNT,
            "currency": BAD_CURRENCY,
            "reference": BAD_TEXT + [None],
            "body_hash": BAD_TEXT + [None],
        },
    )
    variants(
        "create_agreement",
        {
            "id": "agr_" + uuid.uuid4().hex[:20],
            "partner_id": partner["partner_id"],
            "debtor_account": good["customers"][0]["account"],
            "currency": "CNY",
            "per_payment_limit_minor": 100,
            "periodic_limits": [["Day", "Calendar", 100]],
        },
        {
            "id": BAD_ID,
            "partner_id": BAD_ID,
            "debtor_account": BAD_ID,
            "currency": BAD_CURRENCY,
            "per_payment_limit_minor": BAD_AMOUNT,
            "periodic_limits": [
                None,
                "x",
                [["Day", "Calendar", bad] for bad in BAD_AMOUNT if bad is not None][:3],
                [["Hour", "Calendar", 1]],
                [["Day", "Sideways", 1]],
                [["Day", "Calendar", 1], ["Day", "Calendar", 2]],
                [["Day", "Calendar", 1]] * 9,
            ],
        },
    )
    variants(
        "agreement_action",
        {"id": "agr_" + uuid.uuid4().hex[:20], "action": "authorise", "actor": "customer"},
        {"id": BAD_ID, "actor": BAD_TEXT + [None, "partner ", "bank"], "action": [None, 1, [], {}]},
    )
    variants(
        "partner_rate_limit",
        {"id": partner["partner_id"], "requests_per_s": 100, "burst": 100},
        {"id": BAD_ID, "requests_per_s": [0, 10_000_001, *BAD_INT], "burst": [0, 10_000_001, *BAD_INT]},
    )
    variants(
        "refund",
        {
            "refund_id": "ref_" + uuid.uuid4().hex,
            "partner_id": partner["partner_id"],
            "payment_id": "pay_" + uuid.uuid4().hex,
            "body_hash": "h",
        },
        {
            "refund_id": BAD_ID,
            "partner_id": BAD_ID,
            "payment_id": BAD_ID,
            "amount_minor": [a for a in BAD_AMOUNT if a is not None],  # None: what remains (valid)
            "reason": BAD_TEXT + ["other", 1],
            "reference": BAD_TEXT,
            "body_hash": BAD_TEXT + [None],
        },
    )
    variants(
        "create_partner",
        {"id": "ptn_" + uuid.uuid4().hex[:16], "name": "n", "secret_sha256": "0" * 64, "settlement_account": "set_x"},
        {"id": BAD_ID, "name": BAD_TEXT + [None], "secret_sha256": BAD_TEXT + [None], "settlement_account": BAD_ID},
    )
    account = {"id": "acc_" + uuid.uuid4().hex[:20], "currency": "CNY", "kind": "customer", "partner_id": None}
    for name, values in {
        "id": BAD_ID,
        "currency": BAD_CURRENCY,
        "kind": ["funding", "clearing", NUL, 3],
        "partner_id": [NUL, 7, "a" * 65],
    }.items():
        for value in values:
            commands.append((f"open_accounts.{name}={value!r:.20}", "open_accounts", [{**account, name: value}]))
    commands += [
        ("open_accounts not a list", "open_accounts", {"id": "acc_x"}),
        ("open_accounts item not a map", "open_accounts", ["acc_x"]),
    ]
    leg = [
        payment_id_for("ptn_x", uuid.uuid4().hex, shard),
        (shard + 1) % stack.shards,
        good["customers"][0]["account"],
        1,
        "CNY",
        1,
    ]
    for index, values in enumerate(
        [BAD_ID, [99, -1, "0", 2**63], BAD_ID, BAD_AMOUNT, BAD_CURRENCY, [-1, 2**63, "1", None]]
    ):
        for value in values:
            bad_leg = list(leg)
            bad_leg[index] = value
            commands.append((f"credit[{index}]={value!r:.20}", "credit", [bad_leg]))
    commands += [
        ("credit to a clearing stripe", "credit", [[*leg[:2], "sys_clearing", *leg[3:]]]),
        (
            "pay across shards to a clearing stripe",
            "pay",
            {**base_pay, "creditor_shard": (shard + 1) % stack.shards, "creditor_account": "sys_clearing"},
        ),
        ("credit leg too short", "credit", [leg[:5]]),
        ("credit not a list", "credit", {"a": 1}),
        ("delivered nul id", "delivered", [NUL]),
        ("delivered not a list", "delivered", "x"),
        ("settings nul value", "settings", {"k": NUL}),
        ("settings not a map", "settings", [1]),
        ("pay args not a map", "pay", ["a"]),
        ("pay args none", "pay", None),
        ("fraud nul author", "fraud", {"action": "rollback", "author": NUL}),
        ("fraud nul list value", "fraud", {"action": "list_add", "list": "blocked", "values": ["ok", NUL]}),
        (
            "fraud nul rules",
            "fraud",
            {"action": "propose", "text": "rule\x00", "author": "a", "activate": True, "filename": "f"},
        ),
        ("fraud not a map", "fraud", [1]),
    ]
    return commands


def test_every_hostile_shard_command_fails_alone(stack: Stack, good: dict[str, Any]) -> None:
    """Each command a shard would fail to store is refused with BAD_REQUEST, alone: the good
    payments sent in the same frame (and so, mostly, the same batch) commit, and the worker
    keeps running. Before, a NUL in any text field stopped the worker at the batch write."""
    before = _pids(stack)
    refused: list[str] = []

    async def run() -> None:
        for shard in range(stack.shards):
            client = ShardClient(stack.shard_socket(shard), call_timeout_s=GOOD_TIMEOUT_S)
            try:
                commands = _hostile_commands(stack, good, shard)
                for start in range(0, len(commands), 10):
                    chunk = commands[start : start + 10]
                    goods = [_good_pay(stack, good, shard) for _ in range(len(chunk) + 1)]
                    calls = []
                    for index, (_, op, args) in enumerate(chunk):
                        calls.append(client.call("pay", goods[index]))
                        calls.append(client.call(op, args))
                    calls.append(client.call("pay", goods[-1]))
                    results = await asyncio.gather(*calls, return_exceptions=True)
                    for index, (what, _, _) in enumerate(chunk):
                        answer = results[2 * index + 1]
                        assert isinstance(answer, ShardError) and answer.code == "BAD_REQUEST", (what, answer)
                        refused.append(what)
                    for answer in results[0::2]:
                        assert isinstance(answer, dict) and answer["code"] == "OK", answer
                        assert answer["transfer"]["status"] == "AcceptedSettlementCompleted", answer
            finally:
                await client.close()

    asyncio.run(run())
    assert len(refused) > 150
    assert _pids(stack) == before, "a shard worker restarted"
    stack.wait_ready()
    _check(stack)
