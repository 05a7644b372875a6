"""Webhook delivery rules. Pure: the caller passes the time and the randomness.

- Success: any 2xx within DELIVERY_TIMEOUT_S.
- Otherwise the next attempt waits min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2**attempt),
  with jitter (between half and all of it, so endpoints coming back are not hit by every
  delivery at once), until the event is `max_age_s` old (72 h by default): then the
  delivery is failed. Stripe retries for up to 3 days; WeChat Pay 15 times over 24 h.
- Every request is signed (quickpay_sdk.webhooks.sign_webhook, the definition partners
  verify with): with the endpoint's secret and, during a rotation's overlap, the previous one.
"""

from __future__ import annotations

import random

from quickpay_sdk.webhooks import SIGNATURE_HEADER, sign_webhook

__all__ = [
    "DELIVERY_TIMEOUT_S",
    "MAX_AGE_S_DEFAULT",
    "RETRY_BASE_DELAY_S",
    "RETRY_MAX_DELAY_S",
    "is_success",
    "next_attempt",
    "retry_delay_ms",
    "signature_headers",
]

DELIVERY_TIMEOUT_S = 10.0
RETRY_BASE_DELAY_S = 5.0
RETRY_MAX_DELAY_S = 3_600.0
MAX_AGE_S_DEFAULT = 72 * 3_600


def retry_delay_ms(attempt: int, rng: random.Random) -> int:
    """The wait after the `attempt`-th failed attempt (1 for the first)."""
    ceiling_s = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** min(attempt - 1, 30))
    return int(ceiling_s * 1000 * (0.5 + 0.5 * rng.random()))


def next_attempt(attempt: int, event_created_at_ms: int, now_ms: int, max_age_s: int, rng: random.Random) -> int | None:
    """When to try again after the `attempt`-th failure, or None: give up (failed)."""
    at_ms = now_ms + retry_delay_ms(attempt, rng)
    if at_ms - event_created_at_ms > max_age_s * 1000:
        return None
    return at_ms


def signature_headers(body: bytes, secrets: list[str], now_s: int) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign_webhook(body, secrets, now_s)}


def is_success(status: int) -> bool:
    return 200 <= status < 300
