"""Console sessions and CSRF tokens, pure (time passed in as now_ms).

The admin token is typed once into the login form and exchanged for a session cookie; the
token itself never reaches the browser's storage. A session is stateless so that any gateway
worker (they share one port) accepts it: "v1.<issued_ms>.<nonce>.<mac>", the MAC an
HMAC-SHA256 under a key derived from the admin token (changing the admin token ends every
session). It is valid for SESSION_TTL_S from its issue. Logout clears the cookie in the
browser; a copy taken from the browser stays valid until it expires, which is why the
lifetime is short.

CSRF: the login form carries a signed token that must equal the one in a short-lived
SameSite=Strict cookie (double submit, and signed so that a cookie planted by a sibling
host cannot be made up); the logout form carries a MAC of the session's nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "CSRF_COOKIE",
    "CSRF_TTL_S",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "SessionKeys",
]

SESSION_COOKIE = "qp_console"
CSRF_COOKIE = "qp_console_csrf"
SESSION_TTL_S = 3600  # an hour, then log in again
CSRF_TTL_S = 600  # a login form is good for 10 minutes
CLOCK_SKEW_MS = 5_000  # gateway workers' clocks may differ a little
TOKEN_TEXT_MAX = 200  # characters of a cookie or form token we look at


class SessionKeys:
    """The console's MAC keys, derived from the admin token."""

    def __init__(self, admin_token: str) -> None:
        root = hmac.new(admin_token.encode(), b"quickpay console v1", hashlib.sha256).digest()
        self._session = hmac.new(root, b"session", hashlib.sha256).digest()
        self._login = hmac.new(root, b"login csrf", hashlib.sha256).digest()
        self._logout = hmac.new(root, b"logout csrf", hashlib.sha256).digest()

    @staticmethod
    def _mac(key: bytes, text: str) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def _issue(self, key: bytes, now_ms: int) -> str:
        body = f"v1.{now_ms}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._mac(key, body)}"

    def _check(self, key: bytes, token: str | None, now_ms: int, ttl_s: int) -> str | None:
        """The token's nonce if it is well formed, signed by us and not expired, else None."""
        if not token or len(token) > TOKEN_TEXT_MAX or not token.isascii():
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(key, body), parts[3]):
            return None
        issued_ms = int(parts[1])
        if issued_ms > now_ms + CLOCK_SKEW_MS or now_ms - issued_ms >= ttl_s * 1000:
            return None
        return parts[2]

    # -- sessions
    def new_session(self, now_ms: int) -> str:
        return self._issue(self._session, now_ms)

    def session_nonce(self, cookie: str | None, now_ms: int) -> str | None:
        """The session's nonce if the cookie is a live session, else None."""
        return self._check(self._session, cookie, now_ms, SESSION_TTL_S)

    # -- CSRF
    def new_login_csrf(self, now_ms: int) -> str:
        return self._issue(self._login, now_ms)

    def login_csrf_ok(self, cookie: str | None, form: str | None, now_ms: int) -> bool:
        if not cookie or not form or not hmac.compare_digest(cookie.encode(), form.encode()):
            return False
        return self._check(self._login, form, now_ms, CSRF_TTL_S) is not None

    def logout_csrf(self, nonce: str) -> str:
        return self._mac(self._logout, nonce)

    def logout_csrf_ok(self, nonce: str, form: str | None) -> bool:
        return form is not None and hmac.compare_digest(self.logout_csrf(nonce).encode(), form.encode(errors="replace"))
