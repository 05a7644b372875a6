"""The console's routes: /console (the page), /console/login, /console/logout,
/console/api/snapshot (the page's data) and /console/static/... (its script, style and the
vendored uPlot). Off the payment path: these handlers run only when a page asks."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs

from aiohttp import web

from ..auth import admin_token_matches
from ..errors import ApiError, field_error
from ..responses import _json
from ..state import Gateway
from .pages import SECURITY_HEADERS, console_page, login_page
from .session import CSRF_COOKIE, CSRF_TTL_S, SESSION_COOKIE, SESSION_TTL_S, SessionKeys
from .snapshot import PARTNERS_WATCHED_MAX, SnapshotSource

__all__ = ["LOGIN_BODY_MAX_BYTES", "add_routes"]

LOGIN_BODY_MAX_BYTES = 4096
PARTNERS_QUERY_MAX_CHARS = 2000
STATIC_DIR = Path(__file__).with_name("static")
# The only files served, read once at start-up (name -> content type).
STATIC_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css",
    "vendor/uPlot.LICENSE": "text/plain",
}
PARTNER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
PARTNER_ID_MAX = 64


def _now_ms() -> int:
    return int(time.time() * 1000)


def _html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=text, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


def _redirect(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


def _cookie(response: web.Response, request: web.Request, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _field(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _watched(request: web.Request) -> tuple[str, ...]:
    text = request.query.get("partners", "")
    if len(text) > PARTNERS_QUERY_MAX_CHARS:
        raise field_error(
            400, "QP.Query.Invalid", f"partners is at most {PARTNERS_QUERY_MAX_CHARS} characters", "query.partners"
        )
    ids = [p.strip() for p in text.split(",") if p.strip()]
    if len(ids) > PARTNERS_WATCHED_MAX:
        raise field_error(400, "QP.Query.Invalid", f"at most {PARTNERS_WATCHED_MAX} partner ids", "query.partners")
    for partner_id in ids:
        if len(partner_id) > PARTNER_ID_MAX or not set(partner_id) <= PARTNER_ID_CHARS:
            raise field_error(400, "QP.Query.Invalid", "a partner id is letters, digits, _ and -", "query.partners")
    return tuple(dict.fromkeys(ids))


def _own_base_url(request: web.Request) -> str:
    """This gateway's own listening address, from the connection's socket (never the Host
    header, which the client writes)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise ApiError(503, "QP.Console.Unavailable", "the console needs a TCP listener", headers={"Retry-After": "1"})
    host, port = str(sockname[0]), int(sockname[1])
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/console and below."""
    keys = SessionKeys(gw.config.admin_token)
    source = SnapshotSource(gw.config.admin_token)
    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}

    def session_of(request: web.Request) -> str | None:
        return keys.session_nonce(request.cookies.get(SESSION_COOKIE), _now_ms())

    def login_form(request: web.Request, status: int = 200, message: str | None = None) -> web.Response:
        csrf = keys.new_login_csrf(_now_ms())
        response = _html(status, login_page(csrf, message))
        _cookie(response, request, CSRF_COOKIE, csrf, CSRF_TTL_S)
        return response

    @routes.get("/console")
    async def console(request: web.Request) -> web.Response:
        nonce = session_of(request)
        if nonce is None:
            return _redirect("/console/login")
        return _html(200, console_page(keys.logout_csrf(nonce)))

    @routes.get("/console/login")
    async def login_get(request: web.Request) -> web.Response:
        if session_of(request) is not None:
            return _redirect("/console")
        return login_form(request)

    @routes.post("/console/login")
    async def login_post(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > LOGIN_BODY_MAX_BYTES:
            return login_form(request, 413, "The form is too large.")
        raw = await request.content.read(LOGIN_BODY_MAX_BYTES + 1)
        if len(raw) > LOGIN_BODY_MAX_BYTES:
            return login_form(request, 413, "The form is too large.")
        try:
            form = parse_qs(raw.decode(), max_num_fields=4, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return login_form(request, 400, "The form could not be read.")
        csrf = _field(form, "csrf")
        token = _field(form, "token") or ""
        if not keys.login_csrf_ok(request.cookies.get(CSRF_COOKIE), csrf, _now_ms()):
            return login_form(request, 403, "The form expired or did not come from this page; try again.")
        if not token or not admin_token_matches(token, gw.config.admin_token):
            return login_form(request, 401, "That is not the admin token.")
        response = _redirect("/console")
        _cookie(response, request, SESSION_COOKIE, keys.new_session(_now_ms()), SESSION_TTL_S)
        response.del_cookie(CSRF_COOKIE, path="/console")
        return response

    @routes.post("/console/logout")
    async def logout(request: web.Request) -> web.Response:
        nonce = session_of(request)
        raw = await request.content.read(LOGIN_BODY_MAX_BYTES + 1)
        if nonce is not None:
            try:
                form = parse_qs(raw[:LOGIN_BODY_MAX_BYTES].decode(errors="replace"), max_num_fields=4)
            except ValueError:
                form = {}
            if not keys.logout_csrf_ok(nonce, _field(form, "csrf")):
                return _html(403, "<!doctype html><title>refused</title><p>Logout refused: stale form.</p>")
        response = _redirect("/console/login")
        response.del_cookie(SESSION_COOKIE, path="/console")
        return response

    @routes.get("/console/api/snapshot")
    async def snapshot(request: web.Request) -> web.Response:
        if session_of(request) is None:
            raise ApiError(401, "QP.Console.Session", "log in at /console/login")
        partners = _watched(request)
        taken = await source.snapshot(_own_base_url(request), partners)
        now_s = time.monotonic()
        for partner in taken["partners"]:
            if not partner.get("missing"):
                limit = gw.rate_override(str(partner["partner_id"]), now_s)
                partner["rate_limit"] = {
                    "requests_per_s": limit.requests_per_s if limit else gw.config.rate_limit_rps,
                    "burst": limit.burst if limit else gw.config.rate_limit_burst,
                    "override": limit is not None,
                }
        return _json(200, taken, headers=SECURITY_HEADERS)

    @routes.get("/console/static/{name:.+}")
    async def static_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static:
            raise ApiError(404, "QP.Resource.NotFound", "no such file")
        response = web.Response(body=static[name], content_type=STATIC_FILES[name])
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "public, max-age=300"
        return response
