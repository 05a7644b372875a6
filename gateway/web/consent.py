"""The customer's consent page (`/consent/{token}`): the bank's page a partner sends its
customer to, OAuth-style (exact redirect URI, opaque `state`), before the first debit.

The journey: the partner creates the agreement with one of its registered `redirect_uri`s
and gets `authorisation_url`; the customer opens it, reads the terms (partner, masked account,
currency, limits, validity; English and Chinese), asks for a code sent to the phone the bank
holds for the account, enters it, and authorises or declines. Then a 303 to the registered URI
with `agreement_id`, `state` and `outcome` (authorised or declined), nothing else. The
agreement's status changes through the same shard command the admin call uses
(`agreement_action`, actor customer), so the events and webhooks are the same.

Links are single use (the decision consumes them atomically) and expire
(CONSENT_LINK_TTL_S, or QUICKPAY_CONSENT_LINK_TTL_S); only their SHA-256 is stored.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

from aiohttp import web
from yarl import URL

from kernel.limits import CONSENT_LINK_TTL_S, CONSENT_LINK_TTL_S_MAX

from ..errors import ApiError, field_error
from ..shards import ShardRouter
from ..state import Gateway
from .customer import Control, Customers, mask_account, mask_phone
from .html import SECURITY_HEADERS, check_csrf, csrf_token, page, read_form, set_cookie, sha256_hex
from .words import describe

__all__ = ["add_routes", "check_redirect_uri", "check_registered", "link_ttl_s", "new_authorisation_url"]

_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_CODE = re.compile(r"[0-9]{6}")
SESSION_COOKIE = "qp_consent"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def decision_origin(redirect_uri: str) -> str | None:
    """The one other origin the decision page's forms may end at (a CSP host-source for
    `form-action`: browsers check the 303 to the partner against it), or None when a CSP
    cannot name it (an IPv6 literal: then that browser stays on the bank's page)."""
    url = URL(redirect_uri)
    if not url.host or ":" in url.host:
        return None
    return str(url.origin())


def decision_csp(redirect_uri: str) -> str:
    """The decision page's Content-Security-Policy: the pages' own, with the registered
    redirect URI's origin (nothing of its path or query) added to `form-action`."""
    base = SECURITY_HEADERS["Content-Security-Policy"]
    origin = decision_origin(redirect_uri)
    return base if origin is None else base.replace("form-action 'self'", f"form-action 'self' {origin}")


def link_ttl_s() -> int:
    """How long a new link works: CONSENT_LINK_TTL_S unless QUICKPAY_CONSENT_LINK_TTL_S says otherwise."""
    text = os.environ.get("QUICKPAY_CONSENT_LINK_TTL_S")
    if text is None:
        return CONSENT_LINK_TTL_S
    if not text.isdigit() or not 1 <= int(text) <= CONSENT_LINK_TTL_S_MAX:
        raise ValueError(f"QUICKPAY_CONSENT_LINK_TTL_S must be 1-{CONSENT_LINK_TTL_S_MAX} seconds, not {text!r}")
    return int(text)


def check_redirect_uri(uri: str, path: str) -> None:
    """An exact redirect URI a partner may register: https, or http to a loopback host (local
    use and tests); a host named by name or IPv4, no credentials, no fragment. Else 422.
    Not an IPv6 literal: the decision page must name the URI's origin in its CSP
    `form-action` (browsers check the 303 after the POST against it), and a CSP host-source
    cannot hold one, so a browser would stay on the bank's page (decision_origin)."""
    try:
        url = URL(uri)
    except ValueError:
        url = None
    ok = (
        url is not None
        and url.is_absolute()
        and bool(url.host)
        and ":" not in (url.host or "")
        and url.user is None
        and url.password is None
        and not url.fragment
        and "#" not in uri
        and (url.scheme == "https" or (url.scheme == "http" and url.host in _LOOPBACK_HOSTS))
    )
    if not ok:
        raise field_error(
            422,
            "QP.RedirectUri.Invalid",
            "a redirect URI is absolute https (http only to 127.0.0.1 or localhost), with a host"
            " named by name or IPv4 (no IPv6 literal: a CSP cannot name one), no credentials or fragment",
            path,
        )


async def check_registered(router: ShardRouter, partner_id: str, redirect_uri: str | None, state: str | None) -> None:
    """422 unless redirect_uri is one of the partner's registered URIs, exactly (and state comes with one)."""
    if state is not None and redirect_uri is None:
        raise field_error(422, "QP.Agreement.StateWithoutRedirect", "state needs a redirect_uri", "$.state")
    if redirect_uri is None:
        return
    registered = await Control(router)("redirect_uris", partner_id=partner_id)
    if redirect_uri not in registered:
        raise field_error(
            422,
            "QP.Agreement.RedirectUriNotRegistered",
            "redirect_uri is not one of the partner's registered redirect URIs (exact match)",
            "$.redirect_uri",
        )


async def new_authorisation_url(
    request: web.Request, router: ShardRouter, agreement: dict[str, Any], redirect_uri: str, state: str | None
) -> str:
    """A new single-use link to the consent page for the agreement (its token stored hashed);
    409 QP.Agreement.TooManyLinks past LINKS_PER_AGREEMENT_MAX."""
    token = secrets.token_urlsafe(32)
    created = await Control(router)(
        "link_create",
        token_sha256=sha256_hex(token),
        agreement_id=agreement["id"],
        partner_id=agreement["partner_id"],
        account_id=agreement["debtor_account"],
        redirect_uri=redirect_uri,
        state=state,
        ttl_ms=link_ttl_s() * 1000,
    )
    if created["code"] != "OK":
        raise ApiError(409, "QP.Agreement.TooManyLinks", "this agreement has had as many authorisation links as it may")
    base = os.environ.get("QUICKPAY_PUBLIC_URL") or str(request.url.origin())
    return base.rstrip("/") + "/consent/" + token


def _message(request: web.Request, status: int, code: str, en: str, zh: str) -> web.Response:
    return page(request, "message.html", status, code=code, text_en=en, text_zh=zh)


def _not_awaiting(request: web.Request) -> web.Response:
    return _message(
        request,
        409,
        "QP.Consent.NotAwaiting",
        "This agreement no longer waits for your decision.",
        "此协议已不再等待您的确认。",
    )


def add_routes(routes: web.RouteTableDef, gw: Gateway, customers: Customers) -> None:
    router = gw.router
    control = customers.control
    link_ttl_s()  # a bad setting stops the gateway at start, with what to change

    async def open_link(request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """The link's hash and row, or the page that says why it cannot be used."""
        token = request.match_info["token"]
        if _TOKEN.fullmatch(token) is None:
            return _message(request, 404, "QP.Consent.LinkNotFound", "This link is not valid.", "此链接无效。")
        token_sha256 = sha256_hex(token)
        link = await control("link", token_sha256=token_sha256)
        if link is None:
            return _message(request, 404, "QP.Consent.LinkNotFound", "This link is not valid.", "此链接无效。")
        if link["used_at_ms"] is not None:
            return _message(request, 410, "QP.Consent.LinkUsed", "This link has already been used.", "此链接已被使用。")
        if link["expired"]:
            return _message(
                request,
                410,
                "QP.Consent.LinkExpired",
                "This link has expired. Go back to the app that sent you and start again.",
                "此链接已过期，请返回原应用重新发起。",
            )
        return token_sha256, link

    async def terms(link: dict[str, Any]) -> dict[str, Any] | None:
        agreement = await router.client_for(link["agreement_id"]).call("agreement", {"id": link["agreement_id"]})
        if agreement is None or agreement["status"] != "AwaitingAuthorisation":
            return None
        partner = await router.client_for(link["partner_id"]).call("partner", {"id": link["partner_id"]})
        phone = await customers.phone_of(link["account_id"])
        return {
            **describe(agreement),
            "partner_name": partner["name"] if partner is not None else "",
            "account": mask_account(link["account_id"]),
            "phone": mask_phone(phone) if phone is not None else None,
        }

    async def render(
        request: web.Request, link: dict[str, Any], step: str, status: int = 200, **extra: Any
    ) -> web.Response:
        shown = await terms(link)
        if shown is None:
            return _not_awaiting(request)
        return page(
            request,
            "consent.html",
            status,
            csrf=csrf_token(request),
            # The decision's 303 goes to the partner's registered URI: its origin only, on that page only.
            redirect_origin=decision_origin(link["redirect_uri"]) if step == "decide" else None,
            step=step,
            base="/consent/" + request.match_info["token"],
            terms=shown,
            error=extra.pop("error", None),
            **extra,
        )

    async def post_prelude(
        request: web.Request, *fields: str
    ) -> tuple[str, dict[str, Any], dict[str, str]] | web.Response:
        form = await read_form(request, "csrf", *fields)
        if not check_csrf(request, form):
            return _message(
                request,
                403,
                "QP.Csrf.Invalid",
                "The form expired. Open the link again.",
                "表单已失效，请重新打开链接。",
            )
        opened = await open_link(request)
        if isinstance(opened, web.Response):
            return opened
        return opened[0], opened[1], form

    @routes.get("/consent/{token}")
    async def consent_page(request: web.Request) -> web.StreamResponse:
        opened = await open_link(request)
        if isinstance(opened, web.Response):
            return opened
        return await render(request, opened[1], "start")

    @routes.post("/consent/{token}/code")
    async def send_code(request: web.Request) -> web.StreamResponse:
        prelude = await post_prelude(request)
        if isinstance(prelude, web.Response):
            return prelude
        token_sha256, link, _ = prelude
        if await terms(link) is None:  # no code for an agreement that no longer waits
            return _not_awaiting(request)
        phone = await customers.phone_of(link["account_id"])
        if phone is None:
            return _message(
                request,
                409,
                "QP.Consent.NoPhone",
                "Your bank holds no phone number for this account. Contact your bank.",
                "银行未登记此账户的手机号，请联系您的银行。",
            )
        sent = await customers.send_code(
            link["account_id"], phone, "consent:" + token_sha256, "confirm a payment agreement", "确认免密支付协议"
        )
        if not sent:
            return await render(request, link, "start", 429, error="rate")
        return await render(request, link, "code")

    @routes.post("/consent/{token}/verify")
    async def verify_code(request: web.Request) -> web.StreamResponse:
        prelude = await post_prelude(request, "code")
        if isinstance(prelude, web.Response):
            return prelude
        token_sha256, link, form = prelude
        if _CODE.fullmatch(form["code"]) is None:
            return await render(request, link, "code", 400, error="format")
        checked = await customers.check_code(link["account_id"], "consent:" + token_sha256, form["code"])
        if checked["code"] == "WRONG":
            return await render(request, link, "code", 400, error="wrong", tries_left=checked["tries_left"])
        if checked["code"] != "OK":
            status = 403 if checked["code"] == "LOCKED" else 400
            return await render(request, link, "start", status, error=checked["code"].lower())
        session = await customers.open_session(link["account_id"], "consent:" + token_sha256, link_ttl_s())
        response = await render(request, link, "decide")
        set_cookie(request, response, SESSION_COOKIE, session, link_ttl_s())
        return response

    @routes.post("/consent/{token}/decision")
    async def decide(request: web.Request) -> web.StreamResponse:
        prelude = await post_prelude(request, "decision")
        if isinstance(prelude, web.Response):
            return prelude
        token_sha256, link, form = prelude
        account = await customers.session_account(request.cookies.get(SESSION_COOKIE), "consent:" + token_sha256)
        if account is None or account != link["account_id"]:
            return _message(
                request,
                403,
                "QP.Consent.NotSignedIn",
                "Confirm with the code sent to your phone first.",
                "请先输入发送到您手机的验证码。",
            )
        if form["decision"] not in ("authorise", "decline"):
            return await render(request, link, "decide", 400, error="decision")
        outcome = "authorised" if form["decision"] == "authorise" else "declined"
        consumed = await control("link_consume", token_sha256=token_sha256, outcome=outcome)
        if consumed is None:  # used or expired since the prelude read it
            return _message(request, 410, "QP.Consent.LinkUsed", "This link has already been used.", "此链接已被使用。")
        result = await router.client_for(link["agreement_id"]).call(
            "agreement_action",
            {
                "id": link["agreement_id"],
                "action": "authorise" if outcome == "authorised" else "reject",
                "actor": "customer",
                "partner_id": None,
            },
        )
        if result["code"] not in ("OK", "SAME"):
            return _not_awaiting(request)
        await customers.end_session(request.cookies.get(SESSION_COOKIE))
        # Only what we stored: the registered URI, the agreement, the partner's own state, the outcome.
        query = {"agreement_id": link["agreement_id"], "outcome": outcome}
        if consumed["state"] is not None:
            query["state"] = consumed["state"]
        location = URL(consumed["redirect_uri"]).update_query(query)
        response = web.Response(status=303, headers={"Location": str(location)})
        response.headers.update(SECURITY_HEADERS)
        response.del_cookie(SESSION_COOKIE, path="/")
        return response
