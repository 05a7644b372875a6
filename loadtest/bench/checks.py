"""After each phase: exactly once (every sent id looked up by its payment id) and conservation."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from loadtest.bench.population import Population


# ---- checks --------------------------------------------------------------------------------
async def _payment_rows(dsns: list[str], ids: list[str], chunk: int = 20_000) -> list[dict[str, int]]:
    """Per shard: payment id -> number of (non-rejected) payment rows with that id."""
    import asyncpg

    found: list[dict[str, int]] = []
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            counts: dict[str, int] = {}
            for start in range(0, len(ids), chunk):
                for row in await conn.fetch(
                    "SELECT id, count(*) AS n FROM transfers WHERE id = ANY($1::text[]) AND kind = 'payment'"
                    " AND status <> 'Rejected' GROUP BY id",
                    ids[start : start + chunk],
                ):
                    counts[row["id"]] = int(row["n"])
            found.append(counts)
        finally:
            await conn.close()
    return found


def verify_exactly_once(acknowledged_ids: list[str], dsns: list[str]) -> tuple[bool, list[str]]:
    """Every acknowledged payment id must exist exactly once across all shards."""
    problems: list[str] = []
    wanted = list(dict.fromkeys(acknowledged_ids))
    if len(wanted) != len(acknowledged_ids):
        problems.append(f"{len(acknowledged_ids) - len(wanted)} payment ids were acknowledged twice")
    per_shard = asyncio.run(_payment_rows(dsns, wanted))
    missing = doubled = 0
    for payment_id in wanted:
        n = sum(shard.get(payment_id, 0) for shard in per_shard)
        if n == 0:
            missing += 1
            if missing <= 5:
                problems.append(f"acknowledged payment {payment_id} is not in the ledger")
        elif n > 1:
            doubled += 1
            if doubled <= 5:
                shards = [i for i, shard in enumerate(per_shard) if payment_id in shard]
                problems.append(f"payment {payment_id} is in the ledger {n} times (shards {shards})")
    if missing > 5:
        problems.append(f"... {missing} acknowledged payments missing in all")
    if doubled > 5:
        problems.append(f"... {doubled} payments recorded more than once in all")
    return not problems, problems


def check_load_ids(sent_ids: list[str], acknowledged: int, dsns: list[str]) -> dict[str, Any]:
    """For the load steps, where the generator does not return ids: of the ids it sent (known
    from the keys), how many are in the ledger; none may be there twice, and there must be
    at least as many as were acknowledged (201) and no more than were sent."""
    per_shard = asyncio.run(_payment_rows(dsns, list(dict.fromkeys(sent_ids))))
    totals: dict[str, int] = {}
    for shard in per_shard:
        for payment_id, n in shard.items():
            totals[payment_id] = totals.get(payment_id, 0) + n
    present = len(totals)
    doubled = sum(1 for n in totals.values() if n > 1)
    problems = []
    if doubled:
        problems.append(f"{doubled} load payments are in the ledger more than once")
    if present < acknowledged:
        problems.append(f"only {present} load payments are in the ledger but {acknowledged} were acknowledged")
    if present > len(sent_ids):
        problems.append(f"{present} load payments in the ledger but only {len(sent_ids)} were sent")
    return {
        "ok": not problems,
        "problems": problems,
        "sent": len(sent_ids),
        "acknowledged": acknowledged,
        "in_ledger": present,
        "doubled": doubled,
        "rows": sum(totals.values()),
    }


def count_committed(ids: list[str], dsns: list[str]) -> int:
    """How many of `ids` are in the ledger (as payment rows, across all shards)."""
    return sum(len(shard) for shard in asyncio.run(_payment_rows(dsns, list(dict.fromkeys(ids)))))


async def _count_payment_rows(dsns: list[str]) -> int:
    import asyncpg

    total = 0
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            total += int(
                await conn.fetchval("SELECT count(*) FROM transfers WHERE kind = 'payment' AND status <> 'Rejected'")
            )
        finally:
            await conn.close()
    return total


def count_payment_rows(dsns: list[str]) -> int:
    return asyncio.run(_count_payment_rows(dsns))


def check_conservation(dsns: list[str]) -> tuple[bool, dict[str, Any]]:
    from ledger.audit import audit

    # Conservation only: the row scan of `quickpay check` (every row through its decoder) would
    # add minutes over a benchmark's millions of rows and measures nothing the bench reports.
    report = asyncio.run(audit(dsns, rows=False))
    return bool(report.ok), report.to_dict()


async def _verification_burst(base_url: str, population: Population, count: int, replays: int = 20) -> dict[str, Any]:
    """`count` payments with known keys; returns the acknowledged ids and replay results."""
    import aiohttp

    rng = random.Random(5)
    run = uuid.uuid4().hex[:8]
    acknowledged: list[str] = []
    failures: list[str] = []
    sent: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
    replay_mismatch = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        semaphore = asyncio.Semaphore(32)

        async def pay(i: int) -> None:
            partner_index, agreement_id, _ = population.agreements[rng.randrange(len(population.agreements))]
            partner = population.partners[partner_index]
            key = f"verify-{run}-{i}"
            body = {
                "agreement_id": agreement_id,
                "amount": "1.00",
                "currency": "CNY",
                "creditor_account": partner["settlement_account"],
                "reference": f"verify {i}",
            }
            headers = {"authorization": f"Bearer {population.tokens[partner_index]}", "x-idempotency-key": key}
            async with semaphore:
                async with session.post(f"{base_url}/v1/quick-payments", json=body, headers=headers) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 201:
                        acknowledged.append(data["payment_id"])
                        sent.append((body, key, {"headers": headers, "payment_id": data["payment_id"]}))
                    else:
                        failures.append(f"{resp.status}: {str(data)[:200]}")

        await asyncio.gather(*(pay(i) for i in range(count)))
        for body, _key, meta in sent[:replays]:
            async with session.post(f"{base_url}/v1/quick-payments", json=body, headers=meta["headers"]) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 201 or data.get("payment_id") != meta["payment_id"]:
                    replay_mismatch += 1
    return {
        "acknowledged": acknowledged,
        "failures": failures,
        "replays": min(replays, len(sent)),
        "replay_mismatch": replay_mismatch,
    }
