"""Request bodies, validated by msgspec while decoding (one pass, in C)."""
from __future__ import annotations

from typing import Annotated

import msgspec

from .errors import ApiError

__all__ = ["QuickPaymentRequest", "Risk", "AgreementRequest", "PartnerRequest", "AccountRequest",
           "FundingRequest", "RulesRequest", "ListChangeRequest", "decode_body"]

# Patterns end in \Z, not $: msgspec matches with re.search, where "$" also matches
# before a final newline ("acc_1\n" would pass). gateway/openapi.py writes them as "$"
# for JSON Schema (ECMA-262), where "$" is the end.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+\Z")]
AmountText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
# One-line text: no C0/C1 control characters (PostgreSQL refuses NUL in text, and the
# rest make no sense in a name, a reference or a list value).
LINE = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
# Multi-line text (rule files): tab, newline and carriage return allowed, no other control.
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*\Z"


Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=140, pattern=LINE)]


class Risk(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=LINE)] | None = None
    ip: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=LINE)] | None = None


class QuickPaymentRequest(msgspec.Struct, forbid_unknown_fields=True):
    agreement_id: Id
    amount: AmountText
    currency: CurrencyCode
    creditor_account: Id
    reference: Reference
    risk: Risk | None = None


class AgreementRequest(msgspec.Struct, forbid_unknown_fields=True):
    debtor_account: Id
    currency: CurrencyCode
    per_payment_limit: AmountText
    daily_limit: AmountText


class PartnerRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=LINE)]
    currency: CurrencyCode = "CNY"


class AccountRequest(msgspec.Struct, forbid_unknown_fields=True):
    currency: CurrencyCode = "CNY"


class FundingRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: AmountText
    currency: CurrencyCode
    reference: Reference = "funding"


class RulesRequest(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000_000, pattern=TEXT)]
    author: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=LINE)] = "admin"
    activate: bool = True
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=LINE)] = "<api>"


class ListChangeRequest(msgspec.Struct, forbid_unknown_fields=True):
    add: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=LINE)]] = []
    remove: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=LINE)]] = []
    author: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=LINE)] = "admin"


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode_body(body: bytes, schema: type) -> object:
    decoder = _decoders.get(schema)
    if decoder is None:
        decoder = _decoders[schema] = msgspec.json.Decoder(schema)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = message.rpartition(" - at `")[2].rstrip("`") if " - at `" in message else "$"
        if message.startswith("Object missing required field"):
            code, path = "QP.Field.Missing", f"{at}.{message.split('`')[1]}"
        else:
            code, path = "QP.Field.Invalid", at
        raise ApiError(400, code, "the request body is not valid", [{"code": code, "message": message, "path": path}])
    except msgspec.DecodeError as exc:
        raise ApiError(400, "QP.Body.MalformedJSON", "the request body is not valid JSON",
                       [{"code": "QP.Body.MalformedJSON", "message": str(exc), "path": "$"}])
