"""The API's resource shapes, from the shard protocol's wire dicts: payments, refunds,
transfers, agreements. Pure formatting (no I/O), shared by the gateway's handlers and
the event producer (notify/), so an event's `data.object` is the resource as the API
shows it."""

from __future__ import annotations

import datetime
from typing import Any

from kernel.money import format_amount

__all__ = ["agreement_resource", "iso_ms", "payment_resource", "refund_resource", "transfer_resource"]

_iso_second: tuple[int, str] = (-1, "")


def _iso(ms: int) -> str:
    """UTC ISO 8601 with milliseconds; the seconds part is formatted once per second."""
    global _iso_second
    second, millis = divmod(ms, 1000)
    if _iso_second[0] != second:
        _iso_second = (second, datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_iso_second[1]}.{millis:03d}Z"


# What a payment that no rule fired on was decided (stored as NULL in the journal).
_PLAIN_ALLOW: dict[str, Any] = {"decision": "allow", "score": 0, "reasons": [], "reason_codes": []}


def _reason_details(details: dict[str, Any] | None, currency: str) -> dict[str, Any] | None:
    """A Rejected payment's limit (and period) as the API shows it, from minor units."""
    found = details.get("reason_details") if details else None
    if not found:
        return None
    out: dict[str, Any] = {"limit": format_amount(found["limit_minor"], currency)}
    if "period" in found:
        out.update(
            period=found["period"],
            alignment=found["alignment"],
            remaining=format_amount(found["remaining_minor"], currency),
            period_start=_iso(found["period_start_ms"]),
            period_end=_iso(found["period_end_ms"]),
        )
    return out


def payment_resource(t: dict[str, Any]) -> dict[str, Any]:
    fraud = t.get("fraud")
    return {
        "payment_id": t["id"],
        "status": t["status"],
        "amount": format_amount(t["amount_minor"], t["currency"]),
        "currency": t["currency"],
        "agreement_id": t["agreement_id"],
        "debtor_account": t["debit_account"],
        "creditor_account": t["creditor_account"],
        "reference": t["reference"],
        "created_at": _iso(t["created_at_ms"]),
        "reasons": t["reasons"],
        "reason_details": _reason_details(t.get("details"), t["currency"]),
        "refunded_amount": format_amount(t.get("refunded_minor", 0), t["currency"]),
        "fraud": fraud if fraud is not None else _PLAIN_ALLOW,
        "risk": {"device_id": t.get("device_id"), "ip": t.get("ip")},
    }


def refund_resource(t: dict[str, Any]) -> dict[str, Any]:
    details = t.get("details") or {}
    return {
        "refund_id": t["id"],
        "payment_id": details.get("payment_id"),
        "amount": format_amount(t["amount_minor"], t["currency"]),
        "currency": t["currency"],
        "status": t["status"],
        "reasons": t["reasons"],
        "reason": details.get("reason"),
        "reference": t["reference"],
        "created_at": _iso(t["created_at_ms"]),
    }


def transfer_resource(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "transfer_id": t["id"],
        "kind": t["kind"],
        "status": t["status"],
        "amount": format_amount(t["amount_minor"], t["currency"]),
        "currency": t["currency"],
        "debit_account": t["debit_account"],
        "credit_account": t["creditor_account"] or t["credit_account"],
        "reference": t["reference"],
        "created_at": _iso(t["created_at_ms"]),
        "reasons": t["reasons"],
    }


def _iso_or_none(ms: int | None) -> str | None:
    return _iso(ms) if ms is not None else None


def agreement_resource(a: dict[str, Any]) -> dict[str, Any]:
    currency = a["currency"]
    limits = [
        {
            "period": p["period"],
            "alignment": p["alignment"],
            "amount": format_amount(p["amount_minor"], currency),
            "remaining": format_amount(p["remaining_minor"], currency),
            "period_start": _iso(p["period_start_ms"]),
            "period_end": _iso(p["period_end_ms"]),
        }
        for p in a["periodic_limits"]
    ]
    daily = next((p["amount"] for p in limits if p["period"] == "Day" and p["alignment"] == "Calendar"), None)
    resource = {
        "agreement_id": a["id"],
        "partner_id": a["partner_id"],
        "debtor_account": a["debtor_account"],
        "currency": currency,
        "status": a["status"],
        "status_updated_at": _iso(a["status_updated_at_ms"]),
        "per_payment_limit": format_amount(a["per_payment_limit_minor"], currency),
        "daily_limit": daily,
        "periodic_limits": limits,
        "valid_from": _iso_or_none(a["valid_from_ms"]),
        "valid_to": _iso_or_none(a["valid_to_ms"]),
        "created_at": _iso(a["created_at_ms"]),
        "authorise_by": _iso_or_none(a.get("authorise_by_ms")),
    }
    if "history" in a:
        resource["status_history"] = [
            {"from": h["from_status"], "to": h["to_status"], "by": h["actor"], "at": _iso(h["at_ms"])}
            for h in a["history"]
        ]
    return resource


def iso_ms(ms: int) -> str:
    """UTC ISO 8601 with milliseconds ("2026-11-24T05:00:00.000Z")."""
    return _iso(ms)
