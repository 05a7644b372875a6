"""The typed syntax tree of the rule language, shared by the parser and the compiler."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATTRIBUTES",
    "KEY_ATTRIBUTES",
    "Aggregate",
    "Attribute",
    "BoolOp",
    "Compare",
    "InList",
    "InSet",
    "Literal",
    "Node",
    "Not",
    "format_duration",
]

# Attribute name in rules -> (PaymentFacts field, type). "str?" is a string that may be
# missing (None); "hour" and "first_to_creditor" are derived, so they have no field.
ATTRIBUTES: dict[str, tuple[str | None, str]] = {
    "amount": ("amount_minor", "int"),
    "currency": ("currency", "str"),
    "debtor": ("debtor_account", "str"),
    "creditor": ("creditor_account", "str"),
    "partner": ("partner_id", "str"),
    "agreement": ("agreement_id", "str"),
    "device_id": ("device_id", "str?"),
    "ip": ("ip", "str?"),
    "hour": (None, "int"),
    "first_to_creditor": (None, "bool"),
}

# Attributes that may key a window or be counted by distinct(): the string ones.
KEY_ATTRIBUTES: tuple[str, ...] = tuple(
    name for name, (_, type_name) in ATTRIBUTES.items() if type_name in ("str", "str?")
)


def format_duration(window_s: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if window_s % size == 0:
            return f"{window_s // size}{unit}"
    return f"{window_s}s"


@dataclass(frozen=True, slots=True)
class Node:
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Literal(Node):
    value: int | str | bool | None
    type: str  # "int" | "str" | "bool" | "null"


@dataclass(frozen=True, slots=True)
class Attribute(Node):
    name: str

    @property
    def type(self) -> str:
        return ATTRIBUTES[self.name][1]


@dataclass(frozen=True, slots=True)
class Aggregate(Node):
    """count / sum(amount) / distinct(attr) over a sliding window keyed by 1-2 attributes.

    `key` is sorted so `by (debtor, ip)` and `by (ip, debtor)` share one window.
    """

    kind: str  # "count" | "sum" | "distinct"
    field: str | None  # "amount" for sum, the counted attribute for distinct
    key: tuple[str, ...]
    window_s: int

    @property
    def type(self) -> str:
        return "int"

    def spec(self) -> tuple[str, str | None, tuple[str, ...], int]:
        return (self.kind, self.field, self.key, self.window_s)

    def label(self) -> str:
        key = self.key[0] if len(self.key) == 1 else "(" + ", ".join(self.key) + ")"
        window = format_duration(self.window_s)
        if self.kind == "count":
            return f"count(by {key}, {window})"
        return f"{self.kind}({self.field}, by {key}, {window})"


@dataclass(frozen=True, slots=True)
class Compare(Node):
    op: str
    left: Node
    right: Node

    @property
    def type(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class InList(Node):
    operand: Node
    list_name: str
    negated: bool

    @property
    def type(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class InSet(Node):
    operand: Node
    values: frozenset[int | str]
    negated: bool

    @property
    def type(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class BoolOp(Node):
    op: str  # "and" | "or"
    operands: tuple[Node, ...]

    @property
    def type(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Not(Node):
    operand: Node

    @property
    def type(self) -> str:
        return "bool"
