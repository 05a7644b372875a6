"""Seeding a population through the API and building request templates (Zipf debtors)."""

from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench.common import FUNDING, TEMPLATES_MAX, ZIPF_EXPONENT, log
from loadtest.bench.stack import StackProcess


# ---- population and request templates --------------------------------------------------
@dataclass
class Population:
    partners: list[dict[str, Any]]
    agreements: list[tuple[int, str, str]]  # (partner_index, agreement_id, debtor_account)
    tokens: list[str] = field(default_factory=list)


def bench_rules(out: Path) -> Path:
    """The shipped rules with the per-debtor velocity thresholds raised out of reach.

    Every rule is still compiled and evaluated on every payment; only the thresholds of the
    four debtor-velocity rules (per partner and across partners) change, since synthetic load at thousands of payments per
    second over a few thousand hot debtors would otherwise be (correctly) blocked.
    """
    from fraud import __file__ as fraud_init

    text = (Path(fraud_init).parent / "default.rules").read_text()
    # Per-partner ((debtor, partner)) and cross-partner (debtor) windows alike; four rules.
    text, counts = re.subn(r"(count\(by (?:debtor|\(debtor, partner\)), 10m\) > )[0-9_]+", r"\g<1>1_000_000_000", text)
    text, sums = re.subn(
        r"(sum\(amount, by (?:debtor|\(debtor, partner\)), 1h\) > )[0-9_]+", r"\g<1>1_000_000_000_000_000", text
    )
    assert counts >= 2 and sums >= 2, f"default.rules changed shape: {counts} count and {sums} sum windows matched"
    path = out / "bench.rules"
    path.write_text(text)
    return path


def seed(stack: StackProcess, customers: int, partners: int, out: Path) -> Population:
    return seed_at(stack.base_url, stack.state_dir, customers, partners, out)


def seed_at(base_url: str, state_dir: Path, customers: int, partners: int, out: Path) -> Population:
    """Partners through the API and funded customers with authorised agreements (quickpay
    seed), then a token per partner; for `quickpay bench` and `quickpay soak`."""
    from quickpay.httpclient import Api
    from quickpay.seed import seed_population

    started = time.monotonic()
    ns = argparse.Namespace(
        url=base_url,
        state_dir=str(state_dir),
        partners=partners,
        customers=customers,
        funding=FUNDING,
        blocked_share=0.0,
        out=str(out),
    )
    population = seed_population(ns)
    rows: list[tuple[int, str, str]] = []
    with open(out / "agreements.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [(int(p), a, d) for p, a, d in reader]
    api = Api(base_url)
    tokens = [api.token(p["client_id"], p["client_secret"]) for p in population["partners"]]
    log(f"seeded {partners} partners and {len(rows)} customers in {time.monotonic() - started:.1f}s")
    return Population(population["partners"], rows, tokens)


def build_templates(
    population: Population, count: int = TEMPLATES_MAX, seed_value: int = 11, exponent: float = ZIPF_EXPONENT
) -> tuple[list[Any], list[tuple[str, str]]]:
    """Request templates with Zipf-skewed debtors; also (partner_id, agreement_id) per template."""
    from loadtest.generator import IDEMPOTENCY_KEY, RequestTemplate

    rng = random.Random(seed_value)
    rows = list(population.agreements)
    rng.shuffle(rows)  # the hot debtors are random accounts, not the first seeded
    cumulative = list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, len(rows) + 1)))
    total = cumulative[-1]
    templates: list[Any] = []
    routes: list[tuple[str, str]] = []
    for _ in range(min(count, max(1, len(rows) * 4))):
        index = min(bisect.bisect_left(cumulative, rng.random() * total), len(rows) - 1)
        partner_index, agreement_id, _debtor = rows[index]
        partner = population.partners[partner_index]
        body = json.dumps(
            {
                "agreement_id": agreement_id,
                "amount": "1.00",
                "currency": "CNY",
                "creditor_account": partner["settlement_account"],
                "reference": "bench " + IDEMPOTENCY_KEY,
            },
            separators=(",", ":"),
        ).encode()
        templates.append(
            RequestTemplate(
                method="POST",
                path="/v1/quick-payments",
                headers=(
                    ("Authorization", f"Bearer {population.tokens[partner_index]}"),
                    ("Content-Type", "application/json"),
                ),
                body=body,
                idempotency_key_header="x-idempotency-key",
            )
        )
        routes.append((partner["partner_id"], agreement_id))
    return templates, routes


def expected_payment_ids(
    run_id: str, total: int, processes: int, routes: list[tuple[str, str]], shard_count: int
) -> list[str]:
    """Every payment id a `run_load` with this run id sends (no retries): the generator's keys
    are run id + worker index (3 digits) + sequence (11 digits), template = sequence mod n."""
    from kernel.ids import payment_id_for, shard_of

    ids = []
    n = len(routes)
    shards = [shard_of(agreement, shard_count) for _, agreement in routes]
    for worker in range(processes):
        count = total // processes + (1 if worker < total % processes else 0)
        prefix = f"{run_id}{worker:03d}"
        for sequence in range(count):
            t = sequence % n
            ids.append(payment_id_for(routes[t][0], f"{prefix}{sequence:011d}", shards[t]))
    return ids


# Batch items: key = the generator's request key + "i" + item index (4 digits), so every item
# of every request has its own idempotency key (27 characters) and its payment id is known.
BATCH_TEMPLATES_MAX = 16


def batch_item_key(request_key: str, item: int) -> str:
    return f"{request_key}i{item:04d}"


def build_batch_templates(
    population: Population,
    items: int,
    count: int = BATCH_TEMPLATES_MAX,
    seed_value: int = 13,
    exponent: float = ZIPF_EXPONENT,
) -> tuple[list[Any], list[tuple[str, list[str]]]]:
    """Batch request templates: each for one partner (a batch is one partner's), `items`
    payments with Zipf-skewed debtors among that partner's agreements. Also, per template,
    (partner_id, [agreement_id per item])."""
    from loadtest.generator import IDEMPOTENCY_KEY, RequestTemplate

    if not 1 <= items <= 10_000:
        raise ValueError("items per batch must be between 1 and 10000")
    rng = random.Random(seed_value)
    by_partner: dict[int, list[str]] = {}
    for partner_index, agreement_id, _debtor in population.agreements:
        by_partner.setdefault(partner_index, []).append(agreement_id)
    partner_indexes = sorted(by_partner)
    templates: list[Any] = []
    routes: list[tuple[str, list[str]]] = []
    for t in range(count):
        partner_index = partner_indexes[t % len(partner_indexes)]
        rows = list(by_partner[partner_index])
        rng.shuffle(rows)
        cumulative = list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, len(rows) + 1)))
        total = cumulative[-1]
        partner = population.partners[partner_index]
        chosen = [rows[min(bisect.bisect_left(cumulative, rng.random() * total), len(rows) - 1)] for _ in range(items)]
        payments = [
            {
                "idempotency_key": batch_item_key(IDEMPOTENCY_KEY, j),
                "agreement_id": agreement_id,
                "amount": "1.00",
                "currency": "CNY",
                "creditor_account": partner["settlement_account"],
                "reference": "bench batch",
            }
            for j, agreement_id in enumerate(chosen)
        ]
        body = json.dumps({"payments": payments}, separators=(",", ":")).encode()
        templates.append(
            RequestTemplate(
                method="POST",
                path="/v1/quick-payments/batch",
                headers=(
                    ("Authorization", f"Bearer {population.tokens[partner_index]}"),
                    ("Content-Type", "application/json"),
                ),
                body=body,
            )
        )
        routes.append((partner["partner_id"], chosen))
    return templates, routes


def expected_batch_payment_ids(
    run_id: str, total: int, processes: int, routes: list[tuple[str, list[str]]], shard_count: int
) -> list[str]:
    """Every item's payment id of a batch `run_load` with this run id (cf. expected_payment_ids)."""
    from kernel.ids import payment_id_for, shard_of

    ids: list[str] = []
    n = len(routes)
    shards = [[shard_of(agreement, shard_count) for agreement in agreements] for _, agreements in routes]
    for worker in range(processes):
        count = total // processes + (1 if worker < total % processes else 0)
        prefix = f"{run_id}{worker:03d}"
        for sequence in range(count):
            t = sequence % n
            partner_id = routes[t][0]
            key = f"{prefix}{sequence:011d}"
            ids.extend(payment_id_for(partner_id, batch_item_key(key, j), shard) for j, shard in enumerate(shards[t]))
    return ids
