"""Request bodies, validated by msgspec while decoding (one pass, in C)."""

from __future__ import annotations

import datetime
import unicodedata
from typing import Annotated, Literal

import msgspec

from kernel.limits import (
    BATCH_ITEMS_MAX,
    CONSENT_STATE_MAX_CHARS,
    LIST_CHANGE_VALUES_MAX,
    REDIRECT_URI_MAX_CHARS,
    REDIRECT_URIS_MAX,
)

from .errors import ApiError

__all__ = [
    "BATCH_ITEMS_MAX",
    "IDEMPOTENCY_KEY",
    "LIST_CHANGE_VALUES_MAX",
    "MULTILINE_TEXT",
    "SAFE_TEXT",
    "AccountRequest",
    "AgreementRequest",
    "FundingRequest",
    "ListChangeRequest",
    "PartnerActionRequest",
    "PartnerRequest",
    "PartnerSecretRotationRequest",
    "PeriodicLimitRequest",
    "QuickPaymentBatchItem",
    "QuickPaymentBatchRequest",
    "QuickPaymentRequest",
    "RateLimitRequest",
    "RefundRequest",
    "Risk",
    "RotateSecretRequest",
    "RulesRequest",
    "WebhookEndpointRequest",
    "decode_body",
]

# Every partner value is checked here against what the ledger and PostgreSQL can store
# (see ledger/validate.py, the shard's own line): ids are ASCII of a known shape, text
# has no control characters (NUL would stop a shard's batch write), every length is
# bounded in characters, which bounds UTF-8 bytes at four per character. The JSON
# decoder itself refuses invalid UTF-8 and lone surrogates.
_ID_CHARS = r"[A-Za-z0-9_\-]"
# Patterns end in \Z, not $: msgspec matches with re.search, where "$" also matches
# before a final newline ("agr_x\n" would pass `^...$`). gateway/openapi/ writes them
# as "$" for JSON Schema (ECMA-262), where "$" is the very end.
_END = r"\Z"
# One-line text: no C0/C1 control characters or DEL (PostgreSQL refuses NUL in text,
# and the rest make no sense in a name, a reference or a list value).
SAFE_TEXT = r"^[^\x00-\x1f\x7f-\x9f]+\Z"
# A rule file may hold tabs and newlines (and CR), but no other control characters.
MULTILINE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+\Z"


def _text(max_chars: int, what: str) -> msgspec.Meta:
    return msgspec.Meta(
        min_length=1,
        max_length=max_chars,
        pattern=SAFE_TEXT,
        description=f"{what}: 1-{max_chars} characters (at most {4 * max_chars} UTF-8 bytes), no control characters",
    )


def _nfc(value: str, max_chars: int, name: str) -> str:
    """Normalise, then validate: text is stored in Unicode NFC, and its length limit holds
    for the stored form (NFC can lengthen a few characters: U+0958 becomes two). Called from
    the Structs' __post_init__, so a refusal is a 400 at the field's object, like any other."""
    if value.isascii():
        return value
    value = unicodedata.normalize("NFC", value)
    if len(value) > max_chars:
        raise ValueError(f"{name} is longer than {max_chars} characters once in Unicode NFC")
    return value


Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=rf"^{_ID_CHARS}+{_END}")]
AgreementId = Annotated[
    str,
    msgspec.Meta(
        min_length=5, max_length=64, pattern=rf"^agr_{_ID_CHARS}+{_END}", description="an agreement id (agr_...)"
    ),
]
AccountId = Annotated[
    str,
    msgspec.Meta(
        min_length=5,
        max_length=64,
        pattern=rf"^(acc|set|sys)_{_ID_CHARS}+{_END}",
        description="an account id (acc_..., or a partner's settlement account set_...)",
    ),
]
AmountText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
Reference = Annotated[str, _text(140, "free text the partner keeps with the payment")]
ShortText = Annotated[str, _text(100, "a name")]
RedirectUri = Annotated[
    str,
    msgspec.Meta(
        min_length=8,
        max_length=REDIRECT_URI_MAX_CHARS,
        pattern=r"^https?://[\x21-\x7e]+\Z",
        description="an absolute https URI (http only to 127.0.0.1 or localhost), no IPv6 literal, no fragment",
    ),
]
ConsentState = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=CONSENT_STATE_MAX_CHARS,
        pattern=r"^[\x20-\x7e]+\Z",
        description="opaque to quickpay, handed back on the redirect: printable ASCII",
    ),
]
Phone = Annotated[
    str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{6,14}\Z", description="E.164: + and 7-15 digits, e.g. +8613800138000")
]


class Risk(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Annotated[str, _text(128, "the payer's device id")] | None = None
    ip: Annotated[str, _text(64, "the payer's IP address")] | None = None

    def __post_init__(self) -> None:
        if self.device_id is not None:
            self.device_id = _nfc(self.device_id, 128, "device_id")
        if self.ip is not None:
            self.ip = _nfc(self.ip, 64, "ip")


class QuickPaymentRequest(msgspec.Struct, forbid_unknown_fields=True):
    agreement_id: AgreementId
    amount: AmountText
    currency: CurrencyCode
    creditor_account: AccountId
    reference: Reference
    risk: Risk | None = None

    def __post_init__(self) -> None:
        self.reference = _nfc(self.reference, 140, "reference")


# An idempotency key in a body: what the x-idempotency-key header may hold once HTTP has
# stripped its outer whitespace (gateway.openapi.IDEMPOTENCY_KEY_PATTERN): 1-64 printable
# ASCII characters, the first and last not a space.
IDEMPOTENCY_KEY = r"^[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?\Z"
IdempotencyKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=IDEMPOTENCY_KEY,
        description="1-64 printable ASCII characters, no outer spaces: the item's x-idempotency-key",
    ),
]


class QuickPaymentBatchItem(QuickPaymentRequest, kw_only=True, forbid_unknown_fields=True):
    """One item of POST /v1/quick-payments/batch: a quick-payment body plus its own key.

    The body hash does not include the key, so an item and a single payment with the
    same key and body are the same payment (a replay, whichever endpoint came first)."""

    idempotency_key: IdempotencyKey


class QuickPaymentBatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope only: each item is decoded and validated on its own (as a
    QuickPaymentBatchItem), so that one bad item fails alone."""

    payments: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1)]


class PeriodicLimitRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Open Banking VRP's PeriodicLimits: at most `amount` in each period. Calendar periods
    start at UTC calendar boundaries (weeks on Monday); Consent periods at the agreement's
    valid_from (else its creation) and repeat from there."""

    period: Literal["Day", "Week", "Month", "Year"]
    amount: AmountText
    alignment: Literal["Calendar", "Consent"] = "Calendar"


# RFC 3339 with an offset (a time without one is refused: which day would it be?).
Timestamp = Annotated[datetime.datetime, msgspec.Meta(tz=True)]


class AgreementRequest(msgspec.Struct, forbid_unknown_fields=True):
    debtor_account: AccountId
    currency: CurrencyCode
    per_payment_limit: AmountText
    # Shorthand for periodic_limits [{"period": "Day", "alignment": "Calendar", "amount": daily_limit}].
    daily_limit: AmountText | None = None
    periodic_limits: Annotated[list[PeriodicLimitRequest], msgspec.Meta(max_length=8)] = []
    valid_from: Timestamp | None = None
    valid_to: Timestamp | None = None
    # The customer-consent redirect (gateway/web/consent.py): one of the partner's registered
    # redirect URIs, exactly; `state` comes back unchanged on the redirect.
    redirect_uri: RedirectUri | None = None
    state: ConsentState | None = None


class AuthorisationLinkRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Another consent-page link for an agreement still AwaitingAuthorisation."""

    redirect_uri: RedirectUri
    state: ConsentState | None = None


class WebhookEndpointRequest(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[
        str,
        msgspec.Meta(
            min_length=8,
            max_length=2048,
            pattern=r"^https?://[\x21-\x7e]+\Z",
            description="http(s) URL; loopback, private and link-local addresses are "
            "refused unless the stack allows them",
        ),
    ]
    events: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]


class RotateSecretRequest(msgspec.Struct, forbid_unknown_fields=True):
    # A whole number of seconds; a float because JSON Schema's integer includes 600.0.
    overlap_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86_400)] = 86_400


class RateLimitRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Whole numbers; decoded as floats because JSON Schema's integer includes 7658.0 (the
    gateway refuses a fraction with 400)."""

    requests_per_s: Annotated[float, msgspec.Meta(ge=1, le=10_000_000)]
    burst: Annotated[float, msgspec.Meta(ge=1, le=10_000_000)]


class RefundRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: AmountText | None = None  # default: what remains of the payment
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    reference: Reference | None = None

    def __post_init__(self) -> None:
        if self.reference is not None:
            self.reference = _nfc(self.reference, 140, "reference")


class PartnerRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: ShortText
    currency: CurrencyCode = "CNY"

    def __post_init__(self) -> None:
        self.name = _nfc(self.name, 100, "name")


class PartnerActionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Who cuts a partner off (or lets it back in), and why: both go into the audit trail."""

    actor: ShortText = "admin"
    reason: Reference | None = None

    def __post_init__(self) -> None:
        self.actor = _nfc(self.actor, 100, "actor")
        if self.reason is not None:
            self.reason = _nfc(self.reason, 140, "reason")


class PartnerSecretRotationRequest(PartnerActionRequest, kw_only=True, forbid_unknown_fields=True):
    # Whole seconds, up to 30 days; 0 retires the old secret at once. A float because JSON
    # Schema's integer includes 600.0 (the gateway refuses a fraction with 400).
    overlap_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86_400)] = 86_400


class AccountRequest(msgspec.Struct, forbid_unknown_fields=True):
    currency: CurrencyCode = "CNY"
    # Where the bank sends the customer's one-time codes (consent page, portal).
    phone: Phone | None = None


class PhoneRequest(msgspec.Struct, forbid_unknown_fields=True):
    phone: Phone | None


class RedirectUrisRequest(msgspec.Struct, forbid_unknown_fields=True):
    redirect_uris: Annotated[list[RedirectUri], msgspec.Meta(max_length=REDIRECT_URIS_MAX)]


class FundingRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: AmountText
    currency: CurrencyCode
    reference: Reference = "funding"

    def __post_init__(self) -> None:
        self.reference = _nfc(self.reference, 140, "reference")


class RulesRequest(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000_000, pattern=MULTILINE_TEXT)]
    author: ShortText = "admin"
    activate: bool = True
    filename: Annotated[str, _text(200, "where the rules came from")] = "<api>"

    def __post_init__(self) -> None:
        self.author = _nfc(self.author, 100, "author")
        self.filename = _nfc(self.filename, 200, "filename")


ListValue = Annotated[str, _text(128, "a list value")]


class ListChangeRequest(msgspec.Struct, forbid_unknown_fields=True):
    add: Annotated[list[ListValue], msgspec.Meta(max_length=LIST_CHANGE_VALUES_MAX)] = []
    remove: Annotated[list[ListValue], msgspec.Meta(max_length=LIST_CHANGE_VALUES_MAX)] = []
    author: ShortText = "admin"

    def __post_init__(self) -> None:
        self.add = [_nfc(value, 128, "a list value") for value in self.add]
        self.remove = [_nfc(value, 128, "a list value") for value in self.remove]
        self.author = _nfc(self.author, 100, "author")


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
        raise ApiError(
            400, code, "the request body is not valid", [{"code": code, "message": message, "path": path}]
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # UnicodeDecodeError: the body is not UTF-8 (msgspec raises it, not DecodeError).
        raise ApiError(
            400,
            "QP.Body.MalformedJSON",
            "the request body is not valid JSON",
            [{"code": "QP.Body.MalformedJSON", "message": str(exc)[:200], "path": "$"}],
        ) from None
