"""HTTP entrypoint: aiohttp handlers for partners and the admin API.

Handlers validate, route to the shard that owns the entity, and translate the
shard's result codes into HTTP. They hold no state of their own beyond caches
of immutable facts (verified tokens, account currencies).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import itertools
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from kernel.context import INTERACTION_ID
from kernel.ids import (
    is_striped,
    new_account_id,
    new_agreement_id,
    new_partner_id,
    payment_id_for,
    refund_id_for,
    settlement_account_for,
    shard_of_payment,
    shard_of_refund,
)
from kernel.money import AmountError, format_amount, parse_amount
from kernel.resources import _iso, agreement_resource, payment_resource, refund_resource, transfer_resource
from kernel.timestamps import OutOfRange, utc_ms
from ledger import recon
from ledger.client import ShardError, ShardOverloaded, ShardUnavailable
from notify.events import EVENT_TYPES
from notify.ssrf import UrlRefused, resolve_checked

from . import health, metrics
from .auth import client_secret_valid, hash_secret, new_secret
from .config import GatewayConfig
from .errors import ApiError, error_response, field_error
from .fraud_rollout import VERSION_RE, FraudRollout
from .openapi import openapi_document
from .paging import merge_page
from .ratelimit import RateLimit
from .requests import (
    _ACCOUNT_ID,
    _AGREEMENT_ID,
    _ASCII_DIGITS,
    _AUTHOR,
    _DAY,
    _PARTNER_ID,
    _WEBHOOK_ID,
    BATCH_BODY_MAX_BYTES,
    BODY_MAX_BYTES,
    INTERACTION_ID_MAX,
    RULE_IDENTIFIER,
    _decode_agreement_cursor,
    _decode_cursor,
    _encode_agreement_cursor,
    _encode_cursor,
    _page_limit,
    ascii_int,
    body_hash,
    is_printable_ascii,
    read_batch_body,
    read_body,
)
from .responses import _PAYMENT_ERRORS, _REPLAYED, _internal, _json, _raise_for, _shard_error, _unavailable, rendered
from .schemas import (
    AccountRequest,
    AgreementRequest,
    FundingRequest,
    ListChangeRequest,
    PartnerActionRequest,
    PartnerRequest,
    PartnerSecretRotationRequest,
    QuickPaymentBatchItem,
    QuickPaymentBatchRequest,
    QuickPaymentRequest,
    RateLimitRequest,
    RefundRequest,
    RotateSecretRequest,
    RulesRequest,
    WebhookEndpointRequest,
    decode_body,
)
from .state import (
    CUTOFF_APPLIES_WITHIN_S,
    CUTOFF_FIRST_READ_S,
    GATEWAY_KEY,
    RATE_LIMIT_OVERRIDE_TTL_S,
    RATE_VERDICT,
    RECON_PROVISIONAL_REUSE_S,
    RECON_ROWS_PER_TOKEN,
    Gateway,
    ReconFile,
)

__all__ = [
    "BATCH_BODY_MAX_BYTES",
    "BODY_MAX_BYTES",
    "RECON_PROVISIONAL_REUSE_S",
    "_PAYMENT_ERRORS",
    "Gateway",
    "GatewayConfig",
    "api_middleware",
    "ascii_int",
    "create_app",
]

log = logging.getLogger("quickpay.gateway")

# Control characters and lone surrogates have no business in a path or a query string:
# refused before any handler sees them (a NUL would reach PostgreSQL, a surrogate
# cannot be encoded for the shard protocol).
_UNSAFE_URL_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_random = uuid.uuid4().hex
_interaction_prefix = f"{_random[0:8]}-{_random[8:12]}-4{_random[13:16]}-{_random[16:20]}-"
_interaction_counter = itertools.count(1)


def _new_interaction_id() -> str:
    # UUID-shaped as FAPI expects; unique per process through a random prefix and a
    # counter, and a tenth of the cost of uuid4() per request.
    return f"{_interaction_prefix}{next(_interaction_counter) & 0xFFFFFFFFFFFF:012x}"


def _check_url(request: web.Request) -> None:
    if _UNSAFE_URL_TEXT.search(request.path) is not None:
        raise field_error(400, "QP.Path.Invalid", "the path holds control characters", "path")
    if _UNSAFE_URL_TEXT.search(request.query_string) is not None:
        raise field_error(400, "QP.Query.Invalid", "the query string holds control characters", "query")


# A request refused for its partner's rate is answered after min(Retry-After, this) seconds:
# a client that ignores Retry-After and loops on 429s (a closed loop, or a hostile partner)
# then costs one cheap refusal per connection per hold instead of thousands a second, which
# took CPU from every other partner (tests/test_fairness.py). Held answers are bounded per
# process; past the bound a refusal is answered at once.
REFUSAL_HOLD_S = 1.0
REFUSALS_HELD_MAX = 1024
_refusals_held = 0


async def _hold_refusal(retry_after_s: float) -> None:
    global _refusals_held
    if _refusals_held >= REFUSALS_HELD_MAX:
        return
    _refusals_held += 1
    try:
        await asyncio.sleep(min(retry_after_s, REFUSAL_HOLD_S))
    finally:
        _refusals_held -= 1


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    interaction_id = request.headers.get("x-fapi-interaction-id")
    if not interaction_id or not is_printable_ascii(interaction_id, INTERACTION_ID_MAX):
        interaction_id = _new_interaction_id()
    INTERACTION_ID.set(interaction_id)  # every log line of this request carries it
    try:
        _check_url(request)
        response = await handler(request)
    except ApiError as error:
        response = error_response(error)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(ApiError(413, "QP.Body.TooLarge", f"the request body exceeds {BODY_MAX_BYTES} bytes"))
    except web.HTTPException as exc:
        code = {404: "QP.Resource.NotFound", 405: "QP.Method.NotAllowed"}.get(exc.status, "QP.Http")
        allow = exc.headers.get("Allow")
        response = error_response(
            ApiError(exc.status, code, exc.reason, headers={"Allow": allow} if allow is not None else None)
        )
    except (ShardUnavailable, ShardOverloaded) as exc:
        # The outcome is unknown to us; the partner retries with the same key and
        # gets exactly one payment either way.
        response = error_response(
            _unavailable(f"the ledger did not answer ({exc}); retry with the same x-idempotency-key")
        )
    except ShardError as exc:
        response = error_response(_shard_error(exc, interaction_id))
    except Exception as exc:  # a bug: never a bare text 500 without the interaction id
        response = error_response(_internal(exc, interaction_id))
    response.headers["x-fapi-interaction-id"] = interaction_id
    verdict = request.get(RATE_VERDICT)
    if verdict is not None:
        response.headers.update(verdict.headers())
        if not verdict.allowed and response.status == 429:
            await _hold_refusal(verdict.retry_after_s)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.record(route, request.method, response.status, time.perf_counter() - started)
    return response


_KEY_HEADER_PATH = "header.x-idempotency-key"


def _rate_limited_item(index: int, retry_after_s: int) -> dict[str, Any]:
    """The result of a batch item past the partner's tokens (nothing was placed)."""
    message = f"over this partner's rate limit (one token per payment); retry after {retry_after_s} s"
    return {
        "status": 429,
        "error": {
            "code": "QP.RateLimit.Exceeded",
            "message": message,
            "errors": [{"code": "QP.RateLimit.Exceeded", "message": message, "path": f"$.payments[{index}]"}],
        },
    }


def _item_path(index: int, path: str) -> str:
    """An error path of a batch item: `$.amount` -> `$.payments[3].amount`; the key's header
    path -> `$.payments[3].idempotency_key`."""
    if path == _KEY_HEADER_PATH:
        return f"$.payments[{index}].idempotency_key"
    if path == "$" or path.startswith("$.") or path.startswith("$["):
        return f"$.payments[{index}]{path[1:]}"
    return path


CUSTOMER_ACTIONS = ("authorise", "reject", "suspend", "resume", "revoke")
AGREEMENT_STATUSES = ("AwaitingAuthorisation", "Authorised", "Rejected", "Suspended", "Revoked", "Expired")


CUTOFF_TASK_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("cutoff_refresh", asyncio.Task)


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=BODY_MAX_BYTES)
    gw = Gateway(config)
    app[GATEWAY_KEY] = gw
    router = gw.router
    routes = web.RouteTableDef()

    # -- health and docs --
    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        # Public: the state only (gateway/health.py); the reasons are at /admin/v1/health.
        report = await health.assess(router.clients, config.supervisor_status, gw.cutoffs_loaded)
        return _json(503 if report["status"] == health.NOT_READY else 200, {"status": report["status"]})

    @routes.get("/admin/v1/health")
    async def admin_health(request: web.Request) -> web.Response:
        gw.require_admin(request)
        report = await health.assess(router.clients, config.supervisor_status, gw.cutoffs_loaded)
        return _json(200, report)

    @routes.get("/metrics")
    async def prometheus_metrics(request: web.Request) -> web.Response:
        gw.require_admin(request)

        async def ping(shard: int) -> tuple[int, Any]:
            try:
                return shard, await router.clients[shard].call("ping")
            except Exception:
                return shard, None

        pings = list(await asyncio.gather(*(ping(s) for s in range(router.count))))
        try:
            deliveries = await router.clients[0].call("notify", {"action": "stats", "partner_id": "-"})
        except Exception:
            deliveries = None
        services = health.service_restarts(health.report_from(pings, config.supervisor_status))
        return web.Response(
            body=metrics.render(pings, deliveries, services), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    @routes.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return _json(200, openapi_document(config.batch_items_max))

    # -- OAuth2 client credentials --
    @routes.post("/oauth2/token")
    async def token(request: web.Request) -> web.Response:
        client_id = client_secret = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
                client_id, _, client_secret = decoded.partition(":")
            except Exception:
                raise ApiError(401, "invalid_client", "malformed basic credentials") from None
        form: Any = {}
        if request.content_type == "application/x-www-form-urlencoded":
            if request.content_length is not None and request.content_length > BODY_MAX_BYTES:
                raise ApiError(413, "QP.Body.TooLarge", f"the request body exceeds {BODY_MAX_BYTES} bytes")
            try:
                form = await request.post()
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "invalid_request", "the form body is malformed") from None
        elif request.can_read_body:
            body = await read_body(request)
            try:
                form = msgspec.json.decode(body) if body else {}
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                raise ApiError(400, "invalid_request", "body must be form-encoded or JSON") from None
            if not isinstance(form, dict):
                raise ApiError(400, "invalid_request", "body must be an object")
            for name in ("client_id", "client_secret"):
                if name in form and not isinstance(form[name], str):
                    raise field_error(400, "invalid_request", f"{name} must be a string", name)
        if form.get("grant_type") != "client_credentials":
            raise field_error(400, "unsupported_grant_type", "grant_type must be client_credentials", "grant_type")
        client_id = client_id or form.get("client_id")
        client_secret = client_secret or form.get("client_secret")
        if (
            not isinstance(client_id, str)
            or not isinstance(client_secret, str)
            or _PARTNER_ID.fullmatch(client_id) is None
            or not is_printable_ascii(client_secret, 256)
        ):
            raise ApiError(401, "invalid_client", "client authentication failed")
        partner = await router.client_for(client_id).call("partner", {"id": client_id})
        now_ms = int(time.time() * 1000)
        # The current secret, or the previous one inside its rotation overlap.
        if partner is None or not client_secret_valid(partner, client_secret, now_ms):
            raise ApiError(401, "invalid_client", "client authentication failed")
        # The record just read is the truth (this process's polled markers may be 0.5 s old).
        if partner.get("disabled_at_ms") is not None:
            raise ApiError(401, "invalid_client", "this client is disabled")
        now_s = now_ms // 1000
        return _json(
            200,
            {
                "access_token": gw.tokens.issue(client_id, now_s, now_ms),
                "token_type": "Bearer",
                "expires_in": gw.tokens.ttl_s,
                "scope": "payments",
            },
            headers={"Cache-Control": "no-store"},
        )

    # -- agreements --
    def to_ms(value: datetime.datetime | None, path: str) -> int | None:
        # Normalise to UTC, then validate against what every reader can render.
        if value is None:
            return None
        try:
            return utc_ms(value)
        except OutOfRange as exc:
            raise field_error(422, "QP.Agreement.InvalidValidity", str(exc), path) from None

    @routes.post("/v1/agreements")
    async def create_agreement(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        body: AgreementRequest = decode_body(await read_body(request), AgreementRequest)  # type: ignore[assignment]
        currency = gw.currency(body.currency)
        per_payment = gw.amount(body.per_payment_limit, currency, "$.per_payment_limit")
        limits = [
            (limit.period, limit.alignment, gw.amount(limit.amount, currency, f"$.periodic_limits[{i}].amount"))
            for i, limit in enumerate(body.periodic_limits)
        ]
        if body.daily_limit is not None:
            limits.append(("Day", "Calendar", gw.amount(body.daily_limit, currency, "$.daily_limit")))
        seen: set[tuple[str, str]] = set()
        for period, alignment, _ in limits:
            if (period, alignment) in seen:
                raise field_error(
                    422,
                    "QP.Agreement.DuplicateLimit",
                    f"more than one {alignment} {period} limit (daily_limit is a Calendar Day limit)",
                    "$.periodic_limits",
                )
            seen.add((period, alignment))
        valid_from = to_ms(body.valid_from, "$.valid_from")
        valid_to = to_ms(body.valid_to, "$.valid_to")
        if valid_from is not None and valid_to is not None and valid_from > valid_to:
            raise field_error(422, "QP.Agreement.InvalidValidity", "valid_from is after valid_to", "$.valid_to")
        if valid_to is not None and valid_to < time.time_ns() // 1_000_000:
            raise field_error(422, "QP.Agreement.InvalidValidity", "valid_to is in the past", "$.valid_to")
        if is_striped(body.debtor_account):
            raise field_error(422, "QP.Account.NotFound", "no such customer account", "$.debtor_account")
        agreement_id = new_agreement_id(body.debtor_account, router.count)
        result = await router.client_for(body.debtor_account).call(
            "create_agreement",
            {
                "id": agreement_id,
                "partner_id": partner_id,
                "debtor_account": body.debtor_account,
                "currency": currency,
                "per_payment_limit_minor": per_payment,
                "periodic_limits": [list(limit) for limit in limits],
                "valid_from_ms": valid_from,
                "valid_to_ms": valid_to,
            },
        )
        if result["code"] == "ACCOUNT_NOT_FOUND":
            raise field_error(422, "QP.Account.NotFound", "no such customer account", "$.debtor_account")
        if result["code"] == "CURRENCY_MISMATCH":
            raise field_error(422, "QP.Currency.Mismatch", "the account holds another currency", "$.currency")
        if result["code"] in ("TOO_MANY_PENDING_FOR_ACCOUNT", "TOO_MANY_PENDING"):
            _raise_for(result["code"])
        return _json(201, agreement_resource(result["agreement"]))

    def agreement_shard(agreement_id: str) -> Any:
        if _AGREEMENT_ID.fullmatch(agreement_id) is None:
            raise ApiError(404, "QP.Agreement.NotFound", "no such agreement")
        return router.client_for(agreement_id)

    async def read_agreement(agreement_id: str, partner_id: str | None) -> web.Response:
        args: dict[str, Any] = {"id": agreement_id, "history": True}
        if partner_id is not None:
            args["partner_id"] = partner_id
        found = await agreement_shard(agreement_id).call("agreement", args)
        if found is None:
            raise ApiError(404, "QP.Agreement.NotFound", "no such agreement")
        return _json(200, agreement_resource(found))

    @routes.get("/v1/agreements/{agreement_id}")
    async def get_agreement(request: web.Request) -> web.Response:
        return await read_agreement(request.match_info["agreement_id"], gw.partner_of(request))

    async def agreement_action(agreement_id: str, action: str, actor: str, partner_id: str | None) -> web.Response:
        result = await agreement_shard(agreement_id).call(
            "agreement_action", {"id": agreement_id, "action": action, "actor": actor, "partner_id": partner_id}
        )
        code = result["code"]
        if code in ("OK", "SAME"):
            return _json(200, agreement_resource(result["agreement"]))
        if code == "AGREEMENT_NOT_FOUND":
            raise ApiError(404, "QP.Agreement.NotFound", "no such agreement")
        if code == "INVALID_TRANSITION":
            status = agreement_resource(result["agreement"])["status"]
            raise field_error(
                409, "QP.Agreement.InvalidTransition", f"cannot {action} an agreement that is {status}", "$.status"
            )
        raise ApiError(403, "QP.Agreement.Forbidden", f"{actor} may not {action} an agreement")

    @routes.delete("/v1/agreements/{agreement_id}")
    async def revoke_agreement(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        return await agreement_action(request.match_info["agreement_id"], "revoke", "partner", partner_id)

    async def list_agreements(request: web.Request, shards: list[int], owner: dict[str, str]) -> web.Response:
        limit = _page_limit(request)
        status = request.query.get("status")
        if status is not None and status not in AGREEMENT_STATUSES:
            raise field_error(
                400, "QP.Query.Invalid", "status is one of " + ", ".join(AGREEMENT_STATUSES), "query.status"
            )
        before = _decode_agreement_cursor(request.query.get("cursor"))
        answers = await asyncio.gather(
            *(
                router.call(
                    s,
                    "agreements",
                    {**owner, "status": status, "before": list(before) if before else None, "limit": limit + 1},
                )
                for s in shards
            )
        )
        # A shard that stopped scanning early (AGREEMENT_SCAN_MAX) has not looked below the
        # key it stopped at: nothing below the highest such key is certain yet, so the page
        # ends there and the cursor continues from it.
        floor = max((tuple(a["stopped_at"]) for a in answers if a["stopped_at"] is not None), default=None)
        rows = sorted(
            (a for answer in answers for a in answer["agreements"]),
            key=lambda a: (a["created_at_ms"], a["id"]),
            reverse=True,
        )
        if floor is not None:
            rows = [a for a in rows if (a["created_at_ms"], a["id"]) >= floor]
        page = rows[:limit]
        next_key: tuple[int, str] | None = None
        if len(rows) > limit:
            next_key = (page[-1]["created_at_ms"], page[-1]["id"])
        elif floor is not None:
            next_key = (int(floor[0]), str(floor[1]))
        return _json(
            200,
            {
                "agreements": rendered("agreements", page, agreement_resource),
                "next_cursor": _encode_agreement_cursor(next_key) if next_key else None,
            },
        )

    @routes.get("/v1/agreements")
    async def list_partner_agreements(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        return await list_agreements(request, list(range(router.count)), {"partner_id": partner_id})

    # The customer's side, through the bank's channel (the admin API stands in for the
    # bank's app or SMS confirmation in this prototype).
    @routes.get("/admin/v1/agreements/{agreement_id}")
    async def admin_get_agreement(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return await read_agreement(request.match_info["agreement_id"], None)

    @routes.post("/admin/v1/agreements/{agreement_id}/{action}")
    async def customer_agreement_action(request: web.Request) -> web.Response:
        gw.require_admin(request)
        action = request.match_info["action"]
        if action not in CUSTOMER_ACTIONS:
            raise ApiError(404, "QP.Resource.NotFound", "no such action: authorise, reject, suspend, resume, revoke")
        return await agreement_action(request.match_info["agreement_id"], action, "customer", None)

    @routes.get("/admin/v1/accounts/{account_id}/agreements")
    async def list_account_agreements(request: web.Request) -> web.Response:
        gw.require_admin(request)
        account_id = request.match_info["account_id"]
        if _ACCOUNT_ID.fullmatch(account_id) is None or is_striped(account_id):
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        shard = router.shard_of(account_id)
        if await router.call(shard, "lookup_account", {"id": account_id}) is None:
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        return await list_agreements(request, [shard], {"debtor_account": account_id})

    # -- webhooks and events (shard 0's database holds them: notify/) --
    control = router.clients[0]

    def endpoint_resource(e: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": e["id"],
            "url": e["url"],
            "events": e["events"],
            "created_at": _iso(e["created_at_ms"]),
        }
        if e.get("previous_secret_until_ms"):
            resource["previous_secret_expires_at"] = _iso(e["previous_secret_until_ms"])
        if secret is not None:
            resource["secret"] = secret  # shown once: at creation and at rotation
        return resource

    def endpoint_id_of(request: web.Request) -> str:
        endpoint_id = request.match_info["endpoint_id"]
        if _WEBHOOK_ID.fullmatch(endpoint_id) is None:
            raise ApiError(404, "QP.WebhookEndpoint.NotFound", "no such webhook endpoint")
        return endpoint_id

    @routes.post("/v1/webhook-endpoints")
    async def create_webhook_endpoint(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        body: WebhookEndpointRequest = decode_body(await read_body(request), WebhookEndpointRequest)  # type: ignore[assignment]
        unknown = [t for t in body.events if t != "*" and t not in EVENT_TYPES]
        if unknown or len(set(body.events)) != len(body.events):
            raise field_error(
                422,
                "QP.WebhookEndpoint.UnknownEvent",
                "events are distinct names from: * " + " ".join(EVENT_TYPES),
                "$.events",
            )
        try:
            await resolve_checked(body.url, config.webhooks_allow_private)
        except UrlRefused as exc:
            raise field_error(422, "QP.WebhookEndpoint.UrlRefused", str(exc), "$.url") from None
        secret = "whsec_" + secrets.token_urlsafe(32)
        created = await control.call(
            "notify",
            {
                "action": "create",
                "partner_id": partner_id,
                "id": "whe_" + secrets.token_hex(10),
                "url": body.url,
                "events": list(body.events),
                "secret": secret,
            },
        )
        if created is None:
            raise ApiError(422, "QP.WebhookEndpoint.TooMany", "a partner has at most 16 webhook endpoints")
        return _json(201, endpoint_resource(created, secret))

    @routes.get("/v1/webhook-endpoints")
    async def list_webhook_endpoints(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        found = await control.call("notify", {"action": "list", "partner_id": partner_id})
        return _json(200, {"webhook_endpoints": [endpoint_resource(e) for e in found]})

    @routes.get("/v1/webhook-endpoints/{endpoint_id}")
    async def get_webhook_endpoint(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        found = await control.call("notify", {"action": "get", "partner_id": partner_id, "id": endpoint_id_of(request)})
        if found is None:
            raise ApiError(404, "QP.WebhookEndpoint.NotFound", "no such webhook endpoint")
        return _json(200, endpoint_resource(found))

    @routes.delete("/v1/webhook-endpoints/{endpoint_id}")
    async def delete_webhook_endpoint(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        found = await control.call(
            "notify", {"action": "delete", "partner_id": partner_id, "id": endpoint_id_of(request)}
        )
        if found is None:
            raise ApiError(404, "QP.WebhookEndpoint.NotFound", "no such webhook endpoint")
        return _json(200, {**endpoint_resource(found), "deleted": True})

    @routes.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret")
    async def rotate_webhook_secret(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        body: RotateSecretRequest = decode_body(await read_body(request) or b"{}", RotateSecretRequest)  # type: ignore[assignment]
        if not float(body.overlap_s).is_integer():
            raise field_error(400, "QP.Field.Invalid", "overlap_s must be a whole number of seconds", "$.overlap_s")
        secret = "whsec_" + secrets.token_urlsafe(32)
        found = await control.call(
            "notify",
            {
                "action": "rotate",
                "partner_id": partner_id,
                "id": endpoint_id_of(request),
                "secret": secret,
                "overlap_ms": int(body.overlap_s) * 1000,
            },
        )
        if found is None:
            raise ApiError(404, "QP.WebhookEndpoint.NotFound", "no such webhook endpoint")
        return _json(200, endpoint_resource(found, secret))

    @routes.get("/v1/events")
    async def list_events(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        limit = _page_limit(request)
        after_text = request.query.get("after")
        after = 0 if after_text is None else ascii_int(after_text)
        if after is None:
            raise field_error(400, "QP.Cursor.Invalid", "after is a cursor from this feed", "query.after")
        event_type = request.query.get("type")
        if event_type is not None and event_type not in EVENT_TYPES:
            raise field_error(400, "QP.Query.Invalid", "type is one of " + ", ".join(EVENT_TYPES), "query.type")
        rows = await control.call(
            "notify", {"action": "events", "partner_id": partner_id, "after": after, "type": event_type, "limit": limit}
        )
        last = str(rows[-1][0]) if rows else (after_text or None)
        # Bodies are stored as delivered: embedded as they are, not parsed and re-encoded.
        return _json(
            200,
            {
                "events": [msgspec.Raw(body.encode()) for _, body in rows if body is not None],
                "next_cursor": str(rows[-1][0]) if len(rows) == limit else None,
                "last_cursor": last,
            },
        )

    async def own_transfer(shard: int | None, transfer_id: str, kind: str, partner_id: str) -> dict[str, Any] | None:
        """A committed journal row of this kind and this partner's, else None (404 to the caller:
        another partner's row is "not found", never "forbidden")."""
        found = None if shard is None else await router.call(shard, "payment", {"id": transfer_id})
        if found is None or found["kind"] != kind or found["partner_id"] != partner_id:
            return None
        return dict(found)

    # -- reconciliation files --
    @routes.get("/v1/reconciliation-files/{day}")
    async def reconciliation_file(request: web.Request) -> web.StreamResponse:
        partner_id = gw.partner_of(request)
        if _DAY.fullmatch(request.match_info["day"]) is None:
            raise field_error(400, "QP.Path.Invalid", "the date is YYYY-MM-DD", "path.day")
        try:
            day = datetime.date.fromisoformat(request.match_info["day"])
        except ValueError:  # well-formed, but no such day (2026-02-30)
            raise ApiError(404, "QP.Reconciliation.NoSuchDay", "there is no such day") from None
        provisional = request.query.get("provisional", "false")
        if provisional not in ("true", "false"):
            raise field_error(400, "QP.Query.Invalid", "provisional is true or false", "query.provisional")
        now_ms = time.time_ns() // 1_000_000
        closed = recon.is_closed(day, now_ms)
        if not closed and provisional != "true":
            raise ApiError(
                404,
                "QP.Reconciliation.NotReady",
                f"{day.isoformat()} is not closed yet: its file is ready "
                f"{recon.CLOSE_GRACE_MS // 60_000} minutes after midnight UTC; "
                "?provisional=true gives the day so far",
            )
        from_ms, to_ms = recon.day_bounds(day)
        if from_ms > now_ms:
            raise ApiError(404, "QP.Reconciliation.NotReady", f"{day.isoformat()} has not begun")
        key = (partner_id, day.isoformat())
        cached = gw.recon_files.get(key)
        if (
            cached is not None
            and cached.closed == closed
            and (closed or time.monotonic() - cached.made_s < RECON_PROVISIONAL_REUSE_S)
        ):
            return recon_response(cached, partner_id, day)
        running = gw.recon_running.get(key)
        if running is None:
            running = gw.recon_running[key] = asyncio.ensure_future(
                build_recon_file(partner_id, day, closed, now_ms, from_ms, to_ms)
            )
            running.add_done_callback(lambda _: gw.recon_running.pop(key, None))
            made = await asyncio.shield(running)
            # The file's size is its cost: one token per RECON_ROWS_PER_TOKEN rows, as debt.
            gw.limiter.charge(partner_id, time.monotonic(), made.rows // RECON_ROWS_PER_TOKEN)
            gw.remember_recon(key, made)
        else:  # the same file is being made for this partner: share it
            made = await asyncio.shield(running)
        return recon_response(made, partner_id, day)

    async def build_recon_file(
        partner_id: str, day: datetime.date, closed: bool, now_ms: int, from_ms: int, to_ms: int
    ) -> ReconFile:
        report = recon.Reconciliation(partner_id, day, provisional=not closed, generated_at_ms=now_ms)
        rows = 0
        for shard in range(router.count):
            after = None
            while True:
                page = await router.call(
                    shard, "recon", {"partner_id": partner_id, "from_ms": from_ms, "to_ms": to_ms, "after": after}
                )
                rows += len(page)
                try:
                    report.add(wire for _, wire in page)
                except ValueError as exc:
                    raise ApiError(422, "QP.Reconciliation.TooLarge", str(exc)) from None
                if len(page) < 5_000:
                    break
                after = page[-1][0]
        body = report.text().encode()
        return ReconFile(body, hashlib.sha256(body).hexdigest(), closed, rows, time.monotonic())

    def recon_response(made: ReconFile, partner_id: str, day: datetime.date) -> web.Response:
        headers = {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="quickpay-{partner_id}-{day.isoformat()}.csv"',
            "Quickpay-Content-SHA256": made.sha256,
            "Quickpay-Reconciliation": "final" if made.closed else "provisional",
        }
        return web.Response(status=200, body=made.body, headers=headers)

    # -- refunds --
    @routes.post(r"/v1/quick-payments/{payment_id:(?!batch\Z)[^{}/]+}/refunds")
    async def create_refund(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        key = gw.idempotency_key(request)
        payment_id = request.match_info["payment_id"]
        body: RefundRequest = decode_body(await read_body(request) or b"{}", RefundRequest)  # type: ignore[assignment]
        shard = shard_of_payment(payment_id, router.count)
        if shard is None:
            raise ApiError(404, "QP.Payment.NotFound", "no such payment")
        amount_minor = None
        if body.amount is not None:
            # The amount's grammar depends on the payment's currency: read it first.
            found = await own_transfer(shard, payment_id, "payment", partner_id)
            if found is None:
                raise ApiError(404, "QP.Payment.NotFound", "no such payment")
            try:
                amount_minor = parse_amount(body.amount, found["currency"])
            except AmountError as error:
                # The grammar is the document's; more decimals than this payment's currency has
                # is a rule of this payment, so 422.
                status = 422 if error.code == "QP.Amount.TooManyDecimals" else 400
                raise field_error(status, error.code, error.message, "$.amount") from None
        result = await router.call(
            shard,
            "refund",
            {
                "refund_id": refund_id_for(partner_id, key, shard),
                "partner_id": partner_id,
                "payment_id": payment_id,
                "amount_minor": amount_minor,
                "reason": body.reason,
                "reference": body.reference,
                "body_hash": body_hash(payment_id, amount_minor, body.reason, body.reference),
            },
        )
        code = result["code"]
        if code in ("OK", "REPLAY"):
            return _json(201, refund_resource(result["transfer"]), _REPLAYED if code == "REPLAY" else None)
        _raise_for(code)
        raise AssertionError("unreachable")

    @routes.get("/v1/refunds/{refund_id}")
    async def get_refund(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        refund_id = request.match_info["refund_id"]
        found = await own_transfer(shard_of_refund(refund_id, router.count), refund_id, "refund", partner_id)
        if found is None:
            raise ApiError(404, "QP.Refund.NotFound", "no such refund")
        return _json(200, refund_resource(found))

    # -- quick-payments --
    async def place_payment(partner_id: str, key: str, body: QuickPaymentRequest) -> tuple[dict[str, Any], bool]:
        """Validate one payment, send it to its debtor's shard and wait for the answer (sent
        only after the shard's batch holding it committed). Returns (resource, replayed);
        a refusal raises ApiError, a shard that does not answer ShardUnavailable/Overloaded.
        Shared by the single and the batch endpoint."""
        currency = gw.currency(body.currency)
        amount_minor = gw.amount(body.amount, currency, "$.amount")
        shard = router.shard_of(body.agreement_id)
        creditor = body.creditor_account
        if is_striped(creditor):
            creditor_shard = shard  # the local stripe takes the credit
            if not creditor.startswith("set_"):
                _raise_for("CREDITOR_NOT_FOUND")
        else:
            creditor_shard = router.shard_of(creditor)
            if creditor_shard != shard:
                found = await router.lookup_account(creditor)
                if found is None or found["kind"] != "customer":
                    _raise_for("CREDITOR_NOT_FOUND")
                elif found["currency"] != currency:
                    _raise_for("CURRENCY_MISMATCH")
        risk = body.risk or None
        device_id = risk.device_id if risk else None
        ip = risk.ip if risk else None
        result = await router.call(
            shard,
            "pay",
            {
                "payment_id": payment_id_for(partner_id, key, shard),
                "partner_id": partner_id,
                "agreement_id": body.agreement_id,
                "amount_minor": amount_minor,
                "currency": currency,
                "creditor_account": creditor,
                "creditor_shard": creditor_shard,
                "reference": body.reference,
                "device_id": device_id,
                "ip": ip,
                "body_hash": body_hash(
                    body.agreement_id, amount_minor, currency, creditor, body.reference, device_id, ip
                ),
            },
        )
        code = result["code"]
        if code == "OK":
            return payment_resource(result["transfer"]), False
        if code == "REPLAY":
            return payment_resource(result["transfer"]), True
        _raise_for(code)
        raise AssertionError("unreachable")

    @routes.post("/v1/quick-payments")
    async def create_payment(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        key = gw.idempotency_key(request)
        body: QuickPaymentRequest = decode_body(await read_body(request), QuickPaymentRequest)  # type: ignore[assignment]
        resource, replayed = await place_payment(partner_id, key, body)
        return _json(201, resource, _REPLAYED if replayed else None)

    async def batch_item(partner_id: str, index: int, raw: msgspec.Raw, interaction_id: str) -> dict[str, Any]:
        """One item's result; never raises (one bad item fails alone)."""
        try:
            item: QuickPaymentBatchItem = decode_body(raw, QuickPaymentBatchItem)  # type: ignore[assignment]
            resource, replayed = await place_payment(partner_id, item.idempotency_key, item)
            return {"status": 201, "payment": resource, "replayed": replayed}
        except ApiError as exc:
            error = exc
        except (ShardUnavailable, ShardOverloaded) as exc:
            error = _unavailable(f"the ledger did not answer ({exc}); retry with the same idempotency_key")
        except ShardError as exc:
            error = _shard_error(exc, interaction_id)
        except Exception as exc:  # a bug: this item's 500, logged; the others stand
            error = _internal(exc, interaction_id)
        return {
            "status": error.status,
            "error": {
                "code": error.code,
                "message": error.message,
                "errors": [{**e, "path": _item_path(index, e["path"])} for e in error.errors],
            },
        }

    @routes.post("/v1/quick-payments/batch")
    async def create_payment_batch(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        envelope: QuickPaymentBatchRequest = decode_body(  # type: ignore[assignment]
            await read_batch_body(request), QuickPaymentBatchRequest
        )
        items = envelope.payments
        items_max = config.batch_items_max
        if len(items) > items_max:
            raise field_error(
                400,
                "QP.Batch.TooManyItems",
                f"a batch holds 1-{items_max} payments; this one holds {len(items)}",
                "$.payments",
            )
        for index, raw in enumerate(items):
            if bytes(memoryview(raw)[:1]) != b"{":
                raise field_error(
                    400, "QP.Field.Invalid", "each item of payments must be a JSON object", f"$.payments[{index}]"
                )
        interaction_id = request.headers.get("x-fapi-interaction-id", "-")[:INTERACTION_ID_MAX]
        # One token per payment: partner_of took the first; items past the partner's tokens
        # are refused one by one (429 item errors, in order), the others proceed.
        granted = 1 + gw.take_items(request, partner_id, len(items) - 1)
        retry_after_s = request[RATE_VERDICT].retry_after_s if granted < len(items) else 0
        # All items are sent in the same event-loop tick where they need no creditor lookup,
        # so the shard clients put them in one frame per shard and the shards decide and
        # commit them in their group commits. Each answer comes after its commit: the 200
        # leaves only when every item is durable or has failed on its own.
        results = await asyncio.gather(
            *(batch_item(partner_id, index, raw, interaction_id) for index, raw in enumerate(items[:granted]))
        )
        if granted == len(items):
            return _json(200, {"results": results})
        results += [_rate_limited_item(index, retry_after_s) for index in range(granted, len(items))]
        return _json(200, {"results": results}, {"Retry-After": str(retry_after_s)})

    # Not "batch": that path is the batch endpoint (POST only), and its Allow header must
    # not advertise this GET (no payment id is "batch", ids are pay_...).
    @routes.get(r"/v1/quick-payments/{payment_id:(?!batch\Z)[^{}/]+}")
    async def get_payment(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        payment_id = request.match_info["payment_id"]
        found = await own_transfer(shard_of_payment(payment_id, router.count), payment_id, "payment", partner_id)
        if found is None:
            raise ApiError(404, "QP.Payment.NotFound", "no such payment")
        return _json(200, payment_resource(found))

    # -- accounts --
    async def account_shards(account_id: str, partner_id: str | None) -> tuple[list[int], str | None]:
        """Shards to ask about an account, and the partner filter the shard applies."""
        if _ACCOUNT_ID.fullmatch(account_id) is None:
            raise ApiError(404, "QP.Account.NotFound", "no such account")
        if is_striped(account_id):
            if partner_id is not None and account_id != settlement_account_for(partner_id):
                raise ApiError(404, "QP.Account.NotFound", "no such account")
            return list(range(router.count)), None
        return [router.shard_of(account_id)], partner_id

    async def balance_of(account_id: str, partner_id: str | None) -> web.Response:
        shards, filter_partner = await account_shards(account_id, partner_id)
        answers = [await router.call(s, "balance", {"id": account_id, "partner_id": filter_partner}) for s in shards]
        if any(a is None for a in answers):
            raise ApiError(404, "QP.Account.NotFound", "no such account")
        currency = answers[0]["currency"]
        total = sum(a["balance_minor"] for a in answers)
        return _json(
            200,
            {
                "account_id": account_id,
                "kind": answers[0]["kind"],
                "currency": currency,
                "balance": format_amount(total, currency),
                "stripes": len(answers),
            },
        )

    @routes.get("/v1/accounts/{account_id}/balance")
    async def get_balance(request: web.Request) -> web.Response:
        return await balance_of(request.match_info["account_id"], gw.partner_of(request))

    @routes.get("/v1/accounts/{account_id}/transactions")
    async def list_transactions(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        account_id = request.match_info["account_id"]
        limit = _page_limit(request)
        shards, filter_partner = await account_shards(account_id, partner_id)
        cursor = _decode_cursor(request.query.get("cursor"), shards)
        answers: dict[int, list[dict[str, Any]]] = {}
        for s in shards:
            answer = await router.call(
                s,
                "transactions",
                {"id": account_id, "partner_id": filter_partner, "limit": limit + 1, "before_seq": cursor.get(s)},
            )
            if answer is None:
                raise ApiError(404, "QP.Account.NotFound", "no such account")
            answers[s] = answer
        # Each shard's rows come in journal order (seq descending), merged across stripes
        # by time; the cursor keeps the seq of the last row emitted from each shard
        # (gateway/paging.py says why sorting by time and paging by seq skipped rows).
        page, next_cursor = merge_page(answers, cursor, limit)
        items = rendered(
            "transfers",
            [t for _, t in page],
            lambda t: {**transfer_resource(t), "direction": "debit" if t["debit_account"] == account_id else "credit"},
        )
        return _json(
            200,
            {
                "account_id": account_id,
                "transactions": items,
                "next_cursor": _encode_cursor(next_cursor) if next_cursor is not None else None,
            },
        )

    # -- admin --
    @routes.post("/admin/v1/partners")
    async def create_partner(request: web.Request) -> web.Response:
        gw.require_admin(request)
        body: PartnerRequest = decode_body(await read_body(request), PartnerRequest)  # type: ignore[assignment]
        currency = gw.currency(body.currency)
        partner_id = new_partner_id()
        secret = new_secret()
        settlement = settlement_account_for(partner_id)
        await router.broadcast(
            "open_accounts", [{"id": settlement, "kind": "settlement", "currency": currency, "partner_id": partner_id}]
        )
        await router.client_for(partner_id).call(
            "create_partner",
            {
                "id": partner_id,
                "name": body.name,
                "secret_sha256": hash_secret(secret),
                "settlement_account": settlement,
            },
        )
        return _json(
            201,
            {
                "partner_id": partner_id,
                "client_id": partner_id,
                "client_secret": secret,
                "settlement_account": settlement,
                "currency": currency,
            },
        )

    @routes.put("/admin/v1/partners/{partner_id}/rate-limit")
    async def set_rate_limit(request: web.Request) -> web.Response:
        gw.require_admin(request)
        partner_id = request.match_info["partner_id"]
        body: RateLimitRequest = decode_body(await read_body(request), RateLimitRequest)  # type: ignore[assignment]
        for name in ("requests_per_s", "burst"):
            if not float(getattr(body, name)).is_integer():
                raise field_error(400, "QP.Field.Invalid", f"{name} must be a whole number", f"$.{name}")
        rate, burst = int(body.requests_per_s), int(body.burst)
        if _PARTNER_ID.fullmatch(partner_id) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        client = router.client_for(partner_id)
        if await client.call("partner", {"id": partner_id}) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        await client.call("partner_rate_limit", {"id": partner_id, "requests_per_s": rate, "burst": burst})
        # Every gateway process re-reads it within RATE_LIMIT_OVERRIDE_TTL_S; this one at once.
        gw.rate_overrides[partner_id] = (RateLimit(rate, burst), time.monotonic())
        return _json(
            200,
            {
                "partner_id": partner_id,
                "requests_per_s": rate,
                "burst": burst,
                "applies_within_s": RATE_LIMIT_OVERRIDE_TTL_S,
            },
        )

    # -- admin: cutting a partner off (ShardState.partner_action; audited, in the partner's feed) --
    def admin_partner_id(request: web.Request) -> str:
        partner_id = request.match_info["partner_id"]
        if _PARTNER_ID.fullmatch(partner_id) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        return partner_id

    def cutoff_resource(partner_id: str, status: dict[str, Any]) -> dict[str, Any]:
        def at(name: str) -> str | None:
            value = status.get(name)
            return _iso(value) if value is not None else None

        return {
            "partner_id": partner_id,
            "disabled": status.get("disabled_at_ms") is not None,
            "disabled_at": at("disabled_at_ms"),
            "tokens_valid_after": at("tokens_valid_after_ms"),
            "previous_secret_valid_until": at("previous_secret_until_ms"),
            "applies_within_s": CUTOFF_APPLIES_WITHIN_S,
        }

    async def partner_action(request: web.Request, action: str) -> web.Response:
        gw.require_admin(request)
        partner_id = admin_partner_id(request)
        raw = await read_body(request)
        schema = PartnerSecretRotationRequest if action == "rotate_secret" else PartnerActionRequest
        body: Any = decode_body(raw or b"{}", schema)
        args: dict[str, Any] = {"id": partner_id, "action": action, "actor": body.actor}
        if body.reason is not None:
            args["reason"] = body.reason
        secret = None
        if action == "rotate_secret":
            if not float(body.overlap_s).is_integer():
                raise field_error(400, "QP.Field.Invalid", "overlap_s must be a whole number", "$.overlap_s")
            secret = new_secret()
            args.update(secret_sha256=hash_secret(secret), overlap_ms=int(body.overlap_s) * 1000)
        answer = await router.client_for(partner_id).call("partner_action", args)
        if answer["code"] not in ("OK", "SAME"):
            _raise_for(answer["code"])  # PARTNER_NOT_FOUND: 404 QP.Partner.NotFound
        status = answer["partner"]
        gw.apply_cutoff(partner_id, status)
        result = {**cutoff_resource(partner_id, status), "action": action, "changed": answer["code"] == "OK"}
        if secret is not None:
            result["client_secret"] = secret
        return _json(200, result, headers={"Cache-Control": "no-store"} if secret is not None else None)

    @routes.get("/admin/v1/partners/{partner_id}")
    async def get_partner(request: web.Request) -> web.Response:
        gw.require_admin(request)
        partner_id = admin_partner_id(request)
        found = await router.client_for(partner_id).call("partner", {"id": partner_id})
        if found is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        now_ms = int(time.time() * 1000)
        until = found.get("previous_secret_until_ms")
        overlapping = found.get("previous_secret_sha256") is not None and until is not None and now_ms < until
        resource = cutoff_resource(partner_id, {**found, "previous_secret_until_ms": until if overlapping else None})
        return _json(
            200,
            {
                **resource,
                "name": found["name"],
                "settlement_account": found["settlement_account"],
                "created_at": _iso(found["created_at_ms"]),
            },
        )

    @routes.post("/admin/v1/partners/{partner_id}/disable")
    async def disable_partner(request: web.Request) -> web.Response:
        return await partner_action(request, "disable")

    @routes.post("/admin/v1/partners/{partner_id}/enable")
    async def enable_partner(request: web.Request) -> web.Response:
        return await partner_action(request, "enable")

    @routes.post("/admin/v1/partners/{partner_id}/rotate-secret")
    async def rotate_partner_secret(request: web.Request) -> web.Response:
        return await partner_action(request, "rotate_secret")

    @routes.post("/admin/v1/partners/{partner_id}/retire-secret")
    async def retire_partner_secret(request: web.Request) -> web.Response:
        return await partner_action(request, "retire_secret")

    @routes.post("/admin/v1/partners/{partner_id}/revoke-tokens")
    async def revoke_partner_tokens(request: web.Request) -> web.Response:
        return await partner_action(request, "revoke_tokens")

    @routes.get("/admin/v1/partners/{partner_id}/audit")
    async def partner_audit(request: web.Request) -> web.Response:
        gw.require_admin(request)
        partner_id = admin_partner_id(request)
        after_text = request.query.get("after", "0")
        if _ASCII_DIGITS.fullmatch(after_text) is None:
            raise field_error(400, "QP.Query.Invalid", "after is the next_cursor of an earlier page", "query.after")
        limit = _page_limit(request)
        client = router.client_for(partner_id)
        if await client.call("partner", {"id": partner_id}) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        rows = await client.call("partner_audit", {"id": partner_id, "after": int(after_text), "limit": limit})
        entries = [
            {
                "seq": r["seq"],
                "action": r["action"],
                "actor": r["actor"],
                "at": _iso(r["at_ms"]),
                "details": r["details"],
            }
            for r in rows
        ]
        return _json(
            200,
            {
                "partner_id": partner_id,
                "entries": entries,
                "next_cursor": str(rows[-1]["seq"]) if len(rows) == limit else None,
            },
        )

    @routes.post("/admin/v1/accounts")
    async def open_account(request: web.Request) -> web.Response:
        gw.require_admin(request)
        raw = await read_body(request)
        body: AccountRequest = decode_body(raw or b"{}", AccountRequest)  # type: ignore[assignment]
        currency = gw.currency(body.currency)
        account_id = new_account_id()
        await router.client_for(account_id).call("open_accounts", [{"id": account_id, "currency": currency}])
        return _json(201, {"account_id": account_id, "currency": currency, "balance": format_amount(0, currency)})

    @routes.post("/admin/v1/accounts/{account_id}/fundings")
    async def fund(request: web.Request) -> web.Response:
        gw.require_admin(request)
        key = gw.idempotency_key(request)
        account_id = request.match_info["account_id"]
        body: FundingRequest = decode_body(await read_body(request), FundingRequest)  # type: ignore[assignment]
        currency = gw.currency(body.currency)
        amount_minor = gw.amount(body.amount, currency, "$.amount")
        if is_striped(account_id) or _ACCOUNT_ID.fullmatch(account_id) is None:
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        shard = router.shard_of(account_id)
        result = await router.call(
            shard,
            "fund",
            {
                "transfer_id": payment_id_for("admin-funding", key, shard),
                "account_id": account_id,
                "amount_minor": amount_minor,
                "currency": currency,
                "reference": body.reference,
                "body_hash": body_hash(account_id, amount_minor, currency, body.reference),
            },
        )
        code = result["code"]
        if code in ("OK", "REPLAY"):
            return _json(201, transfer_resource(result["transfer"]))
        if code == "ACCOUNT_NOT_FOUND":
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        _raise_for(code)
        raise AssertionError("unreachable")

    @routes.get("/admin/v1/accounts/{account_id}/balance")
    async def admin_balance(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return await balance_of(request.match_info["account_id"], None)

    # -- admin: fraud rules and lists --
    # Rule changes are all-or-nothing across shards (stage everywhere, then activate,
    # undo on failure) and idempotent by content hash: see gateway/fraud_rollout.py.
    rollout = FraudRollout(router.clients)

    def fraud_author(request: web.Request) -> str:
        author = request.query.get("author", "admin")
        if _AUTHOR.fullmatch(author) is None:
            raise field_error(
                400, "QP.Query.Invalid", "author must be 1-100 characters without control characters", "query.author"
            )
        return author

    @routes.get("/admin/v1/fraud/rules")
    async def get_rules(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return _json(200, await rollout.read_rules())

    @routes.post("/admin/v1/fraud/rules")
    async def propose_rules(request: web.Request) -> web.Response:
        gw.require_admin(request)
        body: RulesRequest = decode_body(await read_body(request), RulesRequest)  # type: ignore[assignment]
        result = await rollout.propose(body.text, body.author, body.filename, body.activate)
        return _json(201, result)

    @routes.post("/admin/v1/fraud/rules/rollback")
    async def rollback_rules(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return _json(200, await rollout.rollback(fraud_author(request)))

    @routes.post("/admin/v1/fraud/rules/{version}/activate")
    async def activate_rules(request: web.Request) -> web.Response:
        gw.require_admin(request)
        version = request.match_info["version"].lower()
        if not VERSION_RE.fullmatch(version):
            raise ApiError(
                404,
                "QP.Rules.NotFound",
                "no such rule set version (a version is its sha256 id, or 8 or more of its first hex digits)",
            )
        return _json(200, await rollout.activate(version, fraud_author(request)))

    @routes.get("/admin/v1/fraud/lists")
    async def get_lists(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return _json(200, await rollout.read_lists())

    @routes.post("/admin/v1/fraud/lists/{name}")
    async def change_list(request: web.Request) -> web.Response:
        gw.require_admin(request)
        name = request.match_info["name"]
        if not RULE_IDENTIFIER.fullmatch(name):
            raise field_error(
                400, "QP.Path.Invalid", "a list name is an identifier: [A-Za-z_][A-Za-z0-9_]{0,63}", "path.name"
            )
        body: ListChangeRequest = decode_body(await read_body(request), ListChangeRequest)  # type: ignore[assignment]
        result: Any = None
        if body.add:
            result = await rollout.change_list("list_add", name, body.add)
        if body.remove:
            result = await rollout.change_list("list_remove", name, body.remove)
        if result is None:
            result = await rollout.read_lists()
        return _json(200, result)

    @routes.get("/admin/v1/fraud/decisions")
    async def list_decisions(request: web.Request) -> web.Response:
        gw.require_admin(request)
        decision = request.query.get("decision")
        if decision is not None and decision not in ("allow", "review", "block"):
            raise field_error(400, "QP.Query.Invalid", "decision must be allow, review or block", "query.decision")
        rule_id = request.query.get("rule_id")
        if rule_id is not None and not RULE_IDENTIFIER.fullmatch(rule_id):
            raise field_error(
                400, "QP.Query.Invalid", "rule_id is an identifier: [A-Za-z_][A-Za-z0-9_]{0,63}", "query.rule_id"
            )
        limit = _page_limit(request)
        answers = await router.broadcast("decisions", {"decision": decision, "rule_id": rule_id, "limit": limit})
        rows = sorted((t for answer in answers for t in answer), key=lambda t: t["created_at_ms"], reverse=True)
        return _json(200, {"payments": rendered("transfers", rows[:limit], payment_resource)})

    @routes.get("/admin/v1/fraud/alerts")
    async def list_alerts(request: web.Request) -> web.Response:
        gw.require_admin(request)
        answers = await router.broadcast("alerts", {"limit": 100})
        alerts = sorted((a for answer in answers for a in answer), key=lambda a: a["at_ms"], reverse=True)
        return _json(200, {"alerts": [{**a, "at": _iso(a["at_ms"])} for a in alerts[:100]]})

    app.add_routes(routes)

    async def start_cutoff_refresh(app: web.Application) -> None:
        # The first read before serving (bounded: shards that are not up yet are read by the loop).
        try:
            await asyncio.wait_for(gw.refresh_cutoffs(), CUTOFF_FIRST_READ_S)
        except TimeoutError:
            log.warning("serving before the partner cut-off markers were read (/readyz says not ready)")
        app[CUTOFF_TASK_KEY] = asyncio.get_running_loop().create_task(gw.run_cutoff_refresh())

    async def stop_cutoff_refresh(app: web.Application) -> None:
        task = app.get(CUTOFF_TASK_KEY)
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def close_router(app: web.Application) -> None:
        await router.close()

    app.on_startup.append(start_cutoff_refresh)
    app.on_cleanup.append(stop_cutoff_refresh)
    app.on_cleanup.append(close_router)
    return app
