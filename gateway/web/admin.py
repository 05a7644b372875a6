"""The admin API of customer consent: a partner's exact redirect URIs, a customer account's
phone, and the simulated SMS outbox (what the bank "sent"; `quickpay sms tail` reads it)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kernel.ids import is_striped
from kernel.limits import REDIRECT_URIS_MAX
from kernel.resources import _iso

from ..errors import ApiError, field_error
from ..requests import _ACCOUNT_ID, _ASCII_DIGITS, _PARTNER_ID, _page_limit, read_body
from ..responses import _json
from ..schemas import PhoneRequest, RedirectUrisRequest, decode_body
from ..state import Gateway
from .consent import check_redirect_uri
from .customer import Customers

__all__ = ["add_routes"]


def add_routes(routes: web.RouteTableDef, gw: Gateway, customers: Customers) -> None:
    router = gw.router
    control = customers.control

    async def existing_partner(request: web.Request) -> str:
        partner_id = request.match_info["partner_id"]
        if _PARTNER_ID.fullmatch(partner_id) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        if await router.client_for(partner_id).call("partner", {"id": partner_id}) is None:
            raise ApiError(404, "QP.Partner.NotFound", "no such partner")
        return partner_id

    @routes.put("/admin/v1/partners/{partner_id}/redirect-uris")
    async def set_redirect_uris(request: web.Request) -> web.Response:
        gw.require_admin(request)
        body: RedirectUrisRequest = decode_body(await read_body(request), RedirectUrisRequest)  # type: ignore[assignment]
        partner_id = await existing_partner(request)
        for i, uri in enumerate(body.redirect_uris):
            check_redirect_uri(uri, f"$.redirect_uris[{i}]")
        if len(set(body.redirect_uris)) > REDIRECT_URIS_MAX:
            raise field_error(400, "QP.Field.Invalid", f"at most {REDIRECT_URIS_MAX} redirect URIs", "$.redirect_uris")
        uris = await control("redirect_uris_set", partner_id=partner_id, uris=sorted(set(body.redirect_uris)))
        return _json(200, {"partner_id": partner_id, "redirect_uris": uris})

    @routes.get("/admin/v1/partners/{partner_id}/redirect-uris")
    async def get_redirect_uris(request: web.Request) -> web.Response:
        gw.require_admin(request)
        partner_id = await existing_partner(request)
        return _json(
            200, {"partner_id": partner_id, "redirect_uris": await control("redirect_uris", partner_id=partner_id)}
        )

    @routes.put("/admin/v1/accounts/{account_id}/phone")
    async def set_phone(request: web.Request) -> web.Response:
        gw.require_admin(request)
        body: PhoneRequest = decode_body(await read_body(request), PhoneRequest)  # type: ignore[assignment]
        account_id = request.match_info["account_id"]
        if _ACCOUNT_ID.fullmatch(account_id) is None or is_striped(account_id):
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        if await router.client_for_account(account_id).call("lookup_account", {"id": account_id}) is None:
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        await control("phone_set", account_id=account_id, phone=body.phone)
        return _json(200, {"account_id": account_id, "phone": body.phone})

    @routes.get("/admin/v1/sms")
    async def sms_outbox(request: web.Request) -> web.Response:
        """The simulated SMS provider's outbox, oldest first after `after` (a seq)."""
        gw.require_admin(request)
        args: dict[str, Any] = {}
        after = request.query.get("after")
        if after is not None:
            if _ASCII_DIGITS.fullmatch(after) is None:
                raise field_error(400, "QP.Query.Invalid", "after is the next_cursor of an earlier page", "query.after")
            args["after"] = int(after)
        args["limit"] = _page_limit(request)
        for name in ("phone", "account_id"):
            text = request.query.get(name)
            if text is not None:
                if len(text) > 64:
                    raise field_error(400, "QP.Query.Invalid", f"{name} is too long", f"query.{name}")
                args[name] = text
        rows = await control("sms_list", **args)
        messages = [
            {
                "seq": r["seq"],
                "phone": r["phone"],
                "account_id": r["account_id"],
                "text": r["body"],
                "at": _iso(r["created_at_ms"]),
            }
            for r in rows
        ]
        return _json(
            200,
            {"messages": messages, "next_cursor": str(rows[-1]["seq"]) if rows else request.query.get("after", "0")},
        )
