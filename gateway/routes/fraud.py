"""The admin API of the fraud filter: rule sets, lists, decisions and alerts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kernel.resources import _iso, payment_resource

from ..errors import ApiError, field_error
from ..fraud_rollout import VERSION_RE, FraudRollout
from ..requests import _AUTHOR, RULE_IDENTIFIER, _page_limit, read_body
from ..responses import _json, rendered
from ..schemas import ListChangeRequest, RulesRequest, decode_body
from ..state import Gateway


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/admin/v1/fraud."""
    router = gw.router

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
