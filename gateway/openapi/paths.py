"""The partner API's paths (and the bank's side of agreements), in the document's order."""

from __future__ import annotations

from typing import Any

from notify.events import EVENT_TYPES

from .operations import (
    _INTERACTION_HEADER,
    ACCOUNT_LINKS,
    AGREEMENT_STATUS_PARAM,
    CURSOR,
    LIMIT,
    _batch_op,
    _csv_op,
    _json_content,
    _link,
    _metrics_op,
    _op,
    _path_param,
    _ref,
)
from .patterns import ACCOUNT_ID_PATTERN, AGREEMENT_ID_PATTERN, PAYMENT_ID_PATTERN, REFUND_ID_PATTERN


def ops_paths() -> dict[str, Any]:
    """Health, readiness, this document, metrics and the token endpoint."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/healthz": {
            "get": _op("healthz", "Liveness", security=None, errors=(), shards=False, ok=(200, "Alive", "Health"))
        },
        "/readyz": {
            "get": {
                **_op(
                    "readyz",
                    "Readiness: ready, degraded or not ready, with no details (those are at GET /admin/v1/health)",
                    security=None,
                    errors=(),
                    shards=False,
                    ok=(200, "Ready", "Readiness"),
                ),
                "responses": {
                    "200": {
                        "description": "Ready, or degraded: payments are served but a background "
                        "service (notifier, monitor, relay) crash-loops",
                        "headers": _INTERACTION_HEADER,
                        "content": _json_content(_ref("Readiness")),
                    },
                    "503": {
                        "description": "A shard worker does not answer, or a child the "
                        "stack needs (PostgreSQL, a shard worker) is down",
                        "headers": _INTERACTION_HEADER,
                        "content": _json_content(_ref("Readiness")),
                    },
                },
            }
        },
        "/openapi.json": {"get": _op("openapi", "This document", security=None, errors=(), shards=False)},
        "/metrics": {"get": _metrics_op()},
        "/oauth2/token": {
            "post": {
                **_op(
                    "token",
                    "OAuth2 client credentials grant: HTTP Basic, or client_id and client_secret "
                    "as form fields or JSON",
                    security=None,
                    ok=(200, "Access token", "Token"),
                    errors=(400, 401, 413),
                    ok_headers={"Cache-Control": {"required": True, "schema": {"const": "no-store"}}},
                ),
                "security": [{"clientBasic": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": _ref("TokenRequest")},
                        "application/json": {"schema": _ref("TokenRequest")},
                    },
                },
            }
        },
    }


def agreement_paths() -> dict[str, Any]:
    """Agreements: the partner's side and the customer's, through the bank (admin)."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/v1/agreements": {
            "post": _op(
                "createAgreement",
                "Create an agreement over a customer's account; it awaits the customer's "
                "authorisation (through the bank) before any payment",
                body="AgreementRequest",
                ok=(201, "Created (AwaitingAuthorisation)", "Agreement"),
                errors=(409, 422),
                links={
                    "GetAgreement": _link("getAgreement", parameters={"agreement_id": "$response.body#/agreement_id"}),
                    "AuthoriseAgreement": _link(
                        "agreementCustomerAction",
                        parameters={"agreement_id": "$response.body#/agreement_id", "action": "authorise"},
                    ),
                    "CreateQuickPayment": _link(
                        "createQuickPayment",
                        body={
                            "agreement_id": "$response.body#/agreement_id",
                            "currency": "$response.body#/currency",
                            # up to the per-payment limit, to the partner's own settlement account
                            "amount": "$response.body#/per_payment_limit",
                            "creditor_account": "set_{$response.body#/partner_id}",
                        },
                    ),
                    **ACCOUNT_LINKS,
                },
            ),
            "get": _op(
                "listAgreements",
                "Your agreements, newest first, cursor-paginated",
                ok=(200, "OK", "Agreements"),
                errors=(400,),
                params=[AGREEMENT_STATUS_PARAM, LIMIT, CURSOR],
            ),
        },
        "/v1/agreements/{agreement_id}": {
            "get": _op(
                "getAgreement",
                "Read an agreement: status, limits and what remains of each in the current "
                "period, the last transitions",
                ok=(200, "OK", "Agreement"),
                errors=(404,),
                params=[_path_param("agreement_id", AGREEMENT_ID_PATTERN)],
            ),
            "delete": _op(
                "revokeAgreement",
                "End an agreement (Revoked; revoking a revoked one answers it again)",
                ok=(200, "OK", "Agreement"),
                errors=(404, 409),
                params=[_path_param("agreement_id", AGREEMENT_ID_PATTERN)],
            ),
        },
        "/admin/v1/agreements/{agreement_id}": {
            "get": _op(
                "getAgreementAdmin",
                "Any agreement, as the bank sees it",
                security="admin",
                ok=(200, "OK", "Agreement"),
                errors=(404,),
                params=[_path_param("agreement_id", AGREEMENT_ID_PATTERN)],
            )
        },
        "/admin/v1/agreements/{agreement_id}/{action}": {
            "post": _op(
                "agreementCustomerAction",
                "The customer's decision through the bank: authorise or reject an "
                "agreement awaiting authorisation, suspend, resume, revoke. Repeating "
                "a done action answers the agreement again; one the status does not "
                "allow is 409 QP.Agreement.InvalidTransition",
                security="admin",
                ok=(200, "OK", "Agreement"),
                errors=(404, 409),
                links={
                    "CreateQuickPayment": _link(
                        "createQuickPayment",
                        body={
                            "agreement_id": "$response.body#/agreement_id",
                            "currency": "$response.body#/currency",
                            "amount": "$response.body#/per_payment_limit",
                            "creditor_account": "set_{$response.body#/partner_id}",
                        },
                    )
                },
                params=[
                    _path_param("agreement_id", AGREEMENT_ID_PATTERN),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["authorise", "reject", "suspend", "resume", "revoke"]},
                    },
                ],
            )
        },
        "/admin/v1/accounts/{account_id}/agreements": {
            "get": _op(
                "listAccountAgreements",
                "A customer's agreements (every partner's), newest first",
                security="admin",
                ok=(200, "OK", "Agreements"),
                errors=(400, 404),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN), AGREEMENT_STATUS_PARAM, LIMIT, CURSOR],
            )
        },
    }


def payment_paths() -> dict[str, Any]:
    """Refunds, quick-payments (single and batch), balances and transactions."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/v1/quick-payments/{payment_id}/refunds": {
            "post": _op(
                "createRefund",
                "Refund (part of) a payment credited to your settlement account, within the refund "
                "window; any number of partial refunds up to the payment's amount. Money moves from "
                "your settlement account on the debtor's shard; if it lacks the funds the refund is "
                "201 Rejected (INSUFFICIENT_FUNDS)",
                body="RefundRequest",
                body_required=False,
                ok=(201, "Refund (new, or replayed)", "Refund"),
                idempotent=True,
                errors=(404, 409, 422),
                params=[_path_param("payment_id", PAYMENT_ID_PATTERN)],
                ok_headers={"x-idempotent-replayed": {"required": False, "schema": {"const": "true"}}},
                links={
                    "GetRefund": _link("getRefund", parameters={"refund_id": "$response.body#/refund_id"}),
                    "GetQuickPayment": _link(
                        "getQuickPayment", parameters={"payment_id": "$response.body#/payment_id"}
                    ),
                },
            )
        },
        "/v1/refunds/{refund_id}": {
            "get": _op(
                "getRefund",
                "Read a refund",
                ok=(200, "OK", "Refund"),
                errors=(404,),
                params=[_path_param("refund_id", REFUND_ID_PATTERN)],
            )
        },
        "/v1/quick-payments": {
            "post": _op(
                "createQuickPayment",
                "Debit a customer under an agreement. Rejections are 201 with status Rejected.",
                body="QuickPaymentRequest",
                ok=(201, "Payment (new, or replayed with x-idempotent-replayed)", "Payment"),
                idempotent=True,
                errors=(404, 409, 422),
                ok_headers={"x-idempotent-replayed": {"required": False, "schema": {"const": "true"}}},
                links={
                    "GetQuickPayment": _link(
                        "getQuickPayment", parameters={"payment_id": "$response.body#/payment_id"}
                    ),
                    "CreateRefund": _link("createRefund", parameters={"payment_id": "$response.body#/payment_id"}),
                },
            )
        },
        "/v1/quick-payments/batch": {"post": _batch_op()},
        "/v1/quick-payments/{payment_id}": {
            "get": _op(
                "getQuickPayment",
                "Read a payment",
                ok=(200, "OK", "Payment"),
                errors=(404,),
                params=[_path_param("payment_id", PAYMENT_ID_PATTERN)],
            )
        },
        "/v1/accounts/{account_id}/balance": {
            "get": _op(
                "getAccountBalance",
                "Balance of an account under one of your agreements, or your settlement account",
                ok=(200, "OK", "Balance"),
                errors=(404,),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
            )
        },
        "/v1/accounts/{account_id}/transactions": {
            "get": _op(
                "listTransactions",
                "Money movements, newest first, cursor-paginated",
                ok=(200, "OK", "Transactions"),
                errors=(400, 404),
                params=[
                    _path_param("account_id", ACCOUNT_ID_PATTERN),
                    LIMIT,
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page (opaque); "
                        "anything else is 400 QP.Cursor.Invalid",
                    },
                ],
            )
        },
    }


def event_paths() -> dict[str, Any]:
    """Webhook endpoints, reconciliation files and the events feed."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/v1/webhook-endpoints": {
            "post": _op(
                "createWebhookEndpoint",
                "Register a webhook endpoint: signed events (Quickpay-Signature) "
                "are POSTed to it; the signing secret is in this answer only",
                body="WebhookEndpointRequest",
                ok=(201, "Created", "WebhookEndpoint"),
                errors=(422,),
            ),
            "get": _op("listWebhookEndpoints", "Your webhook endpoints", ok=(200, "OK", "WebhookEndpoints"), errors=()),
        },
        "/v1/webhook-endpoints/{endpoint_id}": {
            "get": _op(
                "getWebhookEndpoint",
                "A webhook endpoint",
                ok=(200, "OK", "WebhookEndpoint"),
                errors=(404,),
                params=[_path_param("endpoint_id", r"^whe_[0-9a-f]{20}$")],
            ),
            "delete": _op(
                "deleteWebhookEndpoint",
                "Stop deliveries to an endpoint",
                ok=(200, "OK", "WebhookEndpoint"),
                errors=(404,),
                params=[_path_param("endpoint_id", r"^whe_[0-9a-f]{20}$")],
            ),
        },
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret": {
            "post": _op(
                "rotateWebhookSecret",
                "A new signing secret; the previous one also signs for overlap_s",
                body="RotateSecretRequest",
                body_required=False,
                ok=(200, "OK", "WebhookEndpoint"),
                errors=(404,),
                params=[_path_param("endpoint_id", r"^whe_[0-9a-f]{20}$")],
            )
        },
        "/v1/reconciliation-files/{day}": {"get": _csv_op()},
        "/v1/events": {
            "get": _op(
                "listEvents",
                "Your events, oldest first, kept 30 days: the same ones webhooks deliver, for catching up",
                ok=(200, "OK", "Events"),
                errors=(400,),
                params=[
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "next_cursor or last_cursor of an earlier page",
                    },
                    {"name": "type", "in": "query", "required": False, "schema": {"enum": list(EVENT_TYPES)}},
                    LIMIT,
                ],
            )
        },
    }
