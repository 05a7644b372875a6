"""The document's building blocks: an operation with every status it can answer (_op), its
error responses and headers, path and query parameters, links, closed objects, and the
operations with their own content types or bounds (batch, metrics, the CSV file)."""

from __future__ import annotations

from typing import Any

from .patterns import AGREEMENT_STATUS


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


# ---- parameters shared by the paths ---------------------------------------------------------
LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
}
AUTHOR = {
    "name": "author",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$"},
    "description": "Recorded in the audit trail (default admin); 1-100 characters without control "
    "characters, else 400.",
}
CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "next_cursor of the previous page (opaque); anything else is 400 QP.Cursor.Invalid",
}
AGREEMENT_STATUS_PARAM = {"name": "status", "in": "query", "required": False, "schema": AGREEMENT_STATUS}
ACCOUNT_LINKS = {
    "GetAccountBalance": _link("getAccountBalance", parameters={"account_id": "$response.body#/debtor_account"}),
    "ListTransactions": _link("listTransactions", parameters={"account_id": "$response.body#/debtor_account"}),
}
