"""Turns a typed syntax tree into nested Python closures, once per rule set.

Every compiled condition has the signature `condition(facts, aggregates, list_sets)`:
`aggregates` is a list the engine fills before running the rules (slot 0 holds
first_to_creditor, slot i >= 1 the i-th windowed aggregate of the rule set) and
`list_sets` is NamedLists' name -> set dict. Closures close over validated constants
only; no source text is ever evaluated.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from fraud.syntax import (
    ATTRIBUTES,
    Aggregate,
    Attribute,
    BoolOp,
    Compare,
    InList,
    InSet,
    Literal,
    Node,
    Not,
)

__all__ = ["FIRST_TO_CREDITOR_SLOT", "Condition", "ValueGetter", "compile_condition", "referenced_values"]

Condition = Callable[[Any, list[Any], dict[str, set[str]]], Any]
ValueGetter = Condition

FIRST_TO_CREDITOR_SLOT = 0
_MS_PER_HOUR = 3_600_000

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _hour_of_day(facts: Any) -> int:
    return (facts.at_ms // _MS_PER_HOUR) % 24


def _fact_getter(name: str) -> Callable[[Any], Any]:
    field_name = ATTRIBUTES[name][0]
    if name == "hour":
        return _hour_of_day
    assert field_name is not None, name
    return attrgetter(field_name)


def _operand(node: Node, aggregate_slots: dict[tuple[Any, ...], int]) -> tuple[str, Any]:
    """Classify an operand so comparisons can pick a closure with the fewest calls."""
    if isinstance(node, Literal):
        return ("const", node.value)
    if isinstance(node, Attribute):
        if node.name == "first_to_creditor":
            return ("slot", FIRST_TO_CREDITOR_SLOT)
        return ("fact", _fact_getter(node.name))
    if isinstance(node, Aggregate):
        return ("slot", aggregate_slots[node.spec()])
    return ("expr", compile_condition(node, aggregate_slots))


def _as_getter(kind: str, payload: Any) -> ValueGetter:
    if kind == "const":
        return lambda facts, aggregates, lists: payload
    if kind == "fact":
        return lambda facts, aggregates, lists: payload(facts)
    if kind == "slot":
        return lambda facts, aggregates, lists: aggregates[payload]
    return payload


def _compile_compare(node: Compare, slots: dict[tuple[Any, ...], int]) -> Condition:
    op = _OPERATORS[node.op]
    left_kind, left = _operand(node.left, slots)
    right_kind, right = _operand(node.right, slots)
    # The common shapes (attribute or aggregate against a constant) get one closure and
    # one operator call; everything else falls back to two generic getters.
    if right_kind == "const":
        if left_kind == "fact":
            return lambda facts, aggregates, lists: op(left(facts), right)
        if left_kind == "slot":
            return lambda facts, aggregates, lists: op(aggregates[left], right)
    if left_kind == "const":
        if right_kind == "fact":
            return lambda facts, aggregates, lists: op(left, right(facts))
        if right_kind == "slot":
            return lambda facts, aggregates, lists: op(left, aggregates[right])
    left_getter = _as_getter(left_kind, left)
    right_getter = _as_getter(right_kind, right)
    return lambda facts, aggregates, lists: op(
        left_getter(facts, aggregates, lists), right_getter(facts, aggregates, lists)
    )


def compile_condition(node: Node, slots: dict[tuple[Any, ...], int]) -> Condition:
    """Compile a boolean (or value) node into a closure."""
    if isinstance(node, Compare):
        return _compile_compare(node, slots)
    if isinstance(node, InList):
        kind, payload = _operand(node.operand, slots)
        getter = _as_getter(kind, payload)
        name = node.list_name
        if kind == "fact":
            if node.negated:
                return lambda facts, aggregates, lists: payload(facts) not in lists[name]
            return lambda facts, aggregates, lists: payload(facts) in lists[name]
        if node.negated:
            return lambda facts, aggregates, lists: getter(facts, aggregates, lists) not in lists[name]
        return lambda facts, aggregates, lists: getter(facts, aggregates, lists) in lists[name]
    if isinstance(node, InSet):
        values = node.values
        kind, payload = _operand(node.operand, slots)
        getter = _as_getter(kind, payload)
        if node.negated:
            return lambda facts, aggregates, lists: getter(facts, aggregates, lists) not in values
        return lambda facts, aggregates, lists: getter(facts, aggregates, lists) in values
    if isinstance(node, BoolOp):
        parts = tuple(compile_condition(operand, slots) for operand in node.operands)
        if len(parts) == 2:
            first, second = parts
            if node.op == "and":
                return lambda facts, aggregates, lists: (
                    first(facts, aggregates, lists) and second(facts, aggregates, lists)
                )
            return lambda facts, aggregates, lists: first(facts, aggregates, lists) or second(facts, aggregates, lists)
        if node.op == "and":

            def all_of(facts: Any, aggregates: list[Any], lists: dict[str, set[str]]) -> bool:
                for part in parts:
                    if not part(facts, aggregates, lists):
                        return False
                return True

            return all_of

        def any_of(facts: Any, aggregates: list[Any], lists: dict[str, set[str]]) -> bool:
            for part in parts:
                if part(facts, aggregates, lists):
                    return True
            return False

        return any_of
    if isinstance(node, Not):
        inner = compile_condition(node.operand, slots)
        return lambda facts, aggregates, lists: not inner(facts, aggregates, lists)
    # A bare operand used as a condition (e.g. `first_to_creditor`).
    kind, payload = _operand(node, slots)
    return _as_getter(kind, payload)


def referenced_values(node: Node, slots: dict[tuple[Any, ...], int]) -> tuple[tuple[str, ValueGetter], ...]:
    """(label, getter) for every attribute and aggregate a condition reads, for RuleHit.values."""
    found: dict[str, ValueGetter] = {}

    def visit(current: Node) -> None:
        if isinstance(current, Attribute):
            if current.name not in found:
                kind, payload = _operand(current, slots)
                found[current.name] = _as_getter(kind, payload)
        elif isinstance(current, Aggregate):
            label = current.label()
            if label not in found:
                found[label] = _as_getter("slot", slots[current.spec()])
        elif isinstance(current, Compare):
            visit(current.left)
            visit(current.right)
        elif isinstance(current, (InList, InSet, Not)):
            visit(current.operand)
        elif isinstance(current, BoolOp):
            for operand in current.operands:
                visit(operand)

    visit(node)
    return tuple(found.items())


def collect_aggregates(node: Node, into: dict[tuple[Any, ...], Aggregate]) -> bool:
    """Add every aggregate in `node` to `into`; return whether first_to_creditor is used."""
    uses_first = False
    if isinstance(node, Aggregate):
        into.setdefault(node.spec(), node)
    elif isinstance(node, Attribute):
        uses_first = node.name == "first_to_creditor"
    elif isinstance(node, Compare):
        uses_first = collect_aggregates(node.left, into) | collect_aggregates(node.right, into)
    elif isinstance(node, (InList, InSet, Not)):
        uses_first = collect_aggregates(node.operand, into)
    elif isinstance(node, BoolOp):
        for operand in node.operands:
            uses_first = collect_aggregates(operand, into) or uses_first
    return uses_first


# -- whole-rule-set code generation -------------------------------------------------
#
# For the hot path the engine runs one generated function per rule set instead of one
# closure tree per rule: a single Python frame that tests every rule and returns the
# indices of those that fired. The source is assembled from fixed templates; the only
# pieces derived from rule text are validated literals emitted with repr() (ints,
# strings, booleans, None) and frozensets passed in the namespace, so no user-written
# text is ever executed. The closures above stay as the reference implementation
# (tests check both agree) and for computing RuleHit.values.

_LOCAL_FOR_ATTRIBUTE = {
    "amount": ("v_amount", "f.amount_minor"),
    "currency": ("v_currency", "f.currency"),
    "debtor": ("v_debtor", "f.debtor_account"),
    "creditor": ("v_creditor", "f.creditor_account"),
    "partner": ("v_partner", "f.partner_id"),
    "agreement": ("v_agreement", "f.agreement_id"),
    "device_id": ("v_device_id", "f.device_id"),
    "ip": ("v_ip", "f.ip"),
    "hour": ("v_hour", f"(f.at_ms // {_MS_PER_HOUR}) % 24"),
    "first_to_creditor": ("v_first_to_creditor", f"a[{FIRST_TO_CREDITOR_SLOT}]"),
}


class _Generator:
    def __init__(self, slots: dict[tuple[Any, ...], int]) -> None:
        self.slots = slots
        self.used_attributes: dict[str, None] = {}
        self.constants: dict[str, Any] = {}

    def literal(self, value: Any) -> str:
        if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
            return repr(value)
        raise TypeError(f"unexpected literal {value!r}")

    def emit(self, node: Node) -> str:
        if isinstance(node, Literal):
            return self.literal(node.value)
        if isinstance(node, Attribute):
            self.used_attributes[node.name] = None
            return _LOCAL_FOR_ATTRIBUTE[node.name][0]
        if isinstance(node, Aggregate):
            return f"a[{int(self.slots[node.spec()])}]"
        if isinstance(node, Compare):
            left = self.emit(node.left)
            right = self.emit(node.right)
            op = node.op
            if op not in _OPERATORS:
                raise ValueError(f"unexpected operator {op!r}")
            if isinstance(node.right, Literal) and node.right.value is None:
                return f"({left} {'is' if op == '==' else 'is not'} None)"
            if isinstance(node.left, Literal) and node.left.value is None:
                return f"({right} {'is' if op == '==' else 'is not'} None)"
            return f"({left} {op} {right})"
        if isinstance(node, InList):
            operand = self.emit(node.operand)
            keyword = "not in" if node.negated else "in"
            return f"({operand} {keyword} L[{self.literal(node.list_name)}])"
        if isinstance(node, InSet):
            operand = self.emit(node.operand)
            name = f"c_{len(self.constants)}"
            self.constants[name] = node.values
            keyword = "not in" if node.negated else "in"
            return f"({operand} {keyword} {name})"
        if isinstance(node, BoolOp):
            if node.op not in ("and", "or"):
                raise ValueError(f"unexpected boolean operator {node.op!r}")
            return "(" + f" {node.op} ".join(self.emit(operand) for operand in node.operands) + ")"
        if isinstance(node, Not):
            return f"(not {self.emit(node.operand)})"
        raise TypeError(f"unexpected node {type(node).__name__}")


def generate_matcher(
    conditions: list[Node], slots: dict[tuple[Any, ...], int], filename: str
) -> Callable[[Any, list[Any], dict[str, set[str]]], list[int]]:
    """One function testing every condition; returns the indices of those that are true."""
    generator = _Generator(slots)
    tests = [generator.emit(condition) for condition in conditions]
    lines = ["def match_all(f, a, L):", "    fired = []"]
    for name in generator.used_attributes:
        local, expression = _LOCAL_FOR_ATTRIBUTE[name]
        lines.append(f"    {local} = {expression}")
    for index, test in enumerate(tests):
        lines.append(f"    if {test}:")
        lines.append(f"        fired.append({index})")
    lines.append("    return fired")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"__builtins__": {}}
    namespace.update(generator.constants)
    exec(compile(source, f"<fraud rules {filename}>", "exec"), namespace)
    matcher = namespace["match_all"]
    matcher.source = source  # kept for debugging and for the tests
    return matcher
