"""What each API call sends: path, query, body, idempotency key, and how to read the answer.

Pure functions returning `Call`s (see _core); `Client` and `AsyncClient` run them. Here,
once, are the client-side checks (bounds, types) and the rule that a call without an
idempotency key from the caller gets a fresh uuid4 key, fixed for all its retries.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from ._core import BATCH_ITEMS_MAX, PAGE_SIZE_MAX, Call, Page, invalid_response, json_object, page_of

__all__ = [
    "agreements_page",
    "create_agreement",
    "create_payment",
    "create_payment_batch",
    "create_refund",
    "download_reconciliation",
    "events_page",
    "get_agreement",
    "get_balance",
    "get_payment",
    "get_refund",
    "new_idempotency_key",
    "revoke_agreement",
    "transactions_page",
]

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _segment(value: str, what: str) -> str:
    """An id as one path segment ("../admin" cannot walk the path)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _amount(value: object, what: str) -> str:
    # A float would have lost cents already; the API takes decimal strings only.
    if not isinstance(value, str):
        raise TypeError(f'{what} must be a decimal string such as "12.34", not {type(value).__name__}')
    return value


def _page_size(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PAGE_SIZE_MAX:
        raise ValueError(f"page_size must be 1-{PAGE_SIZE_MAX}")
    return str(value)


def _json_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":")).encode()


def _timestamp(value: datetime.datetime | str | None, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"{what} needs a timezone (the API refuses times without an offset)")
    return value.isoformat()


def _post(
    path: str, body: Mapping[str, Any], parse: Callable[[httpx.Response], Any], key: str | None, idempotent: bool = True
) -> Call[Any]:
    return Call(
        "POST",
        path,
        parse,
        content=_json_body(body),
        content_type="application/json",
        idempotency_key=key,
        idempotent=idempotent,
    )


# ---- payments -----------------------------------------------------------------------
def create_payment(
    agreement_id: str,
    amount: str,
    currency: str,
    creditor_account: str,
    reference: str,
    risk: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Call[dict[str, Any]]:
    body = {
        "agreement_id": agreement_id,
        "amount": _amount(amount, "amount"),
        "currency": currency,
        "creditor_account": creditor_account,
        "reference": reference,
        "risk": dict(risk) if risk is not None else None,
    }
    return _post("/v1/quick-payments", body, json_object, idempotency_key or new_idempotency_key())


def _results(response: httpx.Response) -> list[dict[str, Any]]:
    results = json_object(response).get("results")
    if not isinstance(results, list):
        raise invalid_response(response, "the batch answer has no results list")
    return results


def create_payment_batch(items: Sequence[MutableMapping[str, Any]]) -> Call[list[dict[str, Any]]]:
    """Items without an `idempotency_key` get one written into them, so sending the same
    item objects again (after a 503 item or a lost answer) repeats the same payments."""
    if not 1 <= len(items) <= BATCH_ITEMS_MAX:
        raise ValueError(f"a batch holds 1-{BATCH_ITEMS_MAX} payments")
    for item in items:
        _amount(item.get("amount"), "amount")
        if not item.get("idempotency_key"):
            item["idempotency_key"] = new_idempotency_key()
    body = {"payments": [{k: v for k, v in item.items() if v is not None} for item in items]}
    return _post("/v1/quick-payments/batch", body, _results, None)


def get_payment(payment_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/quick-payments/{_segment(payment_id, 'payment_id')}", json_object)


# ---- agreements ---------------------------------------------------------------------
def create_agreement(
    debtor_account: str,
    currency: str,
    per_payment_limit: str,
    daily_limit: str | None = None,
    periodic_limits: Sequence[Mapping[str, Any]] | None = None,
    valid_from: datetime.datetime | str | None = None,
    valid_to: datetime.datetime | str | None = None,
    redirect_uri: str | None = None,
    state: str | None = None,
) -> Call[dict[str, Any]]:
    body = {
        "debtor_account": debtor_account,
        "currency": currency,
        "per_payment_limit": _amount(per_payment_limit, "per_payment_limit"),
        "daily_limit": _amount(daily_limit, "daily_limit") if daily_limit is not None else None,
        "periodic_limits": [dict(p) for p in periodic_limits] if periodic_limits is not None else None,
        "valid_from": _timestamp(valid_from, "valid_from"),
        "valid_to": _timestamp(valid_to, "valid_to"),
        # The consent redirect (quickpay_sdk.consent): the answer then has authorisation_url.
        "redirect_uri": redirect_uri,
        "state": state,
    }
    # The server gives this POST no idempotency key: a retry after an unknown outcome could
    # create a second agreement, so it is not retried on 503 or a lost answer.
    return _post("/v1/agreements", body, json_object, None, idempotent=False)


def get_agreement(agreement_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/agreements/{_segment(agreement_id, 'agreement_id')}", json_object)


def revoke_agreement(agreement_id: str) -> Call[dict[str, Any]]:
    # Repeating a revoke answers the agreement again: idempotent.
    return Call("DELETE", f"/v1/agreements/{_segment(agreement_id, 'agreement_id')}", json_object)


def agreements_page(status: str | None, page_size: int) -> Callable[[str | None], Call[Page]]:
    limit = _page_size(page_size)

    def page(cursor: str | None) -> Call[Page]:
        params = {"limit": limit, **({"status": status} if status else {}), **({"cursor": cursor} if cursor else {})}
        return Call("GET", "/v1/agreements", page_of("agreements"), params=params)

    return page


# ---- refunds ------------------------------------------------------------------------
def create_refund(
    payment_id: str,
    amount: str | None = None,
    reason: str | None = None,
    reference: str | None = None,
    idempotency_key: str | None = None,
) -> Call[dict[str, Any]]:
    body = {
        "amount": _amount(amount, "amount") if amount is not None else None,
        "reason": reason,
        "reference": reference,
    }
    return _post(
        f"/v1/quick-payments/{_segment(payment_id, 'payment_id')}/refunds",
        body,
        json_object,
        idempotency_key or new_idempotency_key(),
    )


def get_refund(refund_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/refunds/{_segment(refund_id, 'refund_id')}", json_object)


# ---- accounts -----------------------------------------------------------------------
def get_balance(account_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/accounts/{_segment(account_id, 'account_id')}/balance", json_object)


def transactions_page(account_id: str, page_size: int) -> Callable[[str | None], Call[Page]]:
    path = f"/v1/accounts/{_segment(account_id, 'account_id')}/transactions"
    limit = _page_size(page_size)

    def page(cursor: str | None) -> Call[Page]:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return Call("GET", path, page_of("transactions"), params=params)

    return page


# ---- events and reconciliation ------------------------------------------------------
def events_page(type: str | None, page_size: int) -> Callable[[str | None], Call[Page]]:
    """GET /v1/events?after=&type=&limit= -> {"events": [...], "next_cursor"}; the next page
    is asked `after` the previous page's next_cursor."""
    limit = _page_size(page_size)

    def page(after: str | None) -> Call[Page]:
        params = {"limit": limit, **({"type": type} if type else {}), **({"after": after} if after else {})}
        return Call("GET", "/v1/events", page_of("events"), params=params)

    return page


def _text(response: httpx.Response) -> str:
    return response.text


def download_reconciliation(date: datetime.date | str, provisional: bool = False) -> Call[str]:
    """GET /v1/reconciliation-files/{YYYY-MM-DD}[?provisional=true] -> the CSV text."""
    text = date.isoformat() if isinstance(date, datetime.date) else date
    if isinstance(date, datetime.datetime) or not isinstance(text, str) or _DATE.fullmatch(text) is None:
        raise ValueError("date must be a datetime.date or a YYYY-MM-DD string")
    datetime.date.fromisoformat(text)  # a real date (ValueError for 2026-02-30)
    params = {"provisional": "true"} if provisional else {}
    return Call("GET", f"/v1/reconciliation-files/{text}", _text, params=params, accept="text/csv")
