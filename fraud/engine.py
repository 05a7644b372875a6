"""FraudFilter: evaluates a compiled RuleSet against one payment in microseconds.

Runs inside the shard worker, synchronously, with no I/O and no clock reads: time is
the payment's `at_ms`. `evaluate` reads state only; `record` (called by the ledger once
a payment is accepted) is the only thing that moves windows forward, and `refund`
(called once a refund of an accepted payment succeeds) takes its amount back out. Not thread-safe:
call every method from the worker that owns the engine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from fraud.aggregator import generate_aggregator
from fraud.decision import ACTIONS, Decision, RuleHit
from fraud.facts import PaymentFacts
from fraud.lists import NamedLists
from fraud.ruleset import Rule, RuleSet
from fraud.syntax import ATTRIBUTES
from fraud.windows import KeyFunction, WindowStore, distinct_in_window, key_function, window_count_sum

__all__ = ["FraudFilter"]

_COUNT, _SUM, _DISTINCT = 0, 1, 2
_KIND_CODES = {"count": _COUNT, "sum": _SUM, "distinct": _DISTINCT}
_ALLOW = Decision("allow", 0, (), ())

KEYS_PER_WINDOW_MAX_LIMIT = 10_000_000
EVENTS_PER_KEY_MAX_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class _StorePlan:
    """How one key's store is read and written under the active rule set."""

    store: WindowStore
    key_of: KeyFunction
    retention_ms: int  # the longest window over this key; older events are pruned
    # (window_ms, ((value slot, kind code, distinct field or "", field getter or None), ...))
    windows: tuple[tuple[int, tuple[tuple[int, int, str, Any], ...]], ...]
    distinct_trackers: tuple[tuple[str, int, Any], ...]  # (field, window_ms, getter)


@dataclass(frozen=True, slots=True)
class _Active:
    """Everything evaluate/record need for one rule set; replaced as a whole by activate."""

    ruleset: RuleSet
    rules: tuple[Rule, ...]
    plans: tuple[_StorePlan, ...]
    slot_count: int
    # Straight-line equivalent of FraudFilter._aggregate_values (fraud.aggregator).
    aggregate: Callable[[Any, Any], list[Any]]


class FraudFilter:
    def __init__(
        self,
        ruleset: RuleSet,
        lists: NamedLists | None = None,
        max_keys_per_window: int = 100_000,
        max_events_per_key: int = 1_000,
        max_first_payment_pairs: int | None = None,
    ) -> None:
        if not 1 <= max_keys_per_window <= KEYS_PER_WINDOW_MAX_LIMIT:
            raise ValueError(
                f"max_keys_per_window must be in 1..{KEYS_PER_WINDOW_MAX_LIMIT}, got {max_keys_per_window}"
            )
        if not 1 <= max_events_per_key <= EVENTS_PER_KEY_MAX_LIMIT:
            raise ValueError(f"max_events_per_key must be in 1..{EVENTS_PER_KEY_MAX_LIMIT}, got {max_events_per_key}")
        pairs_max = max_keys_per_window if max_first_payment_pairs is None else max_first_payment_pairs
        if not 1 <= pairs_max <= KEYS_PER_WINDOW_MAX_LIMIT:
            raise ValueError(f"max_first_payment_pairs must be in 1..{KEYS_PER_WINDOW_MAX_LIMIT}")
        self.max_keys_per_window = max_keys_per_window
        self.max_events_per_key = max_events_per_key
        self.max_first_payment_pairs = pairs_max
        self.lists = lists if lists is not None else NamedLists()
        # (debtor, creditor) pairs with an accepted payment, least recently paid first.
        # Evicting a pair makes its next payment look "first" again: a safe direction.
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._stores: dict[tuple[str, ...], WindowStore] = {}
        self._active, self._stores = self._build(ruleset)

    # -- state by key, for moving a slot's share of it (ledger/slot_move.py) ----------

    def window_stores(self) -> Mapping[tuple[str, ...], WindowStore]:
        """The active rule set's window stores by key (a read-only view of the mapping)."""
        return MappingProxyType(self._stores)

    def first_payment_pairs(self) -> list[tuple[str, str]]:
        """The (debtor, creditor) pairs with an accepted payment, least recently paid first."""
        return list(self._pairs)

    def forget_first_payment_pair(self, pair: tuple[str, str]) -> None:
        self._pairs.pop(pair, None)

    def add_first_payment_pair(self, pair: tuple[str, str]) -> None:
        """Note a pair as paid (most recently), within max_first_payment_pairs."""
        pairs = self._pairs
        if pair in pairs:
            pairs.move_to_end(pair)
            return
        pairs[pair] = None
        if len(pairs) > self.max_first_payment_pairs:
            pairs.popitem(last=False)

    # -- rule-set lifecycle ----------------------------------------------------------

    @property
    def ruleset(self) -> RuleSet:
        return self._active.ruleset

    def activate(self, ruleset: RuleSet) -> None:
        """Swap in `ruleset` atomically: the next evaluate sees all of it or none of it.

        Window stores the two sets share (same key) keep their state; stores only the
        new set needs start empty and fill as payments are recorded. If building fails
        (e.g. a declared list does not fit), the old set stays active and intact.
        """
        self._active, self._stores = self._build(ruleset)
        # Only after the swap is published: the old set no longer reads these trackers.
        self._free_unused_trackers()

    def _build(self, ruleset: RuleSet) -> tuple[_Active, dict[tuple[str, ...], WindowStore]]:
        # Seed lists the file declares but the runtime lists lack; existing runtime
        # edits win, so re-activating a file never undoes an operator's add/remove.
        for name, values in ruleset.lists.items():
            if name not in self.lists._sets:
                self.lists.ensure(name)
                for value in values:
                    self.lists.add(name, value)
        by_key: dict[tuple[str, ...], dict[int, list[tuple[int, int, str, Any]]]] = {}
        for index, aggregate in enumerate(ruleset.aggregates):
            field_name = aggregate.field if aggregate.kind == "distinct" and aggregate.field else ""
            getter = attrgetter(ATTRIBUTES[field_name][0]) if field_name else None  # type: ignore[arg-type]
            windows = by_key.setdefault(aggregate.key, {})
            windows.setdefault(aggregate.window_s * 1000, []).append(
                (index + 1, _KIND_CODES[aggregate.kind], field_name, getter)
            )
        stores: dict[tuple[str, ...], WindowStore] = {}
        plans = []
        for key, windows in by_key.items():
            # Reusing the store object is what carries shared window state across a swap.
            store = self._stores.get(key) or WindowStore(key, self.max_keys_per_window, self.max_events_per_key)
            stores[key] = store
            trackers = {
                (name, window_ms): getter
                for window_ms, slots in windows.items()
                for _, kind, name, getter in slots
                if kind == _DISTINCT
            }
            plans.append(
                _StorePlan(
                    store=store,
                    key_of=key_function(key),
                    retention_ms=max(windows),
                    windows=tuple((window_ms, tuple(slots)) for window_ms, slots in sorted(windows.items())),
                    distinct_trackers=tuple(
                        (name, window_ms, getter) for (name, window_ms), getter in trackers.items()
                    ),
                )
            )
        slot_count = len(ruleset.aggregates) + 1
        kind_names = {code: name for name, code in _KIND_CODES.items()}
        aggregator = generate_aggregator(
            [
                (
                    plan.store.key,
                    plan.store.states,
                    [
                        (window_ms, [(slot, kind_names[kind], name) for slot, kind, name, _ in slots])
                        for window_ms, slots in plan.windows
                    ],
                )
                for plan in plans
            ],
            slot_count,
            ruleset.uses_first_to_creditor,
        )
        # Stores the new set does not read are dropped together with the old plan.
        return _Active(ruleset, ruleset.rules, tuple(plans), slot_count, aggregator), stores

    def _free_unused_trackers(self) -> None:
        for plan in self._active.plans:
            plan.store.drop_trackers_except(
                frozenset((name, window_ms) for name, window_ms, _ in plan.distinct_trackers)
            )

    # -- hot path ------------------------------------------------------------------

    def _aggregate_values(self, facts: PaymentFacts, active: _Active) -> list[Any]:
        """Slot 0: first_to_creditor; slot i: the i-th aggregate, current payment included.

        The reference (loop) implementation; evaluate runs the generated equivalent.
        """
        values: list[Any] = [False] * active.slot_count
        if active.ruleset.uses_first_to_creditor:
            values[0] = (facts.debtor_account, facts.creditor_account) not in self._pairs
        for plan in active.plans:
            key = plan.key_of(facts)
            state = None if key is None else plan.store.states.get(key)
            for window_ms, slots in plan.windows:
                cutoff_ms = facts.at_ms - window_ms
                count, total_minor = window_count_sum(state, cutoff_ms)
                for slot, kind, field_name, getter in slots:
                    if kind == _COUNT:
                        values[slot] = count + 1
                    elif kind == _SUM:
                        values[slot] = total_minor + facts.amount_minor
                    else:
                        values[slot] = distinct_in_window(state, (field_name, window_ms), getter(facts), cutoff_ms)
        return values

    def evaluate(self, facts: PaymentFacts) -> Decision:
        """Decide one payment. Reads state, never changes it."""
        active = self._active
        values = active.aggregate(facts, self._pairs)
        lists = self.lists._sets
        fired_indices = active.ruleset.match_all(facts, values, lists)
        if not fired_indices:
            return _ALLOW
        rules = active.rules
        fired = [rules[index] for index in fired_indices]
        return self._decide(facts, values, lists, fired, active.ruleset)

    @staticmethod
    def _decide(
        facts: PaymentFacts, values: list[Any], lists: dict[str, set[str]], fired: list[Rule], ruleset: RuleSet
    ) -> Decision:
        score = 0
        hits = []
        rule_severity = 0
        allowed = False
        for rule in fired:
            hit_values = {label: getter(facts, values, lists) for label, getter in rule.value_getters}
            hits.append(RuleHit(rule.rule_id, rule.action, rule.score, rule.shadow, hit_values))
            if rule.shadow:
                continue
            score += rule.score
            if rule.action == "allow":
                allowed = True
            elif rule.action == "block":
                rule_severity = 2
            elif rule.action == "review" and rule_severity == 0:
                rule_severity = 1
        enforced = [rule for rule in fired if not rule.shadow]
        if allowed:
            # An enforced allow rule wins outright (e.g. a trusted-partner allow list).
            allowed_by = tuple(rule.rule_id for rule in enforced if rule.action == "allow")
            return Decision("allow", score, tuple(hits), allowed_by)
        score_severity = 0
        if ruleset.block_threshold_score is not None and score >= ruleset.block_threshold_score:
            score_severity = 2
        elif ruleset.review_threshold_score is not None and score >= ruleset.review_threshold_score:
            score_severity = 1
        severity = max(rule_severity, score_severity)
        action = ACTIONS[severity]
        # Reasons are the rules whose action is the decision; when the score alone
        # escalated it, the positively scored rules that added up to it.
        if severity == 0:
            reasons: tuple[str, ...] = ()
        else:
            reasons = tuple(
                rule.rule_id
                for rule in enforced
                if rule.action == action or (score_severity > rule_severity and rule.score > 0)
            )
        return Decision(action, score, tuple(hits), reasons)

    def record(self, facts: PaymentFacts) -> None:
        """Account for an accepted payment (allow or review) in every window and pair set."""
        active = self._active
        at_ms = facts.at_ms
        amount_minor = facts.amount_minor
        for plan in active.plans:
            key = plan.key_of(facts)
            if key is None:
                continue  # a payment without device_id is not tracked in device windows
            plan.store.record(key, at_ms, amount_minor, plan.retention_ms, plan.distinct_trackers, facts)
        pair = (facts.debtor_account, facts.creditor_account)
        pairs = self._pairs
        if pair in pairs:
            pairs.move_to_end(pair)
        else:
            pairs[pair] = None
            if len(pairs) > self.max_first_payment_pairs:
                pairs.popitem(last=False)

    def refund(self, facts: PaymentFacts, amount_minor: int) -> None:
        """Account for `amount_minor` of an accepted payment given back (a refund).

        `facts` are the refunded payment's own facts (same transfer_id, keys and at_ms as
        recorded). In every window store its event's amount drops by `amount_minor`, so
        sum() windows drop; once the payment is refunded in full its event leaves the
        store and count() windows drop too. Distinct trackers and first-payment pairs
        stay: a refund does not undo that this debtor used that device, IP or creditor.
        An event no longer held (expired, dropped, evicted) is simply not found.
        """
        if amount_minor <= 0:
            return
        for plan in self._active.plans:
            key = plan.key_of(facts)
            if key is not None:
                plan.store.refund(key, facts.transfer_id, facts.at_ms, amount_minor)

    # -- observability ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Sizes for metrics; evicted_keys > 0 means max_keys_per_window is too small."""
        return {
            "windows": [
                {
                    "key": list(plan.store.key),
                    "windows_s": [window_ms // 1000 for window_ms, _ in plan.windows],
                    "keys": len(plan.store.states),
                    "evicted_keys": plan.store.evicted_keys,
                }
                for plan in self._active.plans
            ],
            "first_payment_pairs": len(self._pairs),
            "ruleset_digest": self._active.ruleset.digest,
        }
