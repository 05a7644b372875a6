"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json.

Request schemas come from the same msgspec Structs that validate the bodies, so
the document cannot drift from what the gateway accepts. What a Struct cannot say
is added here from the code that enforces it: the currency table and the amount
grammar of `kernel.money` (an amount's pattern depends on its currency's
exponent and on the int64 bound), the id shapes of `kernel.ids`, and the
idempotency key rule. The document is checked against the live API by
Schemathesis (tests/test_schemathesis.py): every schema-valid request must be
accepted or refused for a business reason (404/409/422), every schema-violating
one refused with 4xx, and every response must match what is declared here.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec

from kernel.money import CURRENCY_EXPONENTS, INT64_MAX
from notify.events import EVENT_TYPES

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "amount_pattern", "openapi_document"]


# ---- patterns -----------------------------------------------------------------------
def _digits_le(limit: str, *, first_nonzero: bool) -> list[str]:
    """Alternatives matching the len(limit)-digit strings whose value is <= limit.

    With `first_nonzero` the first digit is 1-9 (no leading zero)."""
    alternatives = []
    for i, ch in enumerate(limit):
        low = 1 if (first_nonzero and i == 0) else 0
        high = int(ch) - 1
        if high >= low:
            digit = str(low) if high == low else f"[{low}-{high}]"
            rest = len(limit) - i - 1
            alternatives.append(limit[:i] + digit + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(limit)
    return alternatives


def _integer_le(limit: int) -> str:
    """A regex (no anchors) for the decimal integers 1..limit written without leading zeros."""
    assert limit >= 1
    text = str(limit)
    alternatives = []
    if len(text) > 1:
        alternatives.append(f"[1-9][0-9]{{0,{len(text) - 2}}}" if len(text) > 2 else "[1-9]")
    alternatives.extend(_digits_le(text, first_nonzero=True))
    return "(?:" + "|".join(alternatives) + ")"


@functools.cache
def amount_pattern(exponent: int) -> str:
    """The exact language `kernel.money.parse_amount` accepts for a currency with `exponent`.

    A decimal string, no sign, no leading zeros, at most `exponent` decimals, whose value
    in minor units is in 1..INT64_MAX. Tested against parse_amount in tests/test_schemathesis.py.
    """
    if exponent == 0:
        return f"^{_integer_le(INT64_MAX)}$"
    whole_max, frac_max = divmod(INT64_MAX, 10**exponent)
    branches = [
        # 1 .. whole_max-1 with any fraction
        f"{_integer_le(whole_max - 1)}(?:\\.[0-9]{{1,{exponent}}})?",
        # 0.x with at least one nonzero decimal
        "0\\.(?:" + "|".join(f"{'0' * k}[1-9][0-9]{{0,{exponent - k - 1}}}" for k in range(exponent)) + ")",
    ]
    # whole_max itself: the fraction (right-padded to `exponent` digits) may not exceed frac_max
    fractions = []
    for length in range(1, exponent + 1):
        bound = frac_max // 10 ** (exponent - length)
        fractions.extend(_digits_le(str(bound).zfill(length), first_nonzero=False))
    branches.append(f"{whole_max}(?:\\.(?:" + "|".join(fractions) + "))?")
    return "^(?:" + "|".join(branches) + ")$"


# 1-64 printable ASCII; HTTP strips a header value's outer whitespace, so the
# document asks for none (a key " a" would arrive as "a").
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?$"
PAYMENT_ID_PATTERN = r"^pay_[0-9a-f]{32}_[0-9]{1,4}$"
REFUND_ID_PATTERN = r"^ref_[0-9a-f]{32}_[0-9]{1,4}$"
AGREEMENT_ID_PATTERN = r"^agr_[0-9a-f]{20}$"
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
VERSION_PATTERN = r"^[0-9a-fA-F]{8,64}$"  # a sha256 id, or 8+ of its first hex digits
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # gateway.app.RULE_IDENTIFIER
DATE_TIME = {"type": "string", "format": "date-time"}


def _ecma(schema: Any) -> Any:
    """msgspec patterns end in Python's `\\Z` (`$` also matches before a final newline in
    Python); JSON Schema regexes are ECMA-262, where `$` is the end. Rewrite in place."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str) and value.endswith("\\Z"):
                schema[key] = value[:-2] + "$"
            else:
                _ecma(value)
    elif isinstance(schema, list):
        for item in schema:
            _ecma(item)
    return schema


def _by_currency(
    schema: dict[str, Any], amount_fields: tuple[str, ...], nested: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """Constrain `currency` to the table and each amount to its currency's grammar (also the
    amounts in arrays of objects: `nested` holds (array field, amount field) pairs)."""
    schema = copy.deepcopy(schema)
    schema["properties"]["currency"] = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
    for name in amount_fields:
        schema["properties"][name] = {"type": "string", "examples": ["12.34"]}
    by_exponent: dict[int, list[str]] = {}
    for code, exponent in sorted(CURRENCY_EXPONENTS.items()):
        by_exponent.setdefault(exponent, []).append(code)
    # When `currency` is absent the server's default applies (CNY), see AccountRequest.
    schema["anyOf"] = [
        {
            "properties": {
                "currency": {"enum": codes},
                **{name: {"pattern": amount_pattern(exponent)} for name in amount_fields},
                **{
                    array: {"items": {"properties": {name: {"pattern": amount_pattern(exponent)}}}}
                    for array, name in nested
                },
            }
        }
        for exponent, codes in sorted(by_exponent.items())
    ]
    return schema


# ---- operations -----------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_INTERACTION_HEADER = {"x-fapi-interaction-id": {"$ref": "#/components/headers/InteractionId"}}

_STATUS_TEXT = {
    400: "Bad request: the request does not match this document",
    401: "Missing or invalid credentials (a revoked access token is QP.Auth.InvalidToken)",
    403: "This partner is disabled (QP.Partner.Disabled): its tokens are refused until it is enabled",
    404: "No such resource (or not visible to this partner)",
    409: "Conflict (a request with the same key in progress, or the fraud filter is off)",
    413: "Body larger than 64 KiB",
    422: "Well-formed but refused by a business rule",
    429: "Over the partner's rate limit (QP.RateLimit.Exceeded): retry after Retry-After seconds",
    500: "Internal error (a bug; logged with the interaction id)",
    503: "The ledger did not answer; retry (with the same x-idempotency-key)",
}


# IETF httpapi RateLimit fields (draft 10) on every answer to an authenticated partner request.
_RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {
        "required": False,
        "schema": {"type": "string", "pattern": r'^"partner";q=[0-9]+;w=[0-9]+$'},
        "description": "the partner's quota at the gateway process that answered: q requests per "
        "w seconds (a token bucket of burst q, refilled in w)",
    },
    "RateLimit": {
        "required": False,
        "schema": {"type": "string", "pattern": r'^"partner";r=[0-9]+;t=[0-9]+$'},
        "description": "r requests left now, t seconds until the quota is whole again",
    },
}


def _error(status: int, extra_headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT[status],
        "headers": {**_INTERACTION_HEADER, **(extra_headers or {})},
        "content": _json_content(_ref("Error")),
    }


def _op(
    operation_id: str,
    summary: str,
    *,
    security: str | None = "partner",
    body: str | None = None,
    body_required: bool = True,
    ok: tuple[int, str, str] = (200, "OK", "Object"),
    idempotent: bool = False,
    errors: tuple[int, ...] = (400, 401, 404),
    params: list[dict[str, Any]] | None = None,
    shards: bool = True,
    ok_headers: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": {}}
    parameters = list(params or [])
    parameters.append({"$ref": "#/components/parameters/InteractionId"})
    if idempotent:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    operation["parameters"] = parameters
    if security == "partner":
        operation["security"] = [{"partnerToken": []}]
    elif security == "admin":
        operation["security"] = [{"adminToken": []}]
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json_content(_ref(body))}
    status, description, schema = ok
    limited = _RATE_LIMIT_HEADERS if security == "partner" else {}
    success: dict[str, Any] = {
        "description": description,
        "headers": {**_INTERACTION_HEADER, **limited, **(ok_headers or {})},
        "content": _json_content(_ref(schema)),
    }
    if links:
        success["links"] = links
    operation["responses"][str(status)] = success
    statuses = set(errors)
    if security is not None:
        statuses.add(401)
    if body is not None:
        statuses.update((400, 413))
    if idempotent or any(p.get("in") in ("path", "query") for p in params or []):
        statuses.add(400)  # a malformed header, path or query value
    if shards:
        statuses.update((500, 503))
    if security == "partner":
        statuses.update((403, 429))
    for code in sorted(statuses):
        extra: dict[str, Any] = {}
        if code == 401:
            extra = {"WWW-Authenticate": {"required": security is not None, "schema": {"type": "string"}}}
        elif code == 503:
            extra = {"Retry-After": {"required": False, "schema": {"type": "string"}}}
        elif code == 429:
            extra = {
                "Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}},
                **_RATE_LIMIT_HEADERS,
            }
        operation["responses"][str(code)] = _error(code, extra)
    return operation


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _link(
    operation_id: str, *, parameters: dict[str, str] | None = None, body: dict[str, str] | None = None
) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    return link


def _object(required: list[str], properties: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _batch_op() -> dict[str, Any]:
    operation = _op(
        "createQuickPaymentBatch",
        "Up to 1,000 quick-payments in one request, each with its own idempotency_key. The answer is 200 "
        "with one result per item in request order: the payment (201, replayed or not) or the item's own "
        "error (the status the single endpoint would answer). One bad item never fails the others. Items "
        "go to their shards at once and are committed in the shards' group commits; the 200 is sent only "
        "when every accepted item is durable. Items with status 503 (a shard did not answer) may or may "
        "not have been committed: retry the whole batch with the same keys, each item happens once. A "
        "key repeated within one batch is decided by the shard like two concurrent requests: the later "
        "item gets 409 (in flight) or, if the first has committed, a replay (422 for another body). "
        "Rate limit: one token per payment. The request takes the first (none left: the whole batch is "
        "429); items past the partner's remaining tokens are refused one by one, the last ones first, with "
        "status 429 QP.RateLimit.Exceeded and nothing placed, and the 200 then carries Retry-After.",
        body="QuickPaymentBatchRequest",
        ok=(200, "One result per item, in request order", "QuickPaymentBatchResult"),
        errors=(),
    )
    operation["responses"]["413"]["description"] = "Body larger than 1 MiB (this operation's own bound)"
    return operation


def _metrics_op() -> dict[str, Any]:
    operation = _op(
        "metrics",
        "Prometheus metrics (text exposition format): requests, latency, rate-limit "
        "refusals of every gateway process; shard queues, group commits, relay backlog and "
        "lag, webhook backlog and failures, asked at scrape time",
        security="admin",
        ok=(200, "Metrics", "Object"),
        errors=(),
    )
    operation["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return operation


def _csv_op() -> dict[str, Any]:
    operation = _op(
        "getReconciliationFile",
        "A day's reconciliation file (CSV): every accepted payment and succeeded refund of "
        "the UTC day, then a summary per kind and the settlement account's net movement. "
        "Final 10 minutes after the day ends (404 QP.Reconciliation.NotReady before); "
        "?provisional=true gives the day so far, marked in its first line and a header",
        ok=(200, "The file", "Object"),
        errors=(400, 404),
        params=[
            _path_param("day", r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
            {"name": "provisional", "in": "query", "required": False, "schema": {"enum": ["true", "false"]}},
        ],
    )
    success = operation["responses"]["200"]
    success["content"] = {"text/csv": {"schema": {"type": "string"}}}
    success["headers"].update(
        {
            "Quickpay-Content-SHA256": {"required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
            "Quickpay-Reconciliation": {"required": True, "schema": {"enum": ["final", "provisional"]}},
        }
    )
    return operation


@functools.lru_cache(maxsize=4)
def openapi_document(batch_items_max: int | None = None) -> dict[str, Any]:
    """The document; `batch_items_max` is the deployment's batch bound (`--batch-items-max`,
    at most BATCH_ITEMS_MAX), stated as the batch envelope's maxItems."""
    from . import schemas

    structs = [
        schemas.QuickPaymentRequest,
        schemas.QuickPaymentBatchItem,
        schemas.AgreementRequest,
        schemas.PartnerRequest,
        schemas.AccountRequest,
        schemas.FundingRequest,
        schemas.RulesRequest,
        schemas.ListChangeRequest,
        schemas.RefundRequest,
        schemas.RateLimitRequest,
        schemas.WebhookEndpointRequest,
        schemas.RotateSecretRequest,
        schemas.PartnerActionRequest,
        schemas.PartnerSecretRotationRequest,
    ]
    _, components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    components = _ecma(components)
    components["QuickPaymentRequest"] = _by_currency(components["QuickPaymentRequest"], ("amount",))
    components["QuickPaymentBatchItem"] = _by_currency(components["QuickPaymentBatchItem"], ("amount",))
    components["QuickPaymentBatchItem"]["description"] = (
        "One item of a quick-payment batch: a QuickPaymentRequest plus its idempotency_key (the header's "
        "rule). The key is not part of the body compared on a retry, so an item and a single payment with "
        "the same key and body are the same payment."
    )
    components["RotateSecretRequest"]["properties"]["overlap_s"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": 7 * 86_400,
        "default": 86_400,
    }
    components["PartnerSecretRotationRequest"]["properties"]["overlap_s"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": 30 * 86_400,
        "default": 86_400,
        "description": "seconds the previous secret stays valid (0: retired at once)",
    }
    for name in ("requests_per_s", "burst"):
        components["RateLimitRequest"]["properties"][name] = {"type": "integer", "minimum": 1, "maximum": 10_000_000}
    components["AgreementRequest"] = _by_currency(
        components["AgreementRequest"], ("per_payment_limit", "daily_limit"), nested=(("periodic_limits", "amount"),)
    )
    components["AgreementRequest"]["properties"]["daily_limit"] = {
        "type": ["string", "null"],
        "description": "shorthand for a periodic limit {Day, Calendar}",
    }
    components["AgreementRequest"]["description"] = (
        "A mandate the customer must authorise (through the bank) before any payment. At most one periodic "
        "limit per period and alignment (daily_limit counts as Day/Calendar), else 422 "
        "QP.Agreement.DuplicateLimit; valid_from after valid_to, or before 1970, is 422 "
        "QP.Agreement.InvalidValidity. Times are RFC 3339 with an offset. A partner may have a bounded number "
        "of agreements awaiting authorisation (not expired) per customer account and in total; one more is 409 "
        "QP.Agreement.TooManyPending."
    )
    # A refund's amount is in its payment's currency, which the request does not name: the
    # grammar of the two-decimal currencies; more decimals than the payment's currency has is 422.
    components["RefundRequest"]["properties"]["amount"] = {
        "type": ["string", "null"],
        "pattern": amount_pattern(2),
        "description": "default: what remains of the payment",
    }
    components["FundingRequest"] = _by_currency(components["FundingRequest"], ("amount",))
    for name in ("PartnerRequest", "AccountRequest"):
        components[name]["properties"]["currency"] = {
            "type": "string",
            "enum": sorted(CURRENCY_EXPONENTS),
            "default": "CNY",
        }

    currency = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
    amount_out = {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?$", "examples": ["12.34"]}
    signed_amount_out = {"type": "string", "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"}
    account_id = {"type": "string", "minLength": 1}
    text_or_null = {"type": ["string", "null"]}
    status = {"type": "string", "enum": ["AcceptedSettlementCompleted", "AcceptedSettlementInProcess", "Rejected"]}
    transfer_status = {"type": "string", "enum": [*status["enum"], "Succeeded"]}
    date_time_or_null = {"type": ["string", "null"], "format": "date-time"}
    agreement_status = {"enum": ["AwaitingAuthorisation", "Authorised", "Rejected", "Suspended", "Revoked", "Expired"]}
    version_or_null = {"type": ["string", "null"], "pattern": r"^[0-9a-f]{64}$"}
    rule_summary = {
        "active_version": version_or_null,
        "enforced_version": version_or_null,
        "consistent": {"type": "boolean"},
        "degraded_shards": {"type": "array", "items": {"type": "integer"}},
    }
    components.update(
        {
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
            # GET /admin/v1/health: the same state with its reasons and the details.
            "AdminHealth": _object(
                ["status", "reasons", "shards", "services"],
                {
                    "status": {"enum": ["ready", "degraded", "not ready"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "shards": {
                        "type": "array",
                        "items": _object(
                            ["shard", "ready"],
                            {
                                "shard": {"type": "integer", "minimum": 0},
                                "ready": {"type": "boolean"},
                                "error": {"type": "string"},
                                # what the shard's fraud filter enforces (null with --no-rules), see RuleSetState
                                "fraud": {"type": ["object", "null"]},
                                # the relay's in-process supervision: restarts, crash loop, last error
                                "relay": {"type": ["object", "null"]},
                            },
                        ),
                    },
                    # Under `quickpay up`: the supervisor's children (state, pid, restarts, crash loop).
                    "children": {"type": "array", "items": {"type": "object"}},
                    "ha_members": {"type": "array", "items": {"type": "object"}},
                    "supervisor": {"type": "object"},
                    # notifier, monitor (the supervisor's view) and relay-<shard> (the shard's).
                    "services": {"type": "object"},
                },
            ),
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
                    "status": status,
                    "amount": amount_out,
                    "currency": currency,
                    "agreement_id": {"type": "string"},
                    "debtor_account": account_id,
                    "creditor_account": account_id,
                    "reference": {"type": "string"},
                    "created_at": DATE_TIME,
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "reason_details": {"oneOf": [{"type": "null"}, _ref("ReasonDetails")]},
                    "refunded_amount": {**amount_out, "description": "what succeeded refunds returned"},
                    "fraud": _ref("FraudDecision"),
                    "risk": _object(["device_id", "ip"], {"device_id": text_or_null, "ip": text_or_null}),
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
                    "status": transfer_status,
                    "amount": amount_out,
                    "currency": currency,
                    "debit_account": account_id,
                    "credit_account": account_id,
                    "reference": text_or_null,
                    "created_at": DATE_TIME,
                    "reasons": {"type": "array", "items": {"type": "string"}},
                },
            ),
            "ReasonDetails": _object(
                ["limit"],
                {
                    "limit": amount_out,
                    "period": {"enum": ["Day", "Week", "Month", "Year"]},
                    "alignment": {"enum": ["Calendar", "Consent"]},
                    "remaining": amount_out,
                    "period_start": DATE_TIME,
                    "period_end": DATE_TIME,
                },
            ),
            "PeriodicLimit": _object(
                ["period", "alignment", "amount", "remaining", "period_start", "period_end"],
                {
                    "period": {"enum": ["Day", "Week", "Month", "Year"]},
                    "alignment": {"enum": ["Calendar", "Consent"]},
                    "amount": amount_out,
                    "remaining": {**amount_out, "description": "left in the current period"},
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
                    "debtor_account": account_id,
                    "currency": currency,
                    "status": agreement_status,
                    "status_updated_at": DATE_TIME,
                    "per_payment_limit": amount_out,
                    "daily_limit": {"type": ["string", "null"], "description": "the Day/Calendar limit, if any"},
                    "periodic_limits": {"type": "array", "items": _ref("PeriodicLimit")},
                    "valid_from": date_time_or_null,
                    "valid_to": date_time_or_null,
                    "created_at": DATE_TIME,
                    "authorise_by": {
                        **date_time_or_null,
                        "description": "still AwaitingAuthorisation after this, "
                        "the agreement reads Expired and can no longer be authorised",
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
            "RateLimitSetting": _object(
                ["partner_id", "requests_per_s", "burst", "applies_within_s"],
                {
                    "partner_id": {"type": "string"},
                    "requests_per_s": {"type": "integer"},
                    "burst": {"type": "integer"},
                    "applies_within_s": {"type": "number"},
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
                    "amount": amount_out,
                    "currency": currency,
                    "status": {"enum": ["Succeeded", "Rejected"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "reason": {"enum": ["duplicate", "fraudulent", "requested_by_customer", None]},
                    "reference": text_or_null,
                    "created_at": DATE_TIME,
                },
            ),
            "Balance": _object(
                ["account_id", "kind", "currency", "balance", "stripes"],
                {
                    "account_id": account_id,
                    "kind": {"enum": ["customer", "settlement", "funding", "clearing"]},
                    "currency": currency,
                    "balance": signed_amount_out,
                    "stripes": {"type": "integer", "minimum": 1},
                },
            ),
            "PartnerCredentials": _object(
                ["partner_id", "client_id", "client_secret", "settlement_account", "currency"],
                {
                    "partner_id": {"type": "string"},
                    "client_id": {"type": "string"},
                    "client_secret": {"type": "string"},
                    "settlement_account": {"type": "string"},
                    "currency": currency,
                },
            ),
            "PartnerCutoff": _object(
                [
                    "partner_id",
                    "disabled",
                    "disabled_at",
                    "tokens_valid_after",
                    "previous_secret_valid_until",
                    "applies_within_s",
                ],
                {
                    "partner_id": {"type": "string"},
                    "disabled": {"type": "boolean"},
                    "disabled_at": {"type": ["string", "null"], "format": "date-time"},
                    "tokens_valid_after": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "tokens issued at or before this instant are refused",
                    },
                    "previous_secret_valid_until": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "the previous client secret's overlap end",
                    },
                    "applies_within_s": {"type": "number", "description": "every gateway process applies it within"},
                    "action": {"enum": ["disable", "enable", "rotate_secret", "retire_secret", "revoke_tokens"]},
                    "changed": {"type": "boolean", "description": "false: already so, nothing recorded"},
                    "client_secret": {"type": "string", "description": "rotate-secret only: shown once"},
                    "name": {"type": "string"},
                    "settlement_account": {"type": "string"},
                    "created_at": DATE_TIME,
                },
            ),
            "PartnerAudit": _object(
                ["partner_id", "entries", "next_cursor"],
                {
                    "partner_id": {"type": "string"},
                    "entries": {
                        "type": "array",
                        "items": _object(
                            ["seq", "action", "actor", "at", "details"],
                            {
                                "seq": {"type": "integer"},
                                "action": {"type": "string"},
                                "actor": {"type": "string"},
                                "at": DATE_TIME,
                                "details": {"type": "object"},
                            },
                        ),
                    },
                    "next_cursor": {"type": ["string", "null"]},
                },
            ),
            "Account": _object(
                ["account_id", "currency", "balance"],
                {"account_id": account_id, "currency": currency, "balance": amount_out},
            ),
            # Rule-set versions are content hashes (sha256 of the canonical text); see
            # gateway/fraud_rollout.py. Per-shard entries stay open: they carry diagnostics.
            "RuleSets": _object(
                ["active_version", "enforced_version", "consistent", "degraded_shards", "shards"],
                {**rule_summary, "shards": {"type": "array", "items": _ref("RuleSetState")}},
            ),
            "RuleSetState": {
                "type": "object",
                "properties": {
                    "active_version": version_or_null,
                    "enforced_version": version_or_null,
                    "previous_version": version_or_null,
                    "degraded": {"type": "boolean"},
                    "versions": {"type": "array", "items": {"type": "object"}},
                    "audit": {"type": "array", "items": {"type": "object"}},
                },
            },
            "RuleChange": _object(
                ["version", "active_version", "enforced_version", "consistent", "degraded_shards", "shards"],
                {
                    "version": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
                    **rule_summary,
                    "shards": {"type": "array", "items": _ref("RuleSetState")},
                },
            ),
            "Lists": _object(
                ["lists"],
                {"lists": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
            ),
            "Alerts": _object(["alerts"], {"alerts": {"type": "array", "items": {"type": "object"}}}),
            "Decisions": _object(["payments"], {"payments": {"type": "array", "items": _ref("Payment")}}),
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
    )
    # A transactions page item is a Transfer plus its direction for the account asked about.
    item = copy.deepcopy(components["Transfer"])
    item["properties"]["direction"] = {"enum": ["debit", "credit"]}
    item["required"] = [*item["required"], "direction"]
    components["TransactionItem"] = item
    components["Transactions"] = _object(
        ["account_id", "transactions", "next_cursor"],
        {
            "account_id": account_id,
            "next_cursor": {"type": ["string", "null"]},
            "transactions": {"type": "array", "items": _ref("TransactionItem")},
        },
    )

    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    }
    author = {
        "name": "author",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$"},
        "description": "Recorded in the audit trail (default admin); 1-100 characters without control "
        "characters, else 400.",
    }
    cursor = {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "next_cursor of the previous page (opaque); anything else is 400 QP.Cursor.Invalid",
    }
    agreement_status_param = {"name": "status", "in": "query", "required": False, "schema": agreement_status}
    account_links = {
        "GetAccountBalance": _link("getAccountBalance", parameters={"account_id": "$response.body#/debtor_account"}),
        "ListTransactions": _link("listTransactions", parameters={"account_id": "$response.body#/debtor_account"}),
    }
    paths: dict[str, Any] = {
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
                    **account_links,
                },
            ),
            "get": _op(
                "listAgreements",
                "Your agreements, newest first, cursor-paginated",
                ok=(200, "OK", "Agreements"),
                errors=(400,),
                params=[agreement_status_param, limit, cursor],
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
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN), agreement_status_param, limit, cursor],
            )
        },
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
                    limit,
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
        "/admin/v1/partners": {
            "post": _op(
                "createPartner",
                "Create a partner; returns its client credentials once",
                security="admin",
                body="PartnerRequest",
                ok=(201, "Created", "PartnerCredentials"),
                errors=(),
                links={
                    "GetSettlementBalance": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/settlement_account"}
                    )
                },
            )
        },
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
                    limit,
                ],
            )
        },
        "/admin/v1/partners/{partner_id}/rate-limit": {
            "put": _op(
                "setPartnerRateLimit",
                "Override the default rate limit of one partner (every gateway process applies it within 5 s)",
                security="admin",
                body="RateLimitRequest",
                ok=(200, "OK", "RateLimitSetting"),
                errors=(404,),
                params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
            )
        },
        "/admin/v1/partners/{partner_id}": {
            "get": _op(
                "getPartner",
                "A partner and its cut-off state",
                security="admin",
                ok=(200, "OK", "PartnerCutoff"),
                errors=(404,),
                params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
            )
        },
        **{
            f"/admin/v1/partners/{{partner_id}}/{segment}": {
                "post": _op(
                    operation_id,
                    summary,
                    security="admin",
                    body=body,
                    body_required=False,
                    ok=(200, "OK", "PartnerCutoff"),
                    errors=(404,),
                    params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
                )
            }
            for segment, operation_id, summary, body in (
                (
                    "disable",
                    "disablePartner",
                    "Refuse the partner's tokens (403 QP.Partner.Disabled on every gateway "
                    "process within 1 s) and issue it none; accepted payments settle",
                    "PartnerActionRequest",
                ),
                ("enable", "enablePartner", "Let a disabled partner back in", "PartnerActionRequest"),
                (
                    "rotate-secret",
                    "rotatePartnerSecret",
                    "A new client secret (in this answer only); the previous one stays valid for overlap_s",
                    "PartnerSecretRotationRequest",
                ),
                (
                    "retire-secret",
                    "retirePartnerSecret",
                    "End the previous client secret's overlap now",
                    "PartnerActionRequest",
                ),
                (
                    "revoke-tokens",
                    "revokePartnerTokens",
                    "Refuse every token issued to the partner until now (on every gateway process within 1 s)",
                    "PartnerActionRequest",
                ),
            )
        },
        "/admin/v1/partners/{partner_id}/audit": {
            "get": _op(
                "getPartnerAudit",
                "Who cut the partner off or let it back in, and when (oldest first)",
                security="admin",
                ok=(200, "OK", "PartnerAudit"),
                errors=(404,),
                params=[
                    _path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$"),
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "next_cursor of an earlier page",
                    },
                    limit,
                ],
            )
        },
        "/admin/v1/accounts": {
            "post": _op(
                "openAccount",
                "Open a customer account (the body is optional: CNY by default)",
                security="admin",
                body="AccountRequest",
                body_required=False,
                ok=(201, "Created", "Account"),
                errors=(),
                links={
                    "FundAccount": _link(
                        "fundAccount",
                        parameters={"account_id": "$response.body#/account_id"},
                        body={"currency": "$response.body#/currency"},
                    ),
                    "GetAccountBalanceAdmin": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/account_id"}
                    ),
                    "CreateAgreement": _link(
                        "createAgreement",
                        body={"debtor_account": "$response.body#/account_id", "currency": "$response.body#/currency"},
                    ),
                },
            )
        },
        "/admin/v1/accounts/{account_id}/fundings": {
            "post": _op(
                "fundAccount",
                "Fund an account from the bank funding account (a double-entry transfer)",
                security="admin",
                body="FundingRequest",
                ok=(201, "Transfer (new or replayed)", "Transfer"),
                idempotent=True,
                errors=(404, 409, 422),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
                links={
                    "GetAccountBalanceAdmin": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/credit_account"}
                    )
                },
            )
        },
        "/admin/v1/accounts/{account_id}/balance": {
            "get": _op(
                "getAccountBalanceAdmin",
                "Any account's balance",
                security="admin",
                ok=(200, "OK", "Balance"),
                errors=(404,),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
            )
        },
        "/admin/v1/health": {
            "get": _op(
                "getHealth",
                "Readiness with its reasons and details: shards, supervised children and their "
                "restarts, background services (notifier, monitor, relays), HA members, fraud "
                "rule-set versions",
                security="admin",
                errors=(),
                shards=False,
                ok=(200, "OK", "AdminHealth"),
            )
        },
        "/admin/v1/fraud/rules": {
            "get": _op(
                "getFraudRules",
                "Rule set versions and audit trail per shard",
                security="admin",
                errors=(409,),
                ok=(200, "OK", "RuleSets"),
            ),
            "post": _op(
                "proposeFraudRules",
                "Validate a new rule set version and (by default) activate it everywhere",
                security="admin",
                body="RulesRequest",
                ok=(201, "Created", "RuleChange"),
                errors=(409, 422, 503),
            ),
        },
        "/admin/v1/fraud/rules/{version}/activate": {
            "post": _op(
                "activateFraudRules",
                "Activate a stored version on every shard, or on none",
                security="admin",
                ok=(200, "OK", "RuleChange"),
                errors=(404, 409, 422),
                params=[_path_param("version", VERSION_PATTERN), author],
            )
        },
        "/admin/v1/fraud/rules/rollback": {
            "post": _op(
                "rollbackFraudRules",
                "Return every shard to the previously active version",
                security="admin",
                ok=(200, "OK", "RuleChange"),
                errors=(409, 422),
                params=[author],
            )
        },
        "/admin/v1/fraud/lists": {
            "get": _op("getFraudLists", "Named lists", security="admin", ok=(200, "OK", "Lists"), errors=(409,))
        },
        "/admin/v1/fraud/lists/{name}": {
            "post": _op(
                "changeFraudList",
                "Add or remove list values at runtime",
                security="admin",
                body="ListChangeRequest",
                ok=(200, "OK", "Lists"),
                errors=(409, 422),
                params=[_path_param("name", IDENTIFIER_PATTERN)],
            )
        },
        "/admin/v1/fraud/alerts": {
            "get": _op(
                "listFraudAlerts",
                "Alerts raised by the post-event monitor",
                security="admin",
                ok=(200, "OK", "Alerts"),
                errors=(),
            )
        },
        "/admin/v1/fraud/decisions": {
            "get": _op(
                "listFraudDecisions",
                "Recorded payments by fraud decision and/or rule id, newest first",
                security="admin",
                ok=(200, "OK", "Decisions"),
                errors=(400,),
                params=[
                    {
                        "name": "decision",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["allow", "review", "block"]},
                    },
                    {
                        "name": "rule_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN},
                    },
                    limit,
                ],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quickpay",
            "version": "0.1.0",
            "description": "Quick-pay open-banking API. Amounts are decimal strings; every error has "
            "the body {code, message, errors[{code, message, path}]} and every response "
            "the header x-fapi-interaction-id. A method a path does not declare is 405 "
            "with an Allow header.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "parameters": {
                "InteractionId": {
                    "name": "x-fapi-interaction-id",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Echoed on the response when it is 1-128 characters; otherwise a new "
                    "UUID-shaped id is generated and returned.",
                },
                "IdempotencyKey": {
                    "name": "x-idempotency-key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": IDEMPOTENCY_KEY_PATTERN},
                    "description": "1-64 printable ASCII characters; a retry with the same key and body "
                    "answers the original result and never moves money twice.",
                },
            },
            "headers": {"InteractionId": {"required": True, "schema": {"type": "string", "minLength": 1}}},
            "securitySchemes": {
                "partnerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /oauth2/token (client credentials).",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator's admin token (state dir admin.token).",
                },
                "clientBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "client_id:client_secret for the token endpoint.",
                },
            },
        },
    }
