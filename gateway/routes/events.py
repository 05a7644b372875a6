"""Webhook endpoints and the events feed (shard 0's database holds them: notify/)."""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from aiohttp import web

from kernel.resources import _iso
from notify.events import EVENT_TYPES
from notify.ssrf import UrlRefused, resolve_checked

from ..errors import ApiError, field_error
from ..requests import _WEBHOOK_ID, _page_limit, ascii_int, read_body
from ..responses import _json
from ..schemas import RotateSecretRequest, WebhookEndpointRequest, decode_body
from ..state import Gateway


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/v1/webhook-endpoints and /v1/events."""
    router = gw.router
    config = gw.config

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
