"""Replay historical payments through a candidate and the active rule set side by side."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fraud.engine import FraudFilter
from fraud.facts import PaymentFacts
from fraud.lists import NamedLists
from fraud.ruleset import RuleSet

__all__ = ["backtest"]

DIFFERING_IDS_MAX = 20


def _rates(counts: dict[str, int], total: int) -> dict[str, float]:
    return {action: (counts[action] / total if total else 0.0) for action in ("allow", "review", "block")}


def _side(rule_hits: dict[str, int], decisions: dict[str, int], total: int) -> dict[str, Any]:
    rates = _rates(decisions, total)
    return {
        "rule_hits": rule_hits,
        "decisions": decisions,
        "rates": rates,
        "block_rate": rates["block"],
        "review_rate": rates["review"],
    }


def backtest(
    payments: Iterable[PaymentFacts],
    candidate: RuleSet,
    active: RuleSet,
    lists: NamedLists | None = None,
    *,
    max_keys_per_window: int = 100_000,
    max_events_per_key: int = 1_000,
) -> dict[str, Any]:
    """Decide every payment with both sets, in order, each with its own fresh engine.

    Each engine records the payments *it* accepted, so a candidate that blocks more also
    sees smaller windows afterwards, as it would in production. Both engines get their
    own copy of `lists` so neither sees the other's seeding. Returns a JSON-able dict.
    """
    engines = {
        "candidate": FraudFilter(candidate, lists.copy() if lists else None, max_keys_per_window, max_events_per_key),
        "active": FraudFilter(active, lists.copy() if lists else None, max_keys_per_window, max_events_per_key),
    }
    rule_hits: dict[str, dict[str, int]] = {name: {} for name in engines}
    for name, engine in engines.items():
        for rule in engine.ruleset.rules:
            rule_hits[name][rule.rule_id] = 0
    actions = {name: {"allow": 0, "review": 0, "block": 0} for name in engines}
    differing_count = 0
    differing_ids: list[str] = []
    transitions: dict[str, int] = {}
    total = 0
    for facts in payments:
        total += 1
        decided = {}
        for name, engine in engines.items():
            decision = engine.evaluate(facts)
            decided[name] = decision.action
            actions[name][decision.action] += 1
            for hit in decision.hits:
                rule_hits[name][hit.rule_id] += 1
            if decision.action != "block":
                engine.record(facts)
        if decided["candidate"] != decided["active"]:
            differing_count += 1
            transition = f"{decided['active']}->{decided['candidate']}"
            transitions[transition] = transitions.get(transition, 0) + 1
            if len(differing_ids) < DIFFERING_IDS_MAX:
                differing_ids.append(facts.transfer_id)
    return {
        "payments": total,
        "candidate": _side(rule_hits["candidate"], actions["candidate"], total),
        "active": _side(rule_hits["active"], actions["active"], total),
        "differing": {"count": differing_count, "transfer_ids": differing_ids, "transitions": transitions},
    }
