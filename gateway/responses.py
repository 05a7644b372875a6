"""What the gateway answers: JSON responses, the 503/500/400 a shard's failure becomes, a
list's rows rendered with the unrenderable ones quarantined, and the ledger's result codes
mapped to the API's errors."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from ledger.client import ShardError

from . import metrics
from .errors import ApiError, field_error

log = logging.getLogger("quickpay.gateway")

_JSON_HEADERS = {"Content-Type": "application/json"}
_encode = msgspec.json.Encoder().encode


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encode(body), headers={**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS
    )


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "QP.Service.Unavailable", message, headers={"Retry-After": "1"})


def _internal(exc: BaseException, interaction_id: str) -> ApiError:
    """A 500 in the one error shape; the log line with the traceback carries the same id."""
    error_id = uuid.uuid4().hex
    log.error(
        "internal error %s (interaction %s): %r",
        error_id,
        interaction_id,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return ApiError(500, "QP.Internal", f"internal error {error_id}; the operator can look it up by this id")


def _shard_error(exc: ShardError, interaction_id: str) -> ApiError:
    code = exc.code
    if code == "OVERLOADED":
        return _unavailable(f"the ledger is overloaded ({exc.message}); retry with the same x-idempotency-key")
    if code == "MOVED":  # the slot moved twice in a row, or is moving (gateway/shards.py)
        return _unavailable(f"the account's slot is moving ({exc.message}); retry with the same x-idempotency-key")
    if code == "BAD_REQUEST":
        return ApiError(
            400,
            "QP.Request.Invalid",
            "the ledger refused the request as malformed",
            [{"code": "QP.Request.Invalid", "message": exc.message[:200], "path": "$"}],
        )
    return _internal(exc, interaction_id)


def rendered(table: str, rows: list[dict[str, Any]], render: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """A list's resources; a row the shapes cannot render (a stored value past what they can
    show) is quarantined: logged with its key, counted, left out, and the list still answers."""
    out = []
    for row in rows:
        try:
            out.append(render(row))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
            metrics.QUARANTINED.labels("gateway", table).inc()
            key = str(row.get("id")) if isinstance(row, dict) else "?"
            log.error(
                "quarantined %s row %s (reader gateway): %r",
                table,
                key,
                exc,
                extra={
                    "fields": {
                        "event": "row_quarantined",
                        "reader": "gateway",
                        "table": table,
                        "key": key,
                        "problem": repr(exc)[:300],
                    }
                },
            )
    return out


# One row per ledger code, spelled out (rows look alike by shape; each is the answer the
# partner gets for that code, and tests/test_ledger_state.py checks every code has one).
_PAYMENT_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "AGREEMENT_NOT_FOUND": (404, "QP.Agreement.NotFound", "no such agreement", "$.agreement_id"),
    "AGREEMENT_NOT_AUTHORISED": (
        422,
        "QP.Agreement.NotAuthorised",
        "the customer has not authorised this agreement",
        "$.agreement_id",
    ),
    "AGREEMENT_NOT_YET_VALID": (
        422,
        "QP.Agreement.NotYetValid",
        "the agreement is not valid yet (valid_from)",
        "$.agreement_id",
    ),
    "AGREEMENT_EXPIRED": (422, "QP.Agreement.Expired", "the agreement has expired (valid_to)", "$.agreement_id"),
    "AGREEMENT_SUSPENDED": (
        422,
        "QP.Agreement.Suspended",
        "the customer has suspended this agreement",
        "$.agreement_id",
    ),
    "AGREEMENT_REVOKED": (422, "QP.Agreement.Revoked", "the agreement has been revoked", "$.agreement_id"),
    "CURRENCY_MISMATCH": (
        422,
        "QP.Currency.Mismatch",
        "the currency differs from the agreement's or the creditor's",
        "$.currency",
    ),
    "CREDITOR_NOT_FOUND": (422, "QP.Creditor.NotFound", "no such creditor account", "$.creditor_account"),
    "PARTNER_NOT_FOUND": (404, "QP.Partner.NotFound", "no such partner", "path.partner_id"),
    "SAME_ACCOUNT": (422, "QP.Creditor.SameAsDebtor", "the creditor is the debtor's own account", "$.creditor_account"),
    "EXISTS_WITH_DIFFERENT_BODY": (
        422,
        "QP.Idempotency.Mismatch",
        "this x-idempotency-key was used with a different request body",
        "header.x-idempotency-key",
    ),
    "IN_FLIGHT": (
        409,
        "QP.Idempotency.InFlight",
        "a request with this x-idempotency-key is still in progress; retry shortly",
        "header.x-idempotency-key",
    ),
    "ACCOUNT_NOT_FOUND": (404, "QP.Account.NotFound", "no such account", "$.account_id"),
    "PAYMENT_NOT_FOUND": (404, "QP.Payment.NotFound", "no such payment", "path.payment_id"),
    "PAYMENT_IN_FLIGHT": (
        409,
        "QP.Refund.PaymentInFlight",
        "the payment is still being committed; retry the refund shortly",
        "path.payment_id",
    ),
    "NOT_REFUNDABLE": (
        422,
        "QP.Refund.NotRefundable",
        "only accepted payments to your own settlement account can be refunded, within the refund window",
        "path.payment_id",
    ),
    "EXCEEDS_PAYMENT": (422, "QP.Refund.ExceedsPayment", "the refund exceeds what remains of the payment", "$.amount"),
    # Agreement creation (POST /v1/agreements): the pending caps (ledger/state.py create_agreement).
    "TOO_MANY_PENDING_FOR_ACCOUNT": (
        409,
        "QP.Agreement.TooManyPending",
        "you have as many agreements awaiting this customer's authorisation as "
        "allowed; wait until one is authorised, rejected or expired, or revoke one",
        "$.debtor_account",
    ),
    "TOO_MANY_PENDING": (
        409,
        "QP.Agreement.TooManyPending",
        "you have as many agreements awaiting customers' authorisation as allowed; wait until "
        "some are authorised, rejected or expired, or revoke some",
        "$",
    ),
}


_REPLAYED = {"x-idempotent-replayed": "true"}


def _raise_for(code: str) -> None:
    status, api_code, message, path = _PAYMENT_ERRORS[code]
    raise field_error(status, api_code, message, path)
