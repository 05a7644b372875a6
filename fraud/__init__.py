"""quickpay fraud filter: a streaming rule engine for the payment path, plus tooling.

The ledger imports only the names in `__all__`; see fraud/README.md for the rule
language and the memory/time semantics.
"""

from fraud.backtest import backtest
from fraud.decision import Decision, RuleHit
from fraud.engine import FraudFilter
from fraud.errors import RuleError
from fraud.facts import PaymentFacts
from fraud.lists import NamedLists
from fraud.monitor import Alert, MonitorEngine, TransferEvent
from fraud.parser import WINDOW_S_MAX as WINDOW_MAX_S
from fraud.registry import RuleRegistry
from fraud.ruleset import Rule, RuleSet, default_rules_path, load_rules_file, parse_rules

__all__ = [
    "WINDOW_MAX_S",
    "Alert",
    "Decision",
    "FraudFilter",
    "MonitorEngine",
    "NamedLists",
    "PaymentFacts",
    "Rule",
    "RuleError",
    "RuleHit",
    "RuleRegistry",
    "RuleSet",
    "TransferEvent",
    "backtest",
    "default_rules_path",
    "load_rules_file",
    "parse_rules",
]
