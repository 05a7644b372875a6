"""Accounts as a partner sees them: balances and transactions (the striped settlement account
across every shard)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kernel.ids import is_striped, settlement_account_for
from kernel.money import format_amount
from kernel.resources import transfer_resource

from ..errors import ApiError
from ..paging import merge_page
from ..requests import _ACCOUNT_ID, _decode_cursor, _encode_cursor, _page_limit
from ..responses import _json, rendered
from ..shards import ShardRouter
from ..state import Gateway


# -- accounts --
async def account_shards(router: ShardRouter, account_id: str, partner_id: str | None) -> tuple[list[int], str | None]:
    """Shards to ask about an account, and the partner filter the shard applies."""
    if _ACCOUNT_ID.fullmatch(account_id) is None:
        raise ApiError(404, "QP.Account.NotFound", "no such account")
    if is_striped(account_id):
        if partner_id is not None and account_id != settlement_account_for(partner_id):
            raise ApiError(404, "QP.Account.NotFound", "no such account")
        return list(range(router.count)), None
    return [router.shard_of_account(account_id)], partner_id


async def balance_of(router: ShardRouter, account_id: str, partner_id: str | None) -> web.Response:
    shards, filter_partner = await account_shards(router, account_id, partner_id)
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


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """GET /v1/accounts/{account_id}/balance and /transactions."""
    router = gw.router

    @routes.get("/v1/accounts/{account_id}/balance")
    async def get_balance(request: web.Request) -> web.Response:
        return await balance_of(router, request.match_info["account_id"], gw.partner_of(request))

    @routes.get("/v1/accounts/{account_id}/transactions")
    async def list_transactions(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        account_id = request.match_info["account_id"]
        limit = _page_limit(request)
        shards, filter_partner = await account_shards(router, account_id, partner_id)
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
