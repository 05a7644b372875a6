"""Microbenchmark: per-payment cost of FraudFilter.evaluate (+ record) on this machine.

Run `python -m fraud.microbench`. Prints p50/p99/max in microseconds for the default
rule set and for a generated 50-rule set, over payments with realistic key cardinality
(10,000 debtors, 50,000 creditors, 5,000 devices, 3,000 IPs, ~20 ms apart).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

from fraud.engine import FraudFilter
from fraud.facts import PaymentFacts
from fraud.ruleset import RuleSet, default_rules_path, load_rules_file, parse_rules

__all__ = ["generated_rules_text", "main", "make_payments", "run"]

_WINDOWS = ("10m", "1h", "1d")
_KEYS = ("debtor", "creditor", "device_id", "ip", "(debtor, creditor)")


def generated_rules_text(rule_count: int = 50, seed: int = 7) -> str:
    """A realistic mix: thresholds, list lookups, and aggregates over a handful of windows."""
    rng = random.Random(seed)
    lines = [
        'list hot_accounts = ["acc_hot_1", "acc_hot_2"]',
        'list hot_devices = ["dev_hot"]',
        "threshold review 60",
        "threshold block 120",
    ]
    for index in range(rule_count):
        shape = index % 6
        window = rng.choice(_WINDOWS)
        key = rng.choice(_KEYS)
        # Thresholds sit in the tail of the payment mix so, as in production, most
        # payments fire nothing and the windows keep filling.
        if shape == 0:
            condition = f'currency == "CNY" and amount > {rng.randint(10, 200) * 100_000}'
        elif shape == 1:
            condition = f"count(by {key}, {window}) > {rng.randint(20, 100)}"
        elif shape == 2:
            condition = f"sum(amount, by {key}, {window}) > {rng.randint(20, 200) * 1_000_000}"
        elif shape == 3:
            field = "creditor" if "creditor" not in key else "device_id"
            condition = f"distinct({field}, by {key}, {window}) > {rng.randint(10, 40)}"
        elif shape == 4:
            condition = "debtor in list hot_accounts or device_id in list hot_devices"
        else:
            condition = (
                f"first_to_creditor and amount > {rng.randint(5, 20) * 1_000_000} and hour < {rng.randint(1, 23)}"
            )
        action = rng.choice(("review", "review", "block"))
        shadow = "\n    shadow" if index % 10 == 9 else ""
        lines.append(
            f"rule generated_{index} {{\n    action {action}\n    score {rng.randint(5, 50)}{shadow}\n"
            f'    description "generated rule {index}"\n    when {condition}\n}}'
        )
    return "\n".join(lines) + "\n"


def make_payments(count: int, seed: int = 1, start_ms: int = 1_700_000_000_000) -> list[PaymentFacts]:
    rng = random.Random(seed)
    payments = []
    at_ms = start_ms
    for index in range(count):
        at_ms += rng.randint(0, 40)
        payments.append(
            PaymentFacts(
                transfer_id=f"tr_{index}",
                partner_id=f"partner_{rng.randint(1, 20)}",
                agreement_id=f"agr_{rng.randint(1, 10_000)}",
                debtor_account=f"acc_{rng.randint(1, 10_000)}",
                creditor_account=f"acc_{rng.randint(1, 50_000)}",
                # Mostly small retail payments (median ~200.00 CNY), a thin tail of large ones.
                amount_minor=min(int(rng.lognormvariate(9.9, 1.3)), 50_000_000),
                currency="CNY",
                device_id=None if rng.random() < 0.1 else f"dev_{rng.randint(1, 5_000)}",
                ip=None if rng.random() < 0.05 else f"10.0.{rng.randint(0, 11)}.{rng.randint(0, 255)}",
                at_ms=at_ms,
            )
        )
    return payments


def _percentile(sorted_ns: list[int], fraction: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * fraction))] / 1000


def run(ruleset: RuleSet, payments: list[PaymentFacts], warmup: int, tuned_gc: bool = False) -> dict[str, float]:
    """Time evaluate and record per payment. tuned_gc: what README.md recommends for
    the shard worker (freeze the heap after warm-up, rarer young collections)."""
    engine = FraudFilter(ruleset)
    old_threshold = gc.get_threshold()
    if tuned_gc:
        gc.set_threshold(50_000, 50, 100)
    evaluate_ns: list[int] = []
    record_ns: list[int] = []
    clock = time.perf_counter_ns
    for index, facts in enumerate(payments):
        started = clock()
        decision = engine.evaluate(facts)
        evaluated = clock()
        if decision.action != "block":
            engine.record(facts)
        recorded = clock()
        if index >= warmup:
            evaluate_ns.append(evaluated - started)
            record_ns.append(recorded - evaluated)
        elif tuned_gc and index == warmup - 1:
            gc.freeze()
    if tuned_gc:
        gc.unfreeze()
        gc.set_threshold(*old_threshold)
    evaluate_ns.sort()
    record_ns.sort()
    return {
        "evaluate_p50_us": _percentile(evaluate_ns, 0.50),
        "evaluate_p99_us": _percentile(evaluate_ns, 0.99),
        "evaluate_max_us": evaluate_ns[-1] / 1000,
        "record_p50_us": _percentile(record_ns, 0.50),
        "record_p99_us": _percentile(record_ns, 0.99),
        "payments": float(len(evaluate_ns)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    args = parser.parse_args(argv)
    if args.payments - args.warmup < 20_000:
        parser.error("measure at least 20,000 payments (payments - warmup)")
    payments = make_payments(args.payments)
    sets = {
        "default": load_rules_file(default_rules_path()),
        "generated-50": parse_rules(generated_rules_text(50), "<generated-50>"),
    }
    load_1m = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load_1m:.2f} before the run (other processes inflate p99)")
    for tuned_gc in (False, True):
        for name, ruleset in sets.items():
            result = run(ruleset, payments, args.warmup, tuned_gc)
            print(
                f"{name:>13} gc={'tuned' if tuned_gc else 'default':7}: {len(ruleset.rules)} rules, "
                f"{len(ruleset.aggregates)} aggregates over {len(ruleset.windows())} windows, "
                f"{int(result['payments'])} payments | evaluate "
                f"p50 {result['evaluate_p50_us']:.1f} us  p99 {result['evaluate_p99_us']:.1f} us  "
                f"max {result['evaluate_max_us']:.0f} us | record p50 {result['record_p50_us']:.1f} us  "
                f"p99 {result['record_p99_us']:.1f} us"
            )


if __name__ == "__main__":
    main()
