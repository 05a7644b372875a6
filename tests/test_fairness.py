"""A bad request fails alone, and so does a greedy partner: partner A hammers every expensive
endpoint at its limit (balance reads of an account it holds thousands of... well, as many
pending agreements over as it may, agreement lists, the event feed, provisional
reconciliation files, batches over its rate limit, token requests, hostile paths), while
partner B pays at a steady rate. B's p99 stays within 2x of its p99 alone, nobody's
readiness drops, and B sees no error.

Latencies are measured open loop from each payment's scheduled send time (coordinated
omission corrected). This VM is shared: a p99 below FLOOR_MS counts as FLOOR_MS, so that
the 2x bound is not a bound on scheduler noise (said in the assertion message), and the
bound is tried over up to LATENCY_ROUNDS_MAX pairs of phases (why: at the constant).
"""

from __future__ import annotations

import asyncio
import datetime
import multiprocessing
import os
import time
import uuid
from typing import Any

import aiohttp
import pytest
from conftest import Stack, start_stack, stop_stack

PAY_RATE_PER_S = 25
PHASE_S = 10.0
HAMMER_TASKS = 12
FLOOR_MS = 25.0
A_LIMIT_RPS = 200  # partner A's configured limit: "its maximum"
# The latency bound is checked over up to this many (alone, loaded) pairs and holds when one
# pair meets it. This shared VM stalls on its own now and then: a payer measured alone saw a
# p99 of 160-207 ms in 2 runs of 11 with no hammer running yet (an fsync or a neighbour),
# which fails a single-shot p99 either way. A hammer that does slow the payer fails every
# round; every behavioural check holds in every round.
LATENCY_ROUNDS_MAX = 3


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("fairness"))
    try:
        yield s
    finally:
        stop_stack(s)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def pay_steadily(
    stack: Stack, partner: dict[str, Any], customer: dict[str, str], creditor: str, duration_s: float
) -> tuple[list[float], list[Any]]:
    """Open loop at PAY_RATE_PER_S; returns (latencies ms from the scheduled time, failures)."""
    latencies: list[float] = []
    failures: list[Any] = []
    headers = {"authorization": f"Bearer {partner['token']}"}
    body = {
        "agreement_id": customer["agreement_id"],
        "amount": "0.01",
        "currency": "CNY",
        "creditor_account": creditor,
        "reference": "steady",
    }
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(scheduled: float) -> None:
            try:
                async with session.post(
                    stack.url("/v1/quick-payments"),
                    json=body,
                    headers={"x-idempotency-key": uuid.uuid4().hex},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as reply:
                    await reply.read()
                    if reply.status != 201:
                        failures.append(reply.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                failures.append(repr(exc))
            latencies.append((time.monotonic() - scheduled) * 1000)

        start = time.monotonic()
        tasks = []
        for n in range(int(duration_s * PAY_RATE_PER_S)):
            scheduled = start + n / PAY_RATE_PER_S
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    return latencies, failures


async def hammer(
    base_url: str, token: str, account: str, creditor: str, agreement_id: str, until: float
) -> dict[str, int]:
    """Closed loops over every expensive endpoint, as fast as the answers come."""
    statuses: dict[str, int] = {}
    headers = {"authorization": f"Bearer {token}"}
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    batch = {
        "payments": [
            {
                "agreement_id": agreement_id,
                "amount": "0.01",
                "currency": "CNY",
                "creditor_account": creditor,
                "reference": "hammer",
                "idempotency_key": f"k{i}",
            }
            for i in range(100)
        ]
    }
    targets: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/accounts/{account}/balance", None),
        ("GET", "/v1/agreements?limit=200", None),
        ("GET", "/v1/events?limit=200", None),
        ("GET", f"/v1/reconciliation-files/{today}?provisional=true", None),
        ("POST", "/v1/quick-payments/batch", batch),
        ("POST", "/v1/agreements", {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"}),
        ("GET", "/v1/" + "x" * 10_000, None),
    ]

    async def loop(index: int) -> None:
        async with aiohttp.ClientSession(headers=headers) as session:
            n = index
            while time.monotonic() < until:
                method, path, body = targets[n % len(targets)]
                n += 1
                extra = {"x-idempotency-key": uuid.uuid4().hex} if body is batch else {}
                if body is batch:
                    body = {"payments": [{**item, "idempotency_key": uuid.uuid4().hex} for item in batch["payments"]]}
                try:
                    async with session.request(
                        method, base_url + path, json=body, headers=extra, timeout=aiohttp.ClientTimeout(total=30)
                    ) as reply:
                        await reply.read()
                        key = f"{method} {path.split('?')[0][:40]} {reply.status}"
                        statuses[key] = statuses.get(key, 0) + 1
                except (TimeoutError, aiohttp.ClientError) as exc:
                    statuses[repr(exc)[:60]] = statuses.get(repr(exc)[:60], 0) + 1

    await asyncio.gather(*(loop(i) for i in range(HAMMER_TASKS)))
    return statuses


def hammer_process(
    out: Any, base_url: str, token: str, account: str, creditor: str, agreement_id: str, duration_s: float
) -> None:
    """The greedy partner runs in its own process, as it would on its own machine: its client
    work must not delay the payer's sends in the test's event loop (that would measure the
    test, not the service). Low priority, too: its client's CPU is its own machine's, not the
    service's, and on this 2-core VM it would otherwise be taken from the stack."""
    os.nice(19)
    out.put(asyncio.run(hammer(base_url, token, account, creditor, agreement_id, time.monotonic() + duration_s)))


async def watch_ready(stack: Stack, until: float) -> list[int]:
    seen = []
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            async with session.get(stack.url("/readyz"), timeout=aiohttp.ClientTimeout(total=10)) as reply:
                await reply.read()
                seen.append(reply.status)
            await asyncio.sleep(0.5)
    return seen


def test_a_partner_at_its_limit_on_expensive_endpoints_does_not_slow_another(own: Stack) -> None:
    payer = own.new_partner("Fair payer")
    customer = own.new_customer(payer, shard=0, funding="1000.00")
    creditor = own.new_account(shard=0)
    rounds: list[tuple[float, float]] = []
    for round_number in range(LATENCY_ROUNDS_MAX):
        # A new greedy partner each round, so that rounds are alike: the first partner's
        # day of payments would make every later round's reconciliation file larger.
        greedy, greedy_customer = _greedy_partner(own, round_number)
        p99_alone, p99_loaded, statuses = _one_round(own, payer, customer, creditor, greedy, greedy_customer)
        rounds.append((p99_alone, p99_loaded))
        print(
            f"fairness: payer p99 alone {p99_alone:.1f} ms, under the hammer {p99_loaded:.1f} ms; "
            f"hammer answers {sum(statuses.values())}"
        )
        if max(p99_loaded, FLOOR_MS) <= 2 * max(p99_alone, FLOOR_MS):
            return
    raise AssertionError(
        f"payer p99 under the hammer above 2x its p99 alone in all {LATENCY_ROUNDS_MAX} rounds "
        f"(alone, loaded ms: {rounds}; p99s under {FLOOR_MS} ms count as {FLOOR_MS}); "
        f"hammer answers in the last: {statuses}"
    )


def _greedy_partner(own: Stack, round_number: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Partner A at A_LIMIT_RPS, with its own customer on the payer's shard, whose account
    holds as many pending agreements as A may hold."""
    greedy = own.new_partner(f"Greedy {round_number}")
    limited = own.admin(
        "PUT",
        f"/admin/v1/partners/{greedy['client_id']}/rate-limit",
        {"requests_per_s": A_LIMIT_RPS, "burst": A_LIMIT_RPS},
    )
    assert limited.status == 200, limited.body
    greedy_customer = own.new_customer(greedy, shard=0, funding="1000.00")
    for _ in range(50):
        made = own.call(
            "POST",
            "/v1/agreements",
            {"debtor_account": greedy_customer["account"], "currency": "CNY", "per_payment_limit": "1.00"},
            token=greedy["token"],
        )
        if made.status != 201:
            assert 400 <= made.status < 500, made.body
            break
    return greedy, greedy_customer


def _one_round(
    own: Stack,
    payer: dict[str, Any],
    customer: dict[str, str],
    creditor: str,
    greedy: dict[str, Any],
    greedy_customer: dict[str, str],
) -> tuple[float, float, dict[str, int]]:
    """The payer alone, then under the hammer: (p99 alone, p99 loaded, the hammer's answers).
    Every behaviour (no failure, ready throughout, no 5xx, the hammer at its limit and
    answered everywhere) is asserted here, in every round."""
    alone, failures = asyncio.run(pay_steadily(own, payer, customer, creditor, PHASE_S))
    assert not failures, failures

    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    greedy_proc = spawn.Process(
        target=hammer_process,
        args=(
            out,
            own.base_url,
            greedy["token"],
            greedy_customer["account"],
            creditor,
            greedy_customer["agreement_id"],
            PHASE_S + 2.0,
        ),
    )
    greedy_proc.start()
    try:
        time.sleep(1.0)  # the hammer is up to speed before the payer starts

        async def together() -> tuple[tuple[list[float], list[Any]], list[int]]:
            payments = asyncio.create_task(pay_steadily(own, payer, customer, creditor, PHASE_S))
            ready = await watch_ready(own, time.monotonic() + PHASE_S)
            return await payments, ready

        (loaded, failures), ready = asyncio.run(together())
        statuses = out.get(timeout=60)
    finally:
        greedy_proc.join(timeout=30)
        if greedy_proc.is_alive():
            greedy_proc.kill()
    assert not failures, failures
    assert set(ready) == {200}, ready
    assert not any(key.endswith(" 500") or key.endswith(" 503") for key in statuses), statuses
    # A ran at its maximum: it was refused for its rate (its refusals are held up to 1 s, so
    # its closed loops do not spin), and every endpoint also answered it.
    assert any(key.endswith(" 429") for key in statuses), f"the hammer never reached its limit: {statuses}"
    answered = {key.rsplit(" ", 1)[0] for key in statuses if not key.endswith(" 429")}
    assert len(answered) >= 7, f"some endpoint never answered the hammer: {statuses}"
    return p99(alone), p99(loaded), statuses
