"""The SDK's logic, written once and free of I/O: token cache, retries, backoff, errors.

A call is a *plan*: a generator that yields effects (`Send` an HTTP request, `Sleep`)
and receives their results (an `httpx.Response`, or a transport exception thrown into
it). `Client` runs plans with `httpx.Client` and `time.sleep`, `AsyncClient` with
`httpx.AsyncClient` and `asyncio.sleep`; neither holds any logic of its own, so the two
cannot drift apart, and tests can drive either with a fake clock and sleep.

Retry policy (every retry of a call reuses the call's idempotency key):
- 429: always (the request was refused before it was processed);
- 409 `QP.Idempotency.InFlight`: always (the first attempt with this key is still running);
- 503, and connection errors or timeouts after the request may have left: only for
  idempotent calls (GET, DELETE, POSTs with an idempotency key, the token endpoint);
  POST /v1/agreements has no key on the server, so it is not retried on these;
- a connection that never opened (connect error or timeout, pool timeout): always.
The delay is exponential backoff with full jitter, uniform(0, min(max, base * 2**attempt)).
A `Retry-After` (seconds) on the answer replaces it; one longer than `backoff_max_s` is
not waited for: the error is raised at once, carrying `retry_after_s`, so a call never
blocks longer than max_retries * backoff_max_s in sleeps.
"""

from __future__ import annotations

import base64
import math
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import httpx

from .errors import APIConnectionError, AuthenticationError, QuickpayError, RateLimitError, error_class_for

__all__ = [
    "BACKOFF_MAX_LIMIT_S",
    "BATCH_ITEMS_MAX",
    "MAX_RETRIES_LIMIT",
    "PAGE_SIZE_MAX",
    "TIMEOUT_MAX_S",
    "Call",
    "Core",
    "Effect",
    "Page",
    "Plan",
    "Send",
    "Settings",
    "Sleep",
]

T = TypeVar("T")

MAX_RETRIES_LIMIT = 10
BACKOFF_MAX_LIMIT_S = 120.0
TIMEOUT_MAX_S = 300.0
PAGE_SIZE_MAX = 200  # the gateway's PAGE_LIMIT_MAX
BATCH_ITEMS_MAX = 1_000  # the gateway's BATCH_ITEMS_MAX (a stack may be started lower)
TOKEN_EARLY_S = 30.0  # renew a token this long before it expires (or at 90% of a short life)
RETRY_AFTER_MAX_CHARS = 16


@dataclass(frozen=True)
class Settings:
    base_url: str
    client_id: str
    client_secret: str
    timeout_s: float = 10.0
    max_retries: int = 3
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret are required")
        if not 0 < self.timeout_s <= TIMEOUT_MAX_S:
            raise ValueError(f"timeout_s must be in (0, {TIMEOUT_MAX_S}]")
        if isinstance(self.max_retries, bool) or not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(f"max_retries must be 0-{MAX_RETRIES_LIMIT}")
        if not 0 < self.backoff_base_s <= self.backoff_max_s <= BACKOFF_MAX_LIMIT_S:
            raise ValueError(f"need 0 < backoff_base_s <= backoff_max_s <= {BACKOFF_MAX_LIMIT_S}")


# ---- effects ------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Send this request; the runner answers with the httpx.Response or throws the
    httpx.TransportError it got."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Send | Sleep
Plan = Generator[Effect, Any, T]


# ---- calls --------------------------------------------------------------------------
@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical API call: what to send and how to read a successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str | None = None
    idempotency_key: str | None = None
    idempotent: bool = True
    accept: str = "application/json"


class Page(NamedTuple):
    items: list[dict[str, Any]]
    next_cursor: str | None


def invalid_response(response: httpx.Response, why: str) -> QuickpayError:
    return QuickpayError(
        0,
        "QP.Client.InvalidResponse",
        f"{why} (HTTP {response.status_code})",
        interaction_id=response.headers.get("x-fapi-interaction-id"),
        body=response.text[:1000],
    )


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise invalid_response(response, "the answer is not JSON") from None
    if not isinstance(body, dict):
        raise invalid_response(response, "the answer is not a JSON object")
    return body


def page_of(items_key: str) -> Callable[[httpx.Response], Page]:
    def parse(response: httpx.Response) -> Page:
        body = json_object(response)
        items, cursor = body.get(items_key), body.get("next_cursor")
        if not isinstance(items, list) or not (cursor is None or isinstance(cursor, str)):
            raise invalid_response(response, f"the answer has no {items_key} list or a bad next_cursor")
        return Page(items, cursor or None)

    return parse


def next_cursor(sent: str | None, page: Page) -> str | None:
    """The cursor to ask with next (None: that was the last page). A page may be short, or
    empty, and still have a cursor; a cursor that does not move would loop for ever."""
    if page.next_cursor is not None and page.next_cursor == sent:
        raise QuickpayError(0, "QP.Client.CursorLoop", "the server answered the same cursor it was sent")
    return page.next_cursor


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is not used: the clock here is monotonic)."""
    if value is None or len(value) > RETRY_AFTER_MAX_CHARS:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_from_response(response: httpx.Response, idempotency_key: str | None) -> QuickpayError:
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text[:1000]
    code, message, errors = f"HTTP.{status}", response.reason_phrase or "error", []
    if isinstance(body, dict):
        if isinstance(body.get("code"), str):
            code = body["code"]
        if isinstance(body.get("message"), str):
            message = body["message"]
        if isinstance(body.get("errors"), list):
            errors = [e for e in body["errors"] if isinstance(e, dict)]
    elif isinstance(body, str) and body:
        message = body[:200]
    cls = error_class_for(status)
    return cls(
        status,
        code,
        message,
        errors,
        response.headers.get("x-fapi-interaction-id"),
        body,
        idempotency_key=idempotency_key,
        retry_after_s=retry_after_s(response.headers.get("retry-after")),
    )


# Transport errors where the request cannot have reached the server, and ones where it may have.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


# ---- the core -----------------------------------------------------------------------
class Core:
    """Token cache and the retry loop; shared state of one client (one partner)."""

    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self._token: str | None = None
        self._token_renew_at = 0.0
        basic = f"{settings.client_id}:{settings.client_secret}".encode()
        self._basic = "Basic " + base64.b64encode(basic).decode()

    # -- plans
    def execute(self, call: Call[T]) -> Plan[T]:
        """Run one API call with a bearer token: renew it once on 401 QP.Auth.InvalidToken."""
        response = yield from self._exchange(call, authenticate=True)
        return call.parse(response)

    def access_token(self) -> Plan[str]:
        """The cached token, or a new one (client credentials, HTTP Basic) if none or near expiry."""
        if self._token is not None and self.clock() < self._token_renew_at:
            return self._token
        call: Call[dict[str, Any]] = Call(
            "POST",
            "/oauth2/token",
            json_object,
            content=b"grant_type=client_credentials",
            content_type="application/x-www-form-urlencoded",
        )
        requested_at = self.clock()
        body = call.parse((yield from self._exchange(call, authenticate=False)))
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise QuickpayError(200, "QP.Client.InvalidResponse", "the token answer has no access_token", body=body)
        life = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 0.0
        self._token = token
        # Renew TOKEN_EARLY_S before expiry, or at 90% of a short life; measured from the request.
        self._token_renew_at = requested_at + life - min(TOKEN_EARLY_S, life * 0.1)
        return token

    def forget_token(self, token: str | None) -> None:
        if token is not None and self._token == token:  # another call may have renewed it already
            self._token = None

    def _exchange(self, call: Call[Any], *, authenticate: bool) -> Plan[httpx.Response]:
        attempt = 0
        renewed = False
        while True:
            token = (yield from self.access_token()) if authenticate else None
            try:
                response: httpx.Response = yield self._send(call, token)
            except httpx.TransportError as exc:
                retryable = isinstance(exc, _NOT_SENT) or (call.idempotent and isinstance(exc, _MAYBE_SENT))
                if retryable and attempt < self.settings.max_retries:
                    yield Sleep(self.backoff_s(attempt))
                    attempt += 1
                    continue
                raise APIConnectionError(
                    0, "QP.Client.Connection", f"{type(exc).__name__}: {exc}", idempotency_key=call.idempotency_key
                ) from exc
            if response.status_code < 400:
                return response
            error = error_from_response(response, call.idempotency_key)
            if (
                authenticate
                and not renewed
                and isinstance(error, AuthenticationError)
                and error.code == "QP.Auth.InvalidToken"
            ):
                self.forget_token(token)
                renewed = True
                continue
            delay = self.retry_delay_s(error, attempt, call.idempotent)
            if delay is None:
                raise error
            yield Sleep(delay)
            attempt += 1

    def _send(self, call: Call[Any], token: str | None) -> Send:
        headers = {"accept": call.accept, "authorization": f"Bearer {token}" if token is not None else self._basic}
        if call.content_type is not None:
            headers["content-type"] = call.content_type
        if call.idempotency_key is not None:
            headers["x-idempotency-key"] = call.idempotency_key
        return Send(call.method, call.path, dict(call.params), headers, call.content)

    # -- policy
    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt))."""
        s = self.settings
        return self.rng.uniform(0.0, min(s.backoff_max_s, s.backoff_base_s * 2.0 ** min(attempt, 32)))

    def retry_delay_s(self, error: QuickpayError, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before the next attempt, or None to raise `error` now."""
        if attempt >= self.settings.max_retries:
            return None
        retryable = (
            isinstance(error, RateLimitError)
            or (error.status == 409 and error.code == "QP.Idempotency.InFlight")
            or (error.status == 503 and idempotent)
        )
        if not retryable:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.settings.backoff_max_s else None
        return self.backoff_s(attempt)
