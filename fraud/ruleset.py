"""A parsed, compiled, immutable rule set, and the functions that build one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud.compiler import (
    Condition,
    ValueGetter,
    collect_aggregates,
    compile_condition,
    generate_matcher,
    referenced_values,
)
from fraud.errors import RuleError
from fraud.parser import RULE_TEXT_BYTES_MAX, parse_text
from fraud.syntax import Aggregate, Node

__all__ = ["Rule", "RuleSet", "default_rules_path", "load_rules_file", "parse_rules", "rule_scope"]

# A rule's scope: which partners' payments its windows count (docs/hardening/fraud-fairness.md).
SCOPE_PAYMENT = "payment"  # reads no window: the payment itself and the lists
SCOPE_PARTNER = "partner"  # every window it reads is keyed by partner (e.g. (debtor, partner))
SCOPE_CROSS_PARTNER = "cross_partner"  # some window it reads counts every partner's payments


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    rule_id: str
    action: str  # "allow" | "review" | "block" | "score" (adds its score, decides nothing alone)
    score: int
    shadow: bool
    description: str
    condition: Node
    line: int
    # Compiled once at parse time; see fraud.compiler for the calling convention.
    matches: Condition
    value_getters: tuple[tuple[str, ValueGetter], ...]
    scope: str = SCOPE_PAYMENT  # SCOPE_PAYMENT | SCOPE_PARTNER | SCOPE_CROSS_PARTNER

    @property
    def escalates_across_partners(self) -> bool:
        """An enforced rule that reads other partners' payments and can push a payment to
        block, by its action or by adding score towards the block threshold: the shape that
        lets one partner's traffic block another partner's customer."""
        return self.scope == SCOPE_CROSS_PARTNER and not self.shadow and (self.action == "block" or self.score > 0)


@dataclass(frozen=True, slots=True, eq=False)
class RuleSet:
    """Immutable once built, so an engine can swap it in with a single assignment.

    `aggregates[i]` is the aggregate filled into slot i + 1 of the engine's value list;
    windows are identified by (key attributes, window_s) and shared by every aggregate
    over the same key and window.
    """

    rules: tuple[Rule, ...]
    lists: dict[str, tuple[str, ...]]
    review_threshold_score: int | None
    block_threshold_score: int | None
    aggregates: tuple[Aggregate, ...]
    uses_first_to_creditor: bool
    filename: str
    text: str
    digest: str  # sha256 of the text, to tell versions apart in logs and decisions
    # Generated once from the validated tree: (facts, values, list_sets) -> fired indices.
    match_all: Callable[[Any, list[Any], dict[str, set[str]]], list[int]]

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(rule.rule_id for rule in self.rules)

    @property
    def cross_partner_escalations(self) -> tuple[str, ...]:
        """Ids of the rules for which `Rule.escalates_across_partners` holds (the shipped
        rules have none; registry versions list them so operators see what they stage)."""
        return tuple(rule.rule_id for rule in self.rules if rule.escalates_across_partners)

    @property
    def max_window_s(self) -> int:
        """The longest window any rule reads (0 if none): how much accepted-payment
        history a restarted worker must replay through record() to rebuild state."""
        return max((aggregate.window_s for aggregate in self.aggregates), default=0)

    def windows(self) -> tuple[tuple[tuple[str, ...], int], ...]:
        """The distinct (key, window_s) pairs this rule set needs maintained."""
        seen: dict[tuple[tuple[str, ...], int], None] = {}
        for aggregate in self.aggregates:
            seen[(aggregate.key, aggregate.window_s)] = None
        return tuple(seen)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "rule_id": rule.rule_id,
                "action": rule.action,
                "score": rule.score,
                "shadow": rule.shadow,
                "description": rule.description,
                "line": rule.line,
                "scope": rule.scope,
            }
            for rule in self.rules
        ]


def rule_scope(condition: Node) -> str:
    """SCOPE_PARTNER if every window the condition reads is keyed by partner (alone or in
    a pair), SCOPE_CROSS_PARTNER if any is not, SCOPE_PAYMENT if it reads no window."""
    found: dict[tuple[Any, ...], Aggregate] = {}
    collect_aggregates(condition, found)
    if not found:
        return SCOPE_PAYMENT
    if all("partner" in aggregate.key for aggregate in found.values()):
        return SCOPE_PARTNER
    return SCOPE_CROSS_PARTNER


def parse_rules(text: str, filename: str = "<string>") -> RuleSet:
    """Parse, type-check and compile rule text. Raises RuleError("file:line:col: ...")."""
    parsed = parse_text(text, filename)
    found: dict[tuple[Any, ...], Aggregate] = {}
    uses_first = False
    for parsed_rule in parsed.rules:
        uses_first = collect_aggregates(parsed_rule.condition, found) or uses_first
    slots = {spec: index + 1 for index, spec in enumerate(found)}
    rules = tuple(
        Rule(
            rule_id=parsed_rule.rule_id,
            action=parsed_rule.action,
            score=parsed_rule.score,
            shadow=parsed_rule.shadow,
            description=parsed_rule.description,
            condition=parsed_rule.condition,
            line=parsed_rule.line,
            matches=compile_condition(parsed_rule.condition, slots),
            value_getters=referenced_values(parsed_rule.condition, slots),
            scope=rule_scope(parsed_rule.condition),
        )
        for parsed_rule in parsed.rules
    )
    return RuleSet(
        rules=rules,
        lists=dict(parsed.lists),
        review_threshold_score=parsed.review_threshold_score,
        block_threshold_score=parsed.block_threshold_score,
        aggregates=tuple(found.values()),
        uses_first_to_creditor=uses_first,
        filename=filename,
        text=text,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        match_all=generate_matcher([rule.condition for rule in parsed.rules], slots, filename),
    )


def load_rules_file(path: str | Path) -> RuleSet:
    path = Path(path)
    size = path.stat().st_size
    if size > RULE_TEXT_BYTES_MAX:
        raise RuleError(str(path), 1, 1, f"rule file larger than {RULE_TEXT_BYTES_MAX} bytes")
    return parse_rules(path.read_text(encoding="utf-8"), str(path))


def default_rules_path() -> Path:
    """The rule set shipped with the package (fraud/default.rules)."""
    return Path(__file__).with_name("default.rules")
