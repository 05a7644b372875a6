"""Request bodies, validated by msgspec while decoding (one pass, in C)."""
from __future__ import annotations

from typing import Annotated

import msgspec

from .errors import ApiError

__all__ = ["QuickPaymentRequest", "Risk", "AgreementRequest", "PartnerRequest", "AccountRequest",
           "FundingRequest", "RulesRequest", "ListChangeRequest", "decode_body"]

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
AmountText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=140)]


class Risk(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    ip: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


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
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    currency: CurrencyCode = "CNY"


class AccountRequest(msgspec.Struct, forbid_unknown_fields=True):
    currency: CurrencyCode = "CNY"


class FundingRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: AmountText
    currency: CurrencyCode
    reference: Reference = "funding"


class RulesRequest(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000_000)]
    author: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "admin"
    activate: bool = True
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "<api>"


class ListChangeRequest(msgspec.Struct, forbid_unknown_fields=True):
    add: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]] = []
    remove: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]] = []
    author: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "admin"


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
