"""The request bodies' schemas: the msgspec Structs that validate them, plus what a Struct
cannot say (the currency table, each amount's grammar by currency, bounds, defaults)."""

from __future__ import annotations

from typing import Any

import msgspec

from kernel.money import CURRENCY_EXPONENTS

from .patterns import _by_currency, _ecma, amount_pattern


def request_body_schemas() -> dict[str, Any]:
    """The components of every request body, by Struct name."""
    from .. import schemas

    structs = [
        schemas.QuickPaymentRequest,
        schemas.QuickPaymentBatchItem,
        schemas.AgreementRequest,
        schemas.PartnerRequest,
        schemas.AccountRequest,
        schemas.FundingRequest,
        schemas.RulesRequest,
        schemas.ListChangeRequest,
        schemas.RefundRequest,
        schemas.RateLimitRequest,
        schemas.WebhookEndpointRequest,
        schemas.RotateSecretRequest,
        schemas.PartnerActionRequest,
        schemas.PartnerSecretRotationRequest,
        schemas.RedirectUrisRequest,
        schemas.PhoneRequest,
        schemas.AuthorisationLinkRequest,
    ]
    _, components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    components = _ecma(components)
    components["QuickPaymentRequest"] = _by_currency(components["QuickPaymentRequest"], ("amount",))
    components["QuickPaymentBatchItem"] = _by_currency(components["QuickPaymentBatchItem"], ("amount",))
    components["QuickPaymentBatchItem"]["description"] = (
        "One item of a quick-payment batch: a QuickPaymentRequest plus its idempotency_key (the header's "
        "rule). The key is not part of the body compared on a retry, so an item and a single payment with "
        "the same key and body are the same payment."
    )
    components["RotateSecretRequest"]["properties"]["overlap_s"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": 7 * 86_400,
        "default": 86_400,
    }
    components["PartnerSecretRotationRequest"]["properties"]["overlap_s"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": 30 * 86_400,
        "default": 86_400,
        "description": "seconds the previous secret stays valid (0: retired at once)",
    }
    for name in ("requests_per_s", "burst"):
        components["RateLimitRequest"]["properties"][name] = {"type": "integer", "minimum": 1, "maximum": 10_000_000}
    components["AgreementRequest"] = _by_currency(
        components["AgreementRequest"], ("per_payment_limit", "daily_limit"), nested=(("periodic_limits", "amount"),)
    )
    components["AgreementRequest"]["properties"]["daily_limit"] = {
        "type": ["string", "null"],
        "description": "shorthand for a periodic limit {Day, Calendar}",
    }
    components["AgreementRequest"]["description"] = (
        "A mandate the customer must authorise (through the bank) before any payment. At most one periodic "
        "limit per period and alignment (daily_limit counts as Day/Calendar), else 422 "
        "QP.Agreement.DuplicateLimit; valid_from after valid_to, or before 1970, is 422 "
        "QP.Agreement.InvalidValidity. Times are RFC 3339 with an offset. A partner may have a bounded number "
        "of agreements awaiting authorisation (not expired) per customer account and in total; one more is 409 "
        "QP.Agreement.TooManyPending."
    )
    # A refund's amount is in its payment's currency, which the request does not name: the
    # grammar of the two-decimal currencies; more decimals than the payment's currency has is 422.
    components["RefundRequest"]["properties"]["amount"] = {
        "type": ["string", "null"],
        "pattern": amount_pattern(2),
        "description": "default: what remains of the payment",
    }
    components["FundingRequest"] = _by_currency(components["FundingRequest"], ("amount",))
    for name in ("PartnerRequest", "AccountRequest"):
        components[name]["properties"]["currency"] = {
            "type": "string",
            "enum": sorted(CURRENCY_EXPONENTS),
            "default": "CNY",
        }
    return components
