"""HTML for the customer's pages (consent, portal): Jinja2 templates with autoescape on, so
every partner-supplied string (a partner's name is hostile input) is escaped wherever it is
shown; the security headers every page carries; cookies; the CSRF check.

CSRF is the double-submit pattern: a random token in a `SameSite=Strict; HttpOnly` cookie
and the same token in a hidden field of every form; a POST whose two do not match is 403.
Strict, not Lax: the customer arrives from the partner's site by a top-level GET (which
needs no cookie) and every POST after that comes from our own pages.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from ..errors import field_error

__all__ = [
    "CSRF_COOKIE",
    "FORM_FIELD_MAX_CHARS",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "check_csrf",
    "csrf_token",
    "page",
    "read_form",
    "set_cookie",
    "sha256_hex",
]

_HERE = Path(__file__).resolve().parent
STATIC_DIR = _HERE / "static"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every {{ value }} is escaped; nothing is marked safe
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# No script at all, styles only from our own origin, forms only to our own origin, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The link's token is in the URL: never sent on to another site.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}

CSRF_COOKIE = "qp_csrf"
CSRF_FIELD = "csrf"
# Form bodies are bounded by the app's client_max_size (BODY_MAX_BYTES); each field by this.
FORM_FIELD_MAX_CHARS = 256


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def csrf_token(request: web.Request) -> str:
    """The request's CSRF token: the cookie's if it has a well-formed one, else a new one
    (page() sets the cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) == 43 and current.replace("-", "").replace("_", "").isalnum():
        return current
    return secrets.token_urlsafe(32)


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path="/",
        httponly=True,
        samesite="Strict",
        # http://127.0.0.1 for local use; behind a TLS-terminating proxy QUICKPAY_PUBLIC_URL says https.
        secure=request.secure or os.environ.get("QUICKPAY_PUBLIC_URL", "").startswith("https://"),
    )


def page(
    request: web.Request,
    template: str,
    status: int = 200,
    *,
    csrf: str | None = None,
    redirect_origin: str | None = None,
    **context: Any,
) -> web.Response:
    """A rendered page with the security headers; `csrf` is the token its forms carry (and the
    cookie that must match it). `redirect_origin`: the one other origin a form of this page may
    end at, through our 303 (browsers apply `form-action` to the redirects after a submission
    too, so the consent decision's redirect to the partner needs its registered origin there)."""
    body = _ENV.get_template(template).render(csrf=csrf or "", **context)
    response = web.Response(status=status, text=body, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    if redirect_origin is not None:
        response.headers["Content-Security-Policy"] = SECURITY_HEADERS["Content-Security-Policy"].replace(
            "form-action 'self'", f"form-action 'self' {redirect_origin}"
        )
    if csrf is not None:
        set_cookie(request, response, CSRF_COOKIE, csrf, 3600)
    return response


async def read_form(request: web.Request, *names: str) -> dict[str, str]:
    """The named fields of a form POST (missing ones are ""), each bounded; a body that cannot
    be read as a form (bytes that are not UTF-8, an unknown charset, broken multipart) is 400."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError
        raise field_error(400, "QP.Form.Invalid", "the request body is not a readable form", "body") from None
    values = {}
    for name in names:
        value = form.get(name, "")
        values[name] = value[:FORM_FIELD_MAX_CHARS] if isinstance(value, str) else ""
    return values


def check_csrf(request: web.Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    return bool(cookie) and len(cookie) == len(sent) and hmac.compare_digest(cookie, sent)
