"""An agreement in plain words, English and Chinese, for the customer's pages."""

from __future__ import annotations

import datetime
from typing import Any

from kernel.money import format_amount

__all__ = ["describe", "when"]

_PERIODS = {
    ("Day", "Calendar"): ("per calendar day", "每个自然日"),
    ("Week", "Calendar"): ("per calendar week (Monday to Sunday)", "每个自然周"),
    ("Month", "Calendar"): ("per calendar month", "每个自然月"),
    ("Year", "Calendar"): ("per calendar year", "每个自然年"),
    ("Day", "Consent"): ("per day, counted from the agreement's start", "自协议生效起每天"),
    ("Week", "Consent"): ("per week, counted from the agreement's start", "自协议生效起每周"),
    ("Month", "Consent"): ("per month, counted from the agreement's start", "自协议生效起每月"),
    ("Year", "Consent"): ("per year, counted from the agreement's start", "自协议生效起每年"),
}


def when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def describe(agreement: dict[str, Any]) -> dict[str, Any]:
    """The figures a customer must see before agreeing (and in the portal), formatted."""
    currency = agreement["currency"]
    limits = []
    for limit in agreement["periodic_limits"]:
        en, zh = _PERIODS.get((limit["period"], limit["alignment"]), (limit["period"], limit["period"]))
        amount = int(limit["amount_minor"])
        left = limit.get("remaining_minor")
        limits.append(
            {
                "en": en,
                "zh": zh,
                "amount": format_amount(amount, currency),
                "spent": format_amount(amount - int(left), currency) if left is not None else None,
            }
        )
    return {
        "agreement_id": agreement["id"],
        "status": agreement["status"],
        "currency": currency,
        "per_payment": format_amount(int(agreement["per_payment_limit_minor"]), currency),
        "limits": limits,
        "valid_from": when(agreement.get("valid_from_ms")),
        "valid_to": when(agreement.get("valid_to_ms")),
    }
