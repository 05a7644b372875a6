"""`quickpay seed`: partners over the admin API, customers in bulk over the shard protocol.

Partners go through HTTP because their secrets are made and hashed there.
Customers, agreements (created, then authorised by the customer: the same two
shard commands the API sends) and fundings go straight to the shard workers in
pipelined batches: a million accounts over HTTP would take longer than the
benchmark itself. Writes population.json and agreements.csv for load tests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from kernel.ids import new_account_id, new_agreement_id, payment_id_for, shard_of
from kernel.money import parse_amount
from quickpay.config import StateDir
from quickpay.httpclient import Api

__all__ = ["seed_customers", "seed_population"]

CHUNK = 5_000


async def seed_customers(
    addresses: list[str],
    partners: list[dict[str, Any]],
    customers: int,
    funding_minor: int,
    currency: str = "CNY",
    progress: Any = None,
    secret: str | None = None,
) -> list[tuple[int, str, str]]:
    """Open, fund and bind `customers` accounts; returns (partner_index, agreement_id, debtor)."""
    from ledger.client import ShardClient

    shard_count = len(addresses)
    clients = [ShardClient(a, call_timeout_s=120.0, in_flight_max=50_000, secret=secret) for a in addresses]
    rows: list[tuple[int, str, str]] = []
    try:
        done = 0
        while done < customers:
            n = min(CHUNK, customers - done)
            accounts = [new_account_id() for _ in range(n)]
            by_shard: dict[int, list[dict[str, str]]] = {}
            for account in accounts:
                by_shard.setdefault(shard_of(account, shard_count), []).append({"id": account, "currency": currency})
            await asyncio.gather(*(clients[s].call("open_accounts", batch) for s, batch in by_shard.items()))
            calls = []
            chunk_rows = []
            for i, account in enumerate(accounts):
                shard = shard_of(account, shard_count)
                partner_index = (done + i) % len(partners)
                agreement_id = new_agreement_id(account, shard_count)
                chunk_rows.append((partner_index, agreement_id, account))
                calls.append(
                    clients[shard].call(
                        "fund",
                        {
                            "transfer_id": payment_id_for("seed-funding", account, shard),
                            "account_id": account,
                            "amount_minor": funding_minor,
                            "currency": currency,
                            "reference": "seed funding",
                            "body_hash": "seed",
                        },
                    )
                )
                # The two commands POST /v1/agreements and the customer's authorisation
                # (POST /admin/v1/agreements/{id}/authorise) send: the same decisions and
                # the same history rows, without a million HTTP round trips. One connection
                # per shard keeps them in order.
                calls.append(
                    clients[shard].call(
                        "create_agreement",
                        {
                            "id": agreement_id,
                            "partner_id": partners[partner_index]["partner_id"],
                            "debtor_account": account,
                            "currency": currency,
                            "per_payment_limit_minor": funding_minor,
                            "periodic_limits": [["Day", "Calendar", funding_minor * 10]],
                        },
                    )
                )
                calls.append(
                    clients[shard].call(
                        "agreement_action", {"id": agreement_id, "action": "authorise", "actor": "customer"}
                    )
                )
            await asyncio.gather(*calls)
            rows.extend(chunk_rows)
            done += n
            if progress is not None:
                progress(done, customers)
    finally:
        for client in clients:
            await client.close()
    return rows


def seed_population(args: argparse.Namespace) -> dict[str, Any]:
    state = StateDir(args.state_dir)
    topology = state.path / "topology.json"
    if not topology.exists():
        raise SystemExit(f"no stack state in {state.path}: start it with `quickpay up --state-dir {state.path}`")
    shard_count = json.loads(topology.read_text())["shards"]
    addresses = [state.shard_socket(i) for i in range(shard_count)]
    api = Api(args.url)
    admin = state.admin_token
    try:
        api.request("GET", "/readyz")
    except Exception as exc:  # refused connection, or a 503 while a shard is down
        raise SystemExit(
            f"no ready quickpay stack at {args.url} ({exc}); start it with "
            f"`quickpay up --state-dir {state.path}` or give --url"
        ) from None
    currency = "CNY"
    funding_minor = parse_amount(args.funding, currency)
    started = time.monotonic()
    partners = []
    for i in range(args.partners):
        p = api.request("POST", "/admin/v1/partners", {"name": f"Partner {i}", "currency": currency}, token=admin)
        partners.append({k: p[k] for k in ("partner_id", "client_id", "client_secret", "settlement_account")})

    def progress(done: int, total: int) -> None:
        print(f"\rseeding customers: {done}/{total}", end="", file=sys.stderr, flush=True)

    rows = asyncio.run(
        seed_customers(
            addresses, partners, args.customers, funding_minor, currency, progress, secret=state.cluster_secret
        )
    )
    print(file=sys.stderr)
    blocked_count = int(len(rows) * args.blocked_share) if args.blocked_share > 0 else 0
    rng = random.Random(7)
    blocked = rng.sample(rows, blocked_count) if blocked_count else []
    from gateway.schemas import LIST_CHANGE_VALUES_MAX

    for start in range(0, len(blocked), LIST_CHANGE_VALUES_MAX):
        api.request(
            "POST",
            "/admin/v1/fraud/lists/blocked_accounts",
            {"add": [debtor for _, _, debtor in blocked[start : start + LIST_CHANGE_VALUES_MAX]]},
            token=admin,
        )
    blocked_ids = {agreement for _, agreement, _ in blocked}
    out = Path(args.out or state.path)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "agreements.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["partner_index", "agreement_id", "debtor_account"])
        writer.writerows(r for r in rows if r[1] not in blocked_ids)
    population = {
        "base_url": args.url,
        "admin_token": admin,
        "currency": currency,
        "partners": partners,
        "agreements_csv": "agreements.csv",
        "shards": shard_count,
        "blocked_agreements": [{"partner_index": p, "agreement_id": a, "debtor_account": d} for p, a, d in blocked],
        "customers": len(rows),
        "funding": args.funding,
    }
    (out / "population.json").write_text(json.dumps(population, indent=2))
    print(
        f"seeded {args.partners} partners and {len(rows)} customers in "
        f"{time.monotonic() - started:.1f}s; wrote {out / 'population.json'}",
        flush=True,
    )
    return population
