"""Customer consent's API: another authorisation link for a waiting agreement, and the admin
routes (gateway/web/admin.py): redirect URIs, phones, the SMS outbox. The customer's HTML pages (/consent/..., /portal/...) are not API and are not listed."""

from __future__ import annotations

from typing import Any

from kernel.limits import REDIRECT_URIS_MAX

from .operations import LIMIT, _object, _op, _path_param
from .patterns import ACCOUNT_ID_PATTERN, AGREEMENT_ID_PATTERN

__all__ = ["consent_paths", "consent_schemas"]

_PARTNER = _path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")


def consent_schemas() -> dict[str, Any]:
    return {
        "RedirectUris": _object(
            ["partner_id", "redirect_uris"],
            {
                "partner_id": {"type": "string"},
                "redirect_uris": {"type": "array", "maxItems": REDIRECT_URIS_MAX, "items": {"type": "string"}},
            },
        ),
        "AuthorisationLink": _object(
            ["agreement_id", "authorisation_url"],
            {"agreement_id": {"type": "string"}, "authorisation_url": {"type": "string"}},
        ),
        "AccountPhone": _object(
            ["account_id", "phone"], {"account_id": {"type": "string"}, "phone": {"type": ["string", "null"]}}
        ),
        "SmsOutbox": _object(
            ["messages", "next_cursor"],
            {
                "messages": {
                    "type": "array",
                    "items": _object(
                        ["seq", "phone", "account_id", "text", "at"],
                        {
                            "seq": {"type": "integer"},
                            "phone": {"type": "string"},
                            "account_id": {"type": "string"},
                            "text": {"type": "string"},
                            "at": {"type": "string", "format": "date-time"},
                        },
                    ),
                },
                "next_cursor": {"type": "string", "description": "the `after` of the next call"},
            },
        ),
    }


def consent_paths() -> dict[str, Any]:
    # One entry per operation, spelled out (see admin_paths.py).
    return {
        "/v1/agreements/{agreement_id}/authorisation-url": {
            "post": _op(
                "newAuthorisationUrl",
                "Another single-use link to the customer's consent page for an agreement still "
                "AwaitingAuthorisation (at most 5 per agreement)",
                body="AuthorisationLinkRequest",
                ok=(201, "Created", "AuthorisationLink"),
                errors=(404, 409, 422),
                params=[_path_param("agreement_id", AGREEMENT_ID_PATTERN)],
            )
        },
        "/admin/v1/partners/{partner_id}/redirect-uris": {
            "put": _op(
                "setPartnerRedirectUris",
                "Replace the partner's exact redirect URIs for the consent page (https; http only to loopback)",
                security="admin",
                body="RedirectUrisRequest",
                ok=(200, "OK", "RedirectUris"),
                errors=(404, 422),
                params=[_PARTNER],
            ),
            "get": _op(
                "getPartnerRedirectUris",
                "The partner's registered redirect URIs",
                security="admin",
                ok=(200, "OK", "RedirectUris"),
                errors=(404,),
                params=[_PARTNER],
            ),
        },
        "/admin/v1/accounts/{account_id}/phone": {
            "put": _op(
                "setAccountPhone",
                "Set (or, with null, clear) the phone the customer's one-time codes are sent to",
                security="admin",
                body="PhoneRequest",
                ok=(200, "OK", "AccountPhone"),
                errors=(404,),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
            )
        },
        "/admin/v1/sms": {
            "get": _op(
                "listSmsOutbox",
                "The simulated SMS provider's outbox, oldest first (kept 24 hours)",
                security="admin",
                ok=(200, "OK", "SmsOutbox"),
                errors=(400,),
                params=[
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                    {"name": "phone", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64}},
                    {
                        "name": "account_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 64},
                    },
                    LIMIT,
                ],
            )
        },
    }
