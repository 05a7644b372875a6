"""backtest(): both rule sets replay the same payments in order with their own fresh
engines (recording only what each accepted), and the report counts per-rule hits,
decision rates and the payments whose decision differs."""

from __future__ import annotations

import json

from fraud import NamedLists, PaymentFacts, backtest, parse_rules

ACTIVE = parse_rules('rule big { action review score 10 description "big" when amount > 1000 }')
CANDIDATE = parse_rules(
    "list blocked = []\n"
    'rule big { action review score 10 description "big" when amount > 500 }\n'
    'rule velocity { action block description "v" when count(by debtor, 1m) > 3 }\n'
    'rule listed { action block description "l" when debtor in list blocked }\n'
    'rule shadow_tiny { action review shadow description "s" when amount < 10 }\n'
)


def payments() -> list[PaymentFacts]:
    amounts = [100, 700, 1_500, 5, 700, 100]
    return [
        PaymentFacts(
            f"tr_{i}", "p", "a", "acc_1", f"acc_c{i}", amount, "CNY", None, None, 1_700_000_000_000 + i * 1_000
        )
        for i, amount in enumerate(amounts)
    ]


def test_backtest_reports_hits_rates_and_differences() -> None:
    report = backtest(payments(), CANDIDATE, ACTIVE)
    json.dumps(report)  # JSON-able for the admin API
    assert report["payments"] == 6
    assert report["active"]["rule_hits"] == {"big": 1}
    assert report["active"]["decisions"] == {"allow": 5, "review": 1, "block": 0}
    # Candidate: 700 and 1500 review; the 4th, 5th and 6th payments exceed 3 per minute.
    assert report["candidate"]["rule_hits"] == {"big": 3, "velocity": 3, "listed": 0, "shadow_tiny": 1}
    assert report["candidate"]["decisions"] == {"allow": 1, "review": 2, "block": 3}
    assert report["candidate"]["block_rate"] == 0.5
    assert abs(report["candidate"]["review_rate"] - 2 / 6) < 1e-12
    assert report["active"]["review_rate"] == 1 / 6
    assert report["differing"]["count"] == 4
    assert report["differing"]["transfer_ids"] == ["tr_1", "tr_3", "tr_4", "tr_5"]
    assert report["differing"]["transitions"] == {"allow->review": 1, "allow->block": 3}


def test_blocked_payments_are_not_recorded_by_the_engine_that_blocked_them() -> None:
    # If blocked payments were recorded, every payment after the 4th would be blocked
    # forever; with correct recording the count stays at 3 accepted and keeps blocking
    # only while those three are inside the minute.
    many = [
        PaymentFacts(f"tr_{i}", "p", "a", "acc_1", "acc_c", 1, "CNY", None, None, 1_700_000_000_000 + i * 10_000)
        for i in range(12)
    ]
    report = backtest(many, CANDIDATE, ACTIVE)
    assert report["candidate"]["decisions"]["block"] == 3 * 2  # two bursts of 3 blocked per minute window
    assert report["candidate"]["decisions"]["allow"] == 6


def test_lists_are_copied_per_engine_and_differing_ids_are_capped() -> None:
    lists = NamedLists({"blocked": ["acc_1"]})
    many = [
        PaymentFacts(f"tr_{i}", "p", "a", "acc_1", "acc_c", 1, "CNY", None, None, 1_700_000_000_000 + i * 3_600_000)
        for i in range(30)
    ]
    report = backtest(many, CANDIDATE, ACTIVE, lists)
    assert report["differing"]["count"] == 30
    assert report["differing"]["transfer_ids"] == [f"tr_{i}" for i in range(20)]
    assert lists.snapshot() == {"blocked": ["acc_1"]}  # the caller's lists are untouched
