"""quickpay_sdk: a small client for quickpay's partner API.

    from quickpay_sdk import Client
    with Client("https://qp.example", client_id, client_secret) as qp:
        payment = qp.create_payment(agreement_id, "12.34", "CNY", settlement_account, "order 42")

`Client` blocks (httpx.Client); `AsyncClient` has the same methods for asyncio. Both get
and renew OAuth2 client-credentials tokens, give every money-moving call an idempotency
key (reused on each retry, so a retry never moves money twice), retry 429, 503, 409
`QP.Idempotency.InFlight` and lost connections with capped exponential backoff and full
jitter (honouring Retry-After), and raise typed `QuickpayError`s. `verify_webhook` checks
a webhook delivery's `Quickpay-Signature`. `create_agreement_with_redirect`, `new_state` and
`verify_callback` (module `consent`) are the customer-consent redirect's partner side.

Layout: `client` (the two runners and the public methods), `_operations` (what each call
sends), `_core` (token cache, retries, backoff: the logic, free of I/O), `errors`,
`webhooks` (standard library only; the server signs with its `sign_webhook`). The
clients are imported on first use, so `import quickpay_sdk.webhooks` does not need httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .consent import ConsentCallback, ConsentCallbackError, new_state, verify_callback
from .errors import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    QuickpayError,
    RateLimitError,
    ServerError,
    UnprocessableError,
)
from .webhooks import SIGNATURE_HEADER, WebhookVerificationError, compute_signature, sign_webhook, verify_webhook

__all__ = [
    "SIGNATURE_HEADER",
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConsentCallback",
    "ConsentCallbackError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "QuickpayError",
    "RateLimitError",
    "ServerError",
    "UnprocessableError",
    "WebhookVerificationError",
    "compute_signature",
    "new_state",
    "sign_webhook",
    "verify_callback",
    "verify_webhook",
]

if TYPE_CHECKING:
    from .client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
