"""The admin API: partners (creation, rate limits, cut-offs, audit), customer accounts
(opening, funding, balances), the reconciliation status of the last days, and the shards'
PostgreSQL members as Patroni sees them."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from kernel.ids import is_striped, new_account_id, new_partner_id, payment_id_for, settlement_account_for
from kernel.money import format_amount
from kernel.resources import _iso, transfer_resource

from ..auth import hash_secret, new_secret
from ..errors import ApiError, field_error
from ..patroni import HaView
from ..ratelimit import RateLimit
from ..recon_status import ReconStatus
from ..requests import _ACCOUNT_ID, _ASCII_DIGITS, _PARTNER_ID, _page_limit, body_hash, read_body
from ..responses import _json, _raise_for
from ..schemas import (
    AccountRequest,
    FundingRequest,
    PartnerActionRequest,
    PartnerRequest,
    PartnerSecretRotationRequest,
    RateLimitRequest,
    decode_body,
)
from ..state import CUTOFF_APPLIES_WITHIN_S, RATE_LIMIT_OVERRIDE_TTL_S, Gateway
from .accounts import balance_of


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/admin/v1/partners, /admin/v1/accounts, /admin/v1/reconciliation and /admin/v1/ha."""
    router = gw.router

    async def read_recon_day(from_ms: int, to_ms: int) -> list[list[dict[str, Any]]]:
        return await router.broadcast("recon_summary", {"from_ms": from_ms, "to_ms": to_ms})

    recon_status = ReconStatus(read_recon_day)

    ha_view = HaView(gw.config.supervisor_status, router.count, members_named=gw.config.patroni_members)

    @routes.get("/admin/v1/ha")
    async def ha_members(request: web.Request) -> web.Response:
        """Every shard's PostgreSQL members with role, state, lag and timeline (gateway/patroni.py:
        Patroni's GET /cluster under `up --ha`, bounded and shared; "single" otherwise)."""
        gw.require_admin(request)
        return _json(200, await ha_view.view())

    @routes.get("/admin/v1/reconciliation")
    async def reconciliation_status(request: web.Request) -> web.Response:
        """The last days: closed or open, and what their files hold over every partner
        (gateway/recon_status.py: read once per closed day, seldom for the open one)."""
        gw.require_admin(request)
        return _json(200, await recon_status.status())

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

    @routes.get("/admin/v1/partners")
    async def list_partners(request: web.Request) -> web.Response:
        """Every partner, by id, a page at a time: one partners_page read per shard (ledger/reads.py,
        from memory), merged here; pending agreements live on the debtors' shards, so each
        partner's count is the sum of every shard's."""
        gw.require_admin(request)
        after = request.query.get("cursor", "")
        if "cursor" in request.query and _PARTNER_ID.fullmatch(after) is None:  # empty too, as documented
            raise field_error(400, "QP.Query.Invalid", "cursor is the next_cursor of an earlier page", "query.cursor")
        limit = _page_limit(request)
        answers = await router.broadcast("partners_page", {"after": after or None, "limit": limit})
        rows = sorted((row for answer in answers for row in answer["partners"]), key=lambda row: row["id"])[:limit]
        pending: dict[str, int] = {}
        for answer in answers:
            for partner_id, count in answer["pending"].items():
                pending[partner_id] = pending.get(partner_id, 0) + count
        default = (gw.config.rate_limit_rps, gw.config.rate_limit_burst)
        partners = [
            {
                "partner_id": row["id"],
                "name": row["name"],
                "created_at": _iso(row["created_at_ms"]),
                "disabled": row["disabled_at_ms"] is not None,
                "rate_limit": {
                    "requests_per_s": int(row["rate_limit_rps"] or default[0]),
                    "burst": int(row["rate_limit_burst"] or default[1]),
                    "override": row["rate_limit_rps"] is not None,
                },
                "pending_agreements": pending.get(row["id"], 0),
            }
            for row in rows
        ]
        return _json(200, {"partners": partners, "next_cursor": rows[-1]["id"] if len(rows) == limit else None})

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
        await router.call(
            router.shard_of_account(account_id), "open_accounts", [{"id": account_id, "currency": currency}]
        )
        opened = {"account_id": account_id, "currency": currency, "balance": format_amount(0, currency)}
        if body.phone is not None:
            # Kept in the control database with the consent state (gateway/web/customer.py), not in
            # the shard's accounts table: only the customer's pages read it, never a payment.
            await router.clients[0].call(
                "consent", {"action": "phone_set", "account_id": account_id, "phone": body.phone}
            )
            opened["phone"] = body.phone
        return _json(201, opened)

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
        shard = router.shard_of_account(account_id)
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
        return await balance_of(router, request.match_info["account_id"], None)
