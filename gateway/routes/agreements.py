"""Agreements: the partner's side (create, read, list, revoke) and the customer's side through the
bank's channel (the admin API)."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from aiohttp import web

from kernel.ids import is_striped, new_agreement_id
from kernel.resources import agreement_resource
from kernel.timestamps import OutOfRange, utc_ms

from ..errors import ApiError, field_error
from ..requests import (
    _ACCOUNT_ID,
    _AGREEMENT_ID,
    _decode_agreement_cursor,
    _encode_agreement_cursor,
    _page_limit,
    read_body,
)
from ..responses import _json, _raise_for, rendered
from ..schemas import AgreementRequest, AuthorisationLinkRequest, decode_body
from ..state import Gateway
from ..web.consent import check_registered, new_authorisation_url

CUSTOMER_ACTIONS = ("authorise", "reject", "suspend", "resume", "revoke")
AGREEMENT_STATUSES = ("AwaitingAuthorisation", "Authorised", "Rejected", "Suspended", "Revoked", "Expired")


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/v1/agreements and the admin agreement routes."""
    router = gw.router

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
        await check_registered(router, partner_id, body.redirect_uri, body.state)
        agreement_id = new_agreement_id(body.debtor_account, router.count)
        result = await router.call(
            router.shard_of_account(body.debtor_account),
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
        resource = agreement_resource(result["agreement"])
        if body.redirect_uri is not None:
            # The customer's consent page (gateway/web/consent.py); the admin authorise call stays
            # as the bank's back-office path.
            resource["authorisation_url"] = await new_authorisation_url(
                request, router, result["agreement"], body.redirect_uri, body.state
            )
        return _json(201, resource)

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

    @routes.post("/v1/agreements/{agreement_id}/authorisation-url")
    async def new_agreement_link(request: web.Request) -> web.Response:
        """Another link to the consent page for an agreement still waiting (the last one expired)."""
        partner_id = gw.partner_of(request)
        body: AuthorisationLinkRequest = decode_body(await read_body(request), AuthorisationLinkRequest)  # type: ignore[assignment]
        agreement_id = request.match_info["agreement_id"]
        found = await agreement_shard(agreement_id).call("agreement", {"id": agreement_id, "partner_id": partner_id})
        if found is None:
            raise ApiError(404, "QP.Agreement.NotFound", "no such agreement")
        if found["status"] != "AwaitingAuthorisation":
            raise field_error(
                409, "QP.Agreement.InvalidTransition", f"the agreement is {found['status']}, not awaiting", "$.status"
            )
        await check_registered(router, partner_id, body.redirect_uri, body.state)
        url = await new_authorisation_url(request, router, found, body.redirect_uri, body.state)
        return _json(201, {"agreement_id": agreement_id, "authorisation_url": url})

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

    # The customer's side, through the bank's back office (the admin API). Customers decide
    # on the bank's own pages (gateway/web/: the consent page, the portal), which change an
    # agreement through the same shard command; this path stays for the bank's staff.
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
        shard = router.shard_of_account(account_id)
        if await router.call(shard, "lookup_account", {"id": account_id}) is None:
            raise ApiError(404, "QP.Account.NotFound", "no such customer account")
        return await list_agreements(request, [shard], {"debtor_account": account_id})
