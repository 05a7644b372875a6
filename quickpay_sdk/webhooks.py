"""Webhook signatures, one definition for both sides: the server signs with
`sign_webhook`, partners check with `verify_webhook`. Standard library only, so the
server can import this module without the SDK's HTTP dependencies.

The header is `Quickpay-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, where each
v1 is HMAC-SHA256(secret, "<t>." + raw body) in lowercase hex. While a secret is being
rotated the server signs with both (two v1 entries) and a partner may hold both (two
secrets): one match of any v1 with any secret is enough. The timestamp binds the
signature to a moment, so a captured delivery cannot be replayed outside the tolerance.
Always verify the raw bytes received, before any JSON parsing or re-encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "WebhookVerificationError",
    "compute_signature",
    "sign_webhook",
    "verify_webhook",
]

SIGNATURE_HEADER = "Quickpay-Signature"
DEFAULT_TOLERANCE_S = 300
HEADER_MAX_CHARS = 4096  # a header longer than this is refused unread
HEADER_ENTRIES_MAX = 16  # t, and v1 entries (rotation needs two; unknown schemes count too)
SECRETS_MAX = 16
_TIMESTAMP_DIGITS_MAX = 12  # unix seconds until the year 33658
_HEX = frozenset("0123456789abcdef")


class WebhookVerificationError(ValueError):
    """The delivery is not authentic, not fresh, or not well-formed: answer 400, process nothing."""


def compute_signature(payload: bytes, secret: str, t: int) -> str:
    """Lowercase hex HMAC-SHA256(secret, "<t>." + payload)."""
    return hmac.new(secret.encode("utf-8"), b"%d." % t + payload, hashlib.sha256).hexdigest()


def sign_webhook(payload: bytes, secret: str | Sequence[str], t: int) -> str:
    """The Quickpay-Signature header value for `payload` sent at unix time `t`; with several
    secrets (a rotation), one v1 entry each, in the order given."""
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError("payload must be the raw body bytes")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError("t must be a non-negative integer of unix seconds")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(isinstance(s, str) and s for s in secrets):
        raise ValueError("at least one non-empty secret is needed")
    return ",".join([f"t={t}"] + [f"v1={compute_signature(bytes(payload), s, t)}" for s in secrets])


def _parse_header(header: str) -> tuple[int, list[str]]:
    """(t, [v1 signatures]) from a header value; WebhookVerificationError if malformed."""
    if not isinstance(header, str) or not header or len(header) > HEADER_MAX_CHARS:
        raise WebhookVerificationError("missing or oversized signature header")
    parts = header.split(",")
    if len(parts) > HEADER_ENTRIES_MAX:
        raise WebhookVerificationError("too many entries in the signature header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in parts:
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise WebhookVerificationError("malformed signature header entry")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            # Checked before use: compare_digest refuses non-ASCII str, and a v1 of another
            # length or alphabet can never match anyway.
            value = value.lower()
            if len(value) != 64 or not set(value) <= _HEX:
                raise WebhookVerificationError("malformed v1 signature")
            signatures.append(value)
        # other schemes (v0, a future v2) are ignored
    if len(timestamps) != 1:
        raise WebhookVerificationError("the signature header needs exactly one t=")
    text = timestamps[0]
    if not (text.isascii() and text.isdigit()) or len(text) > _TIMESTAMP_DIGITS_MAX:
        raise WebhookVerificationError("malformed timestamp")
    if not signatures:
        raise WebhookVerificationError("no v1 signature in the header")
    return int(text), signatures


def verify_webhook(
    payload: bytes,
    header: str,
    secrets: Sequence[str],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> dict[str, Any]:
    """Check a delivery and return its event (the parsed JSON object).

    payload: the raw request body; header: the Quickpay-Signature value; secrets: every
    secret currently valid (old and new during a rotation). Raises WebhookVerificationError
    when the header is malformed, the timestamp is more than tolerance_s away from now_s
    (default: the current time) in either direction, no signature matches any secret
    (compared in constant time), or the body is not a JSON object.
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError("payload must be the raw body bytes, not a parsed or decoded body")
    if isinstance(secrets, (str, bytes)):
        raise TypeError("secrets is a sequence of secrets, e.g. [secret]")
    candidates = list(secrets)
    if not candidates or len(candidates) > SECRETS_MAX or not all(isinstance(s, str) and s for s in candidates):
        raise ValueError(f"give 1-{SECRETS_MAX} non-empty secrets")
    if not tolerance_s >= 0:
        raise ValueError("tolerance_s must be >= 0")
    t, signatures = _parse_header(header)
    now = time.time() if now_s is None else now_s
    if abs(now - t) > tolerance_s:
        raise WebhookVerificationError("the timestamp is outside the tolerance (replayed or clock skew)")
    body = bytes(payload)
    expected = [compute_signature(body, secret, t) for secret in candidates]
    # Every pair is compared (no early exit), each in constant time.
    matched = False
    for mac in expected:
        for signature in signatures:
            matched |= hmac.compare_digest(mac, signature)
    if not matched:
        raise WebhookVerificationError("no signature matches")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the payload is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the payload is not a JSON object")
    return event
