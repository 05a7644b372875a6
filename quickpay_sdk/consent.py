"""The customer-consent redirect, the partner's side (standard library only).

    state = new_state()                        # keep it in the customer's session
    agreement = qp.create_agreement_with_redirect(account, "CNY", "50.00",
                                                  redirect_uri=CALLBACK, state=state, daily_limit="200.00")
    # send the customer's browser to agreement["authorisation_url"]; the bank redirects back to
    # CALLBACK?agreement_id=...&state=...&outcome=authorised|declined
    result = verify_callback(request_url, expected_state=state)   # raises ConsentCallbackError

The state ties the callback to the session that started it (a forged or replayed callback
carries another state, or none); compare it in constant time and only then trust the outcome.
The outcome is a hint: read the agreement (or its webhook) before debiting.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["OUTCOMES", "ConsentCallback", "ConsentCallbackError", "new_state", "verify_callback"]

OUTCOMES = ("authorised", "declined")


class ConsentCallbackError(ValueError):
    """The callback is not one this session started (state missing or different) or is malformed."""


@dataclass(frozen=True)
class ConsentCallback:
    agreement_id: str
    outcome: str
    state: str

    @property
    def authorised(self) -> bool:
        return self.outcome == "authorised"


def new_state() -> str:
    """An unguessable state for one consent journey (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def verify_callback(
    url_or_query: str, expected_state: str, expected_agreement_id: str | None = None
) -> ConsentCallback:
    """Check the redirect the customer came back with: its state equals the one this session
    sent (constant-time), exactly one of each parameter, a known outcome."""
    query = urlsplit(url_or_query).query if "?" in url_or_query or "://" in url_or_query else url_or_query
    params = parse_qs(query, keep_blank_values=True)

    def one(name: str) -> str:
        values = params.get(name, [])
        if len(values) != 1:
            raise ConsentCallbackError(f"the callback needs exactly one {name}")
        return values[0]

    state, agreement_id, outcome = one("state"), one("agreement_id"), one("outcome")
    if not expected_state or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise ConsentCallbackError("the callback's state is not this session's")
    if expected_agreement_id is not None and agreement_id != expected_agreement_id:
        raise ConsentCallbackError("the callback names another agreement")
    if outcome not in OUTCOMES:
        raise ConsentCallbackError(f"unknown outcome {outcome!r}")
    return ConsentCallback(agreement_id, outcome, state)
