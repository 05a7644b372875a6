"""The schemas of what the partner API answers: errors, health, tokens, payments, transfers,
agreements, webhook endpoints, events, refunds, balances, the batch and transactions."""

from __future__ import annotations

import copy
from typing import Any

from notify.events import EVENT_TYPES

from .operations import _object, _ref
from .patterns import (
    ACCOUNT_ID,
    AGREEMENT_ID_PATTERN,
    AGREEMENT_STATUS,
    AMOUNT_OUT,
    CURRENCY,
    DATE_TIME,
    DATE_TIME_OR_NULL,
    PAYMENT_ID_PATTERN,
    PAYMENT_STATUS,
    REFUND_ID_PATTERN,
    SIGNED_AMOUNT_OUT,
    TEXT_OR_NULL,
    TRANSFER_STATUS,
)


def resource_schemas(batch_items_max: int | None = None) -> dict[str, Any]:
    """The answers' components; `batch_items_max` is the batch envelope's maxItems."""
    from .. import schemas

    components: dict[str, Any] = {
        "Object": {"type": "object"},
        "Error": _object(
            ["code", "message", "errors"],
            {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": _object(
                        ["code", "message", "path"],
                        {"code": {"type": "string"}, "message": {"type": "string"}, "path": {"type": "string"}},
                    ),
                },
            },
        ),
        "Health": _object(["status"], {"status": {"const": "ok"}}),
        # Public: the state only, no details (gateway/health.py); "degraded" is still a 200.
        "Readiness": _object(["status"], {"status": {"enum": ["ready", "degraded", "not ready"]}}),
        "Token": _object(
            ["access_token", "token_type", "expires_in", "scope"],
            {
                "access_token": {"type": "string"},
                "token_type": {"const": "Bearer"},
                "expires_in": {"type": "integer", "minimum": 1},
                "scope": {"const": "payments"},
            },
        ),
        "TokenRequest": {
            "type": "object",
            "required": ["grant_type"],
            "properties": {
                "grant_type": {"const": "client_credentials"},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
            },
            "description": "client_id and client_secret are read here only without HTTP Basic credentials; "
            "unknown, empty or over-long ones are 401 invalid_client.",
        },
        "FraudHit": _object(
            ["rule_id", "action", "score", "shadow", "values"],
            {
                "rule_id": {"type": "string"},
                # the rule language's actions (fraud.parser.RULE_ACTIONS); a 'score' hit adds to the score only
                "action": {"enum": ["allow", "review", "block", "score"]},
                "score": {"type": "integer"},
                "shadow": {"type": "boolean"},
                "values": {
                    "type": "object",
                    "additionalProperties": {"type": ["integer", "string", "boolean", "null"]},
                },
            },
        ),
        "FraudDecision": _object(
            ["decision", "score", "reasons", "reason_codes"],
            {
                "decision": {"enum": ["allow", "review", "block"]},
                "score": {"type": "integer"},
                "reasons": {"type": "array", "items": _ref("FraudHit")},
                "reason_codes": {"type": "array", "items": {"type": "string"}},
            },
        ),
        "Payment": _object(
            [
                "payment_id",
                "status",
                "amount",
                "currency",
                "agreement_id",
                "debtor_account",
                "creditor_account",
                "reference",
                "created_at",
                "reasons",
                "reason_details",
                "refunded_amount",
                "fraud",
                "risk",
            ],
            {
                "payment_id": {"type": "string", "pattern": PAYMENT_ID_PATTERN},
                "status": PAYMENT_STATUS,
                "amount": AMOUNT_OUT,
                "currency": CURRENCY,
                "agreement_id": {"type": "string"},
                "debtor_account": ACCOUNT_ID,
                "creditor_account": ACCOUNT_ID,
                "reference": {"type": "string"},
                "created_at": DATE_TIME,
                "reasons": {"type": "array", "items": {"type": "string"}},
                "reason_details": {"oneOf": [{"type": "null"}, _ref("ReasonDetails")]},
                "refunded_amount": {**AMOUNT_OUT, "description": "what succeeded refunds returned"},
                "fraud": _ref("FraudDecision"),
                "risk": _object(["device_id", "ip"], {"device_id": TEXT_OR_NULL, "ip": TEXT_OR_NULL}),
            },
        ),
        "Transfer": _object(
            [
                "transfer_id",
                "kind",
                "status",
                "amount",
                "currency",
                "debit_account",
                "credit_account",
                "reference",
                "created_at",
                "reasons",
            ],
            {
                "transfer_id": {"type": "string"},
                "kind": {"enum": ["payment", "funding", "credit_leg", "refund"]},
                "status": TRANSFER_STATUS,
                "amount": AMOUNT_OUT,
                "currency": CURRENCY,
                "debit_account": ACCOUNT_ID,
                "credit_account": ACCOUNT_ID,
                "reference": TEXT_OR_NULL,
                "created_at": DATE_TIME,
                "reasons": {"type": "array", "items": {"type": "string"}},
            },
        ),
        "ReasonDetails": _object(
            ["limit"],
            {
                "limit": AMOUNT_OUT,
                "period": {"enum": ["Day", "Week", "Month", "Year"]},
                "alignment": {"enum": ["Calendar", "Consent"]},
                "remaining": AMOUNT_OUT,
                "period_start": DATE_TIME,
                "period_end": DATE_TIME,
            },
        ),
        "PeriodicLimit": _object(
            ["period", "alignment", "amount", "remaining", "period_start", "period_end"],
            {
                "period": {"enum": ["Day", "Week", "Month", "Year"]},
                "alignment": {"enum": ["Calendar", "Consent"]},
                "amount": AMOUNT_OUT,
                "remaining": {**AMOUNT_OUT, "description": "left in the current period"},
                "period_start": DATE_TIME,
                "period_end": DATE_TIME,
            },
        ),
        "Agreement": _object(
            [
                "agreement_id",
                "partner_id",
                "debtor_account",
                "currency",
                "status",
                "status_updated_at",
                "per_payment_limit",
                "daily_limit",
                "periodic_limits",
                "valid_from",
                "valid_to",
                "created_at",
            ],
            {
                "agreement_id": {"type": "string", "pattern": AGREEMENT_ID_PATTERN},
                "partner_id": {"type": "string"},
                "debtor_account": ACCOUNT_ID,
                "currency": CURRENCY,
                "status": AGREEMENT_STATUS,
                "status_updated_at": DATE_TIME,
                "per_payment_limit": AMOUNT_OUT,
                "daily_limit": {"type": ["string", "null"], "description": "the Day/Calendar limit, if any"},
                "periodic_limits": {"type": "array", "items": _ref("PeriodicLimit")},
                "valid_from": DATE_TIME_OR_NULL,
                "valid_to": DATE_TIME_OR_NULL,
                "created_at": DATE_TIME,
                "authorise_by": {
                    **DATE_TIME_OR_NULL,
                    "description": "still AwaitingAuthorisation after this, "
                    "the agreement reads Expired and can no longer be authorised",
                },
                "authorisation_url": {
                    "type": "string",
                    "description": "only in the answer to a creation with redirect_uri: the bank's consent "
                    "page to send the customer to (single use, expires)",
                },
                "status_history": {
                    "type": "array",
                    "description": "the last 50 transitions, oldest first",
                    "items": _object(
                        ["from", "to", "by", "at"],
                        {
                            "from": {"type": ["string", "null"]},
                            "to": {"type": "string"},
                            "by": {"enum": ["partner", "customer"]},
                            "at": DATE_TIME,
                        },
                    ),
                },
            },
        ),
        "Agreements": _object(
            ["agreements", "next_cursor"],
            {
                "agreements": {"type": "array", "items": _ref("Agreement")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "null on the last page; a page may hold fewer than limit items "
                    "and still have a next_cursor",
                },
            },
        ),
        "WebhookEndpoint": _object(
            ["id", "url", "events", "created_at"],
            {
                "id": {"type": "string", "pattern": r"^whe_[0-9a-f]{20}$"},
                "url": {"type": "string"},
                "events": {"type": "array", "items": {"type": "string"}},
                "created_at": DATE_TIME,
                "secret": {"type": "string", "description": "only in the answers to creation and rotation"},
                "previous_secret_expires_at": DATE_TIME,
                "deleted": {"const": True},
            },
        ),
        "WebhookEndpoints": _object(
            ["webhook_endpoints"], {"webhook_endpoints": {"type": "array", "items": _ref("WebhookEndpoint")}}
        ),
        "Event": _object(
            ["id", "type", "created_at", "data"],
            {
                "id": {"type": "string", "pattern": r"^evt_[0-9]+_"},
                "type": {"enum": list(EVENT_TYPES)},
                "created_at": DATE_TIME,
                "data": _object(["object"], {"object": {"type": "object"}}),
            },
        ),
        "Events": _object(
            ["events", "next_cursor", "last_cursor"],
            {
                "events": {"type": "array", "items": _ref("Event")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "the next page's `after` (null: this page was the last one for now)",
                },
                "last_cursor": {"type": ["string", "null"], "description": "where to poll from later"},
            },
        ),
        "Refund": _object(
            [
                "refund_id",
                "payment_id",
                "amount",
                "currency",
                "status",
                "reasons",
                "reason",
                "reference",
                "created_at",
            ],
            {
                "refund_id": {"type": "string", "pattern": REFUND_ID_PATTERN},
                "payment_id": {"type": "string", "pattern": PAYMENT_ID_PATTERN},
                "amount": AMOUNT_OUT,
                "currency": CURRENCY,
                "status": {"enum": ["Succeeded", "Rejected"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "reason": {"enum": ["duplicate", "fraudulent", "requested_by_customer", None]},
                "reference": TEXT_OR_NULL,
                "created_at": DATE_TIME,
            },
        ),
        "Balance": _object(
            ["account_id", "kind", "currency", "balance", "stripes"],
            {
                "account_id": ACCOUNT_ID,
                "kind": {"enum": ["customer", "settlement", "funding", "clearing"]},
                "currency": CURRENCY,
                "balance": SIGNED_AMOUNT_OUT,
                "stripes": {"type": "integer", "minimum": 1},
            },
        ),
        # The envelope is checked as a whole (400 when it is not this); each item is then
        # validated on its own as a QuickPaymentBatchItem, and an item that is not one is
        # refused alone, in its result (status 400), so the items are only "objects" here.
        "QuickPaymentBatchRequest": _object(
            ["payments"],
            {
                "payments": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": batch_items_max or schemas.BATCH_ITEMS_MAX,
                    "items": {
                        "type": "object",
                        "description": "a QuickPaymentBatchItem (#/components/schemas/"
                        "QuickPaymentBatchItem); one that is not gets status "
                        "400 in its result, the others are unaffected",
                    },
                }
            },
        ),
        "QuickPaymentBatchResult": _object(
            ["results"],
            {
                "results": {
                    "type": "array",
                    "description": "one result per item, in request order",
                    "items": {"oneOf": [_ref("QuickPaymentBatchAccepted"), _ref("QuickPaymentBatchItemError")]},
                }
            },
        ),
        "QuickPaymentBatchAccepted": _object(
            ["status", "payment", "replayed"],
            {
                "status": {"const": 201},
                "payment": _ref("Payment"),
                "replayed": {
                    "type": "boolean",
                    "description": "true when the key was used before with the same "
                    "body (x-idempotent-replayed of the single endpoint)",
                },
            },
        ),
        "QuickPaymentBatchItemError": _object(
            ["status", "error"],
            {
                "status": {
                    "enum": [400, 404, 409, 422, 429, 500, 503],
                    "description": "the status the single endpoint would answer: 400 invalid item, 404 "
                    "unknown agreement, 409 the key is in flight (also a key repeated in the "
                    "same batch), 422 key reused with another body or a business rule, 429 "
                    "past the partner's rate limit (not placed; retry later), 503 the item's shard did not answer (retry with the same key)",
                },
                "error": _ref("Error"),
            },
        ),
    }
    # A transactions page item is a Transfer plus its direction for the account asked about.
    item = copy.deepcopy(components["Transfer"])
    item["properties"]["direction"] = {"enum": ["debit", "credit"]}
    item["required"] = [*item["required"], "direction"]
    components["TransactionItem"] = item
    components["Transactions"] = _object(
        ["account_id", "transactions", "next_cursor"],
        {
            "account_id": ACCOUNT_ID,
            "next_cursor": {"type": ["string", "null"]},
            "transactions": {"type": "array", "items": _ref("TransactionItem")},
        },
    )
    return components
