"""The result of evaluating a rule set against one payment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIONS", "ACTION_SEVERITY", "Decision", "RuleHit"]

# Ordered by severity; the decision is the most severe of what rules and score demand.
ACTIONS: tuple[str, ...] = ("allow", "review", "block")
ACTION_SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}

HitValue = int | str | bool | None

# A window's sum can pass int64 (amounts are each at most int64, their sum is not); the
# explanation keeps such a value exact as a decimal string, so that the decision stays
# storable (bigint/jsonb/JSON) and the payment gets its business answer, not a 400.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _recordable(value: HitValue) -> HitValue:
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule whose condition was true, with the operand values it saw."""

    rule_id: str
    action: str
    score: int
    shadow: bool
    values: dict[str, HitValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Field by field, like fraud/monitor.py's Alert: not dataclasses.asdict, which deep-copies.
        return {
            "rule_id": self.rule_id,
            "action": self.action,
            "score": self.score,
            "shadow": self.shadow,
            "values": {label: _recordable(value) for label, value in self.values.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleHit:
        return cls(
            rule_id=str(data["rule_id"]),
            action=str(data["action"]),
            score=int(data["score"]),
            shadow=bool(data["shadow"]),
            values=dict(data.get("values", {})),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the filter decided and why.

    `hits` lists every rule that fired in file order, shadow rules included; `score`
    sums only enforced (non-shadow) hits; `reason_codes` are the ids of the enforced
    rules that determined `action`.
    """

    action: str
    score: int
    hits: tuple[RuleHit, ...] = ()
    reason_codes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; `Decision.from_dict(d.to_dict()) == d`."""
        return {
            "decision": self.action,
            "score": self.score,
            "reasons": [hit.to_dict() for hit in self.hits],
            "reason_codes": list(self.reason_codes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        action = str(data["decision"])
        if action not in ACTION_SEVERITY:
            raise ValueError(f"unknown decision {action!r}; expected one of {ACTIONS}")
        return cls(
            action=action,
            score=int(data["score"]),
            hits=tuple(RuleHit.from_dict(item) for item in data.get("reasons", ())),
            reason_codes=tuple(str(code) for code in data.get("reason_codes", ())),
        )
