"""The customer's portal (`/portal`): sign in with the account id and a one-time code sent to
the account's phone (the consent page's codes, scope "portal"), then see every agreement over
the account, whichever partner holds it (status, limits, what was spent in the current period,
the last payments), and suspend, resume or revoke each (or decline one still waiting).

A change is the same `agreement_action` shard command (actor customer) as the admin call and
the consent page, decided by the shard that decides payments, so the next payment already
sees it. Sessions are rows of the control database (their cookie's SHA-256), PORTAL_SESSION_TTL_S.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from kernel.ids import is_striped
from kernel.money import format_amount

from ..state import Gateway
from .customer import Customers, mask_account, mask_phone
from .html import SECURITY_HEADERS, check_csrf, csrf_token, page, read_form, set_cookie
from .words import describe, when

__all__ = ["PORTAL_SESSION_TTL_S", "add_routes"]

PORTAL_SESSION_TTL_S = 15 * 60
SESSION_COOKIE = "qp_portal"
SCOPE = "portal"
AGREEMENTS_SHOWN_MAX = 50
PAYMENTS_SHOWN_MAX = 10
_ACCOUNT = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_CODE = re.compile(r"[0-9]{6}")
# What the customer may do from each status (ledger/agreements.py decides; these are the buttons).
ACTIONS_BY_STATUS = {
    "Authorised": ("suspend", "revoke"),
    "Suspended": ("resume", "revoke"),
    "AwaitingAuthorisation": ("reject",),
}


def _see_other(location: str) -> web.Response:
    # Returned, not raised: the API middleware answers raised HTTP exceptions in the error shape.
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


def _message(request: web.Request, status: int, code: str, en: str, zh: str) -> web.Response:
    return page(request, "message.html", status, code=code, text_en=en, text_zh=zh)


def add_routes(routes: web.RouteTableDef, gw: Gateway, customers: Customers) -> None:
    router = gw.router

    async def signed_in(request: web.Request) -> str | None:
        return await customers.session_account(request.cookies.get(SESSION_COOKIE), SCOPE)

    def login_page(request: web.Request, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("step", "account")
        context.setdefault("error", None)
        context.setdefault("account_id", "")
        context.setdefault("phone", None)
        return page(request, "portal_login.html", status, csrf=csrf_token(request), **context)

    def csrf_refused(request: web.Request) -> web.Response:
        return _message(request, 403, "QP.Csrf.Invalid", "The form expired. Start again.", "表单已失效，请重新开始。")

    @routes.get("/portal")
    async def portal(request: web.Request) -> web.StreamResponse:
        if await signed_in(request) is not None:
            return _see_other("/portal/agreements")
        return login_page(request)

    @routes.post("/portal/login")
    async def login(request: web.Request) -> web.StreamResponse:
        form = await read_form(request, "csrf", "account_id")
        if not check_csrf(request, form):
            return csrf_refused(request)
        account_id = form["account_id"].strip()
        if _ACCOUNT.fullmatch(account_id) is None or is_striped(account_id):
            return login_page(request, 400, error="account")
        # The same answer whether or not the account exists or has a phone: the page tells no
        # one which accounts there are.
        phone = None
        if await router.client_for_account(account_id).call("lookup_account", {"id": account_id}) is not None:
            phone = await customers.phone_of(account_id)
        if phone is not None:
            await customers.send_code(account_id, phone, SCOPE, "sign in to your bank's portal", "登录银行门户")
        return login_page(request, step="code", account_id=account_id)

    @routes.post("/portal/verify")
    async def verify(request: web.Request) -> web.StreamResponse:
        form = await read_form(request, "csrf", "account_id", "code")
        if not check_csrf(request, form):
            return csrf_refused(request)
        account_id = form["account_id"]
        if _ACCOUNT.fullmatch(account_id) is None:
            return login_page(request, 400, error="account")
        if _CODE.fullmatch(form["code"]) is None:
            return login_page(request, 400, step="code", account_id=account_id, error="format")
        checked = await customers.check_code(account_id, SCOPE, form["code"])
        if checked["code"] == "WRONG":
            return login_page(
                request, 400, step="code", account_id=account_id, error="wrong", tries_left=checked["tries_left"]
            )
        if checked["code"] != "OK":
            return login_page(request, 403 if checked["code"] == "LOCKED" else 400, error=checked["code"].lower())
        session = await customers.open_session(account_id, SCOPE, PORTAL_SESSION_TTL_S)
        response = _see_other("/portal/agreements")
        set_cookie(request, response, SESSION_COOKIE, session, PORTAL_SESSION_TTL_S)
        return response

    async def partner_names(partner_ids: set[str]) -> dict[str, str]:
        found = await asyncio.gather(*(router.client_for(p).call("partner", {"id": p}) for p in partner_ids))
        return {p: (f["name"] if f is not None else p) for p, f in zip(partner_ids, found)}

    @routes.get("/portal/agreements")
    async def agreements(request: web.Request) -> web.StreamResponse:
        account_id = await signed_in(request)
        if account_id is None:
            return _see_other("/portal")
        shard = router.shard_of_account(account_id)
        listed, payments, phone = await asyncio.gather(
            router.call(
                shard,
                "agreements",
                {"debtor_account": account_id, "status": None, "before": None, "limit": AGREEMENTS_SHOWN_MAX},
            ),
            router.call(shard, "transactions", {"id": account_id, "limit": PAYMENTS_SHOWN_MAX * 2}),
            customers.phone_of(account_id),
        )
        paid = [t for t in (payments or []) if t["kind"] == "payment" and t["debit_account"] == account_id]
        paid = paid[:PAYMENTS_SHOWN_MAX]
        names = await partner_names(
            {a["partner_id"] for a in listed["agreements"]} | {t["partner_id"] for t in paid if t["partner_id"]}
        )
        shown = [
            {
                **describe(a),
                "partner_name": names.get(a["partner_id"], ""),
                "actions": ACTIONS_BY_STATUS.get(a["status"], ()),
            }
            for a in listed["agreements"]
        ]
        last = [
            {
                "at": when(t["created_at_ms"]),
                "amount": format_amount(t["amount_minor"], t["currency"]),
                "currency": t["currency"],
                "partner_name": names.get(t["partner_id"] or "", ""),
                "reference": t["reference"] or "",
                "agreement_id": t["agreement_id"] or "",
            }
            for t in paid
        ]
        return page(
            request,
            "portal.html",
            csrf=csrf_token(request),
            account=mask_account(account_id),
            phone=mask_phone(phone) if phone else None,
            agreements=shown,
            payments=last,
        )

    @routes.post("/portal/agreements/{agreement_id}/{action}")
    async def change(request: web.Request) -> web.StreamResponse:
        form = await read_form(request, "csrf")
        if not check_csrf(request, form):
            return csrf_refused(request)
        account_id = await signed_in(request)
        if account_id is None:
            return _message(request, 403, "QP.Portal.NotSignedIn", "Sign in first.", "请先登录。")
        agreement_id, action = request.match_info["agreement_id"], request.match_info["action"]
        if action not in ("suspend", "resume", "revoke", "reject") or _ACCOUNT.fullmatch(agreement_id) is None:
            return _message(request, 404, "QP.Resource.NotFound", "No such page.", "页面不存在。")
        client = router.client_for(agreement_id)
        found = await client.call("agreement", {"id": agreement_id})
        if found is None or found["debtor_account"] != account_id:  # another customer's: not there
            return _message(request, 404, "QP.Agreement.NotFound", "No such agreement.", "协议不存在。")
        result = await client.call(
            "agreement_action", {"id": agreement_id, "action": action, "actor": "customer", "partner_id": None}
        )
        if result["code"] not in ("OK", "SAME"):
            return _message(
                request,
                409,
                "QP.Agreement.InvalidTransition",
                f"This agreement cannot be changed that way now ({found['status']}).",
                f"此协议当前状态（{found['status']}）不允许该操作。",
            )
        return _see_other("/portal/agreements")

    @routes.post("/portal/logout")
    async def logout(request: web.Request) -> web.StreamResponse:
        form = await read_form(request, "csrf")
        if not check_csrf(request, form):
            return csrf_refused(request)
        await customers.end_session(request.cookies.get(SESSION_COOKIE))
        response = _see_other("/portal")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response
