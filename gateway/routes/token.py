"""The OAuth2 client-credentials token endpoint."""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec
from aiohttp import web

from ..auth import client_secret_valid
from ..errors import ApiError, field_error
from ..requests import _PARTNER_ID, BODY_MAX_BYTES, is_printable_ascii, read_body
from ..responses import _json
from ..state import Gateway


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """POST /oauth2/token."""
    router = gw.router

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
