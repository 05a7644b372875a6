"""Typed errors of the quickpay partner SDK.

Every API error has the one body the gateway sends, `{"code", "message", "errors":
[{"code", "message", "path"}]}`, and the response's `x-fapi-interaction-id`; the SDK
raises it as a `QuickpayError` subclass chosen by HTTP status, so callers catch what
they can act on (`except UnprocessableError as e: if e.code == "QP.Agreement.Revoked"`).
Failures on the client's side (no connection, a response that is not what the API
promises) are `QuickpayError`s too, with status 0, so one `except QuickpayError` covers
every call. This module has no dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "ConflictError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "QuickpayError",
    "RateLimitError",
    "ServerError",
    "UnprocessableError",
    "error_class_for",
]


class QuickpayError(Exception):
    """An API call that did not succeed.

    status: the HTTP status (0 when no HTTP answer was had); code: the API's error code
    (`QP.Agreement.NotFound`, `invalid_client`, or `HTTP.<status>` for a body without one);
    errors: the field errors [{code, message, path}]; interaction_id: the response's
    x-fapi-interaction-id (quote it to the operator); body: the parsed JSON body (or its
    text); idempotency_key: the key the call was sent with, so it can be retried later
    with exactly-once effect; retry_after_s: the response's Retry-After, in seconds.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        interaction_id: str | None = None,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors: list[dict[str, Any]] = list(errors or [])
        self.interaction_id = interaction_id
        self.body = body
        self.idempotency_key = idempotency_key
        self.retry_after_s = retry_after_s


class InvalidRequestError(QuickpayError):
    """400, 405, 413, 415: the request itself is malformed; fix it, do not retry it."""


class AuthenticationError(QuickpayError):
    """401: bad client credentials, or a token the SDK could not renew."""


class ForbiddenError(QuickpayError):
    """403: the partner may not do this (e.g. an agreement action reserved to the customer)."""


class NotFoundError(QuickpayError):
    """404: no such resource, or one of another partner (the API never says 403 for those)."""


class ConflictError(QuickpayError):
    """409: QP.Idempotency.InFlight (retried by the SDK) or QP.Agreement.InvalidTransition."""


class UnprocessableError(QuickpayError):
    """422: well-formed but refused by a business rule (agreement state, limits, refunds)."""


class RateLimitError(QuickpayError):
    """429: too many requests; `retry_after_s` says when to come back, if the server said."""


class ServerError(QuickpayError):
    """5xx: 503 means the outcome is unknown (retry with the same idempotency key); 500 is a bug."""


class APIConnectionError(QuickpayError):
    """No HTTP answer (connection refused or reset, timeout) after the allowed retries; status 0."""


_BY_STATUS: dict[int, type[QuickpayError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    405: InvalidRequestError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: UnprocessableError,
    429: RateLimitError,
}


def error_class_for(status: int) -> type[QuickpayError]:
    """The exception class for an HTTP error status (QuickpayError for unlisted 4xx)."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, QuickpayError)
