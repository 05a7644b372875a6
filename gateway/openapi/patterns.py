"""The document's patterns: the exact amount grammar of `kernel.money`, the id shapes of
`kernel.ids`, the idempotency key rule, msgspec's patterns rewritten for ECMA-262, the
per-currency constraints of a request body, and the shapes answers share."""

from __future__ import annotations

import copy
import functools
from typing import Any

from kernel.money import CURRENCY_EXPONENTS, INT64_MAX


# ---- patterns -----------------------------------------------------------------------
def _digits_le(limit: str, *, first_nonzero: bool) -> list[str]:
    """Alternatives matching the len(limit)-digit strings whose value is <= limit.

    With `first_nonzero` the first digit is 1-9 (no leading zero)."""
    alternatives = []
    for i, ch in enumerate(limit):
        low = 1 if (first_nonzero and i == 0) else 0
        high = int(ch) - 1
        if high >= low:
            digit = str(low) if high == low else f"[{low}-{high}]"
            rest = len(limit) - i - 1
            alternatives.append(limit[:i] + digit + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(limit)
    return alternatives


def _integer_le(limit: int) -> str:
    """A regex (no anchors) for the decimal integers 1..limit written without leading zeros."""
    assert limit >= 1
    text = str(limit)
    alternatives = []
    if len(text) > 1:
        alternatives.append(f"[1-9][0-9]{{0,{len(text) - 2}}}" if len(text) > 2 else "[1-9]")
    alternatives.extend(_digits_le(text, first_nonzero=True))
    return "(?:" + "|".join(alternatives) + ")"


@functools.cache
def amount_pattern(exponent: int) -> str:
    """The exact language `kernel.money.parse_amount` accepts for a currency with `exponent`.

    A decimal string, no sign, no leading zeros, at most `exponent` decimals, whose value
    in minor units is in 1..INT64_MAX. Tested against parse_amount in tests/test_schemathesis.py.
    """
    if exponent == 0:
        return f"^{_integer_le(INT64_MAX)}$"
    whole_max, frac_max = divmod(INT64_MAX, 10**exponent)
    branches = [
        # 1 .. whole_max-1 with any fraction
        f"{_integer_le(whole_max - 1)}(?:\\.[0-9]{{1,{exponent}}})?",
        # 0.x with at least one nonzero decimal
        "0\\.(?:" + "|".join(f"{'0' * k}[1-9][0-9]{{0,{exponent - k - 1}}}" for k in range(exponent)) + ")",
    ]
    # whole_max itself: the fraction (right-padded to `exponent` digits) may not exceed frac_max
    fractions = []
    for length in range(1, exponent + 1):
        bound = frac_max // 10 ** (exponent - length)
        fractions.extend(_digits_le(str(bound).zfill(length), first_nonzero=False))
    branches.append(f"{whole_max}(?:\\.(?:" + "|".join(fractions) + "))?")
    return "^(?:" + "|".join(branches) + ")$"


# 1-64 printable ASCII; HTTP strips a header value's outer whitespace, so the
# document asks for none (a key " a" would arrive as "a").
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?$"
PAYMENT_ID_PATTERN = r"^pay_[0-9a-f]{32}_[0-9]{1,4}$"
REFUND_ID_PATTERN = r"^ref_[0-9a-f]{32}_[0-9]{1,4}$"
AGREEMENT_ID_PATTERN = r"^agr_[0-9a-f]{20}$"
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
VERSION_PATTERN = r"^[0-9a-fA-F]{8,64}$"  # a sha256 id, or 8+ of its first hex digits
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # gateway.requests.RULE_IDENTIFIER
DATE_TIME = {"type": "string", "format": "date-time"}


def _ecma(schema: Any) -> Any:
    """msgspec patterns end in Python's `\\Z` (`$` also matches before a final newline in
    Python); JSON Schema regexes are ECMA-262, where `$` is the end. Rewrite in place."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str) and value.endswith("\\Z"):
                schema[key] = value[:-2] + "$"
            else:
                _ecma(value)
    elif isinstance(schema, list):
        for item in schema:
            _ecma(item)
    return schema


def _by_currency(
    schema: dict[str, Any], amount_fields: tuple[str, ...], nested: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """Constrain `currency` to the table and each amount to its currency's grammar (also the
    amounts in arrays of objects: `nested` holds (array field, amount field) pairs)."""
    schema = copy.deepcopy(schema)
    schema["properties"]["currency"] = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
    for name in amount_fields:
        schema["properties"][name] = {"type": "string", "examples": ["12.34"]}
    by_exponent: dict[int, list[str]] = {}
    for code, exponent in sorted(CURRENCY_EXPONENTS.items()):
        by_exponent.setdefault(exponent, []).append(code)
    # When `currency` is absent the server's default applies (CNY), see AccountRequest.
    schema["anyOf"] = [
        {
            "properties": {
                "currency": {"enum": codes},
                **{name: {"pattern": amount_pattern(exponent)} for name in amount_fields},
                **{
                    array: {"items": {"properties": {name: {"pattern": amount_pattern(exponent)}}}}
                    for array, name in nested
                },
            }
        }
        for exponent, codes in sorted(by_exponent.items())
    ]
    return schema


# ---- shapes shared by the answers' schemas -------------------------------------------------
CURRENCY = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
AMOUNT_OUT = {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?$", "examples": ["12.34"]}
SIGNED_AMOUNT_OUT = {"type": "string", "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"}
ACCOUNT_ID = {"type": "string", "minLength": 1}
TEXT_OR_NULL = {"type": ["string", "null"]}
PAYMENT_STATUS = {"type": "string", "enum": ["AcceptedSettlementCompleted", "AcceptedSettlementInProcess", "Rejected"]}
TRANSFER_STATUS = {"type": "string", "enum": [*PAYMENT_STATUS["enum"], "Succeeded"]}
DATE_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
AGREEMENT_STATUS = {"enum": ["AwaitingAuthorisation", "Authorised", "Rejected", "Suspended", "Revoked", "Expired"]}
VERSION_OR_NULL = {"type": ["string", "null"], "pattern": r"^[0-9a-f]{64}$"}
RULE_SUMMARY = {
    "active_version": VERSION_OR_NULL,
    "enforced_version": VERSION_OR_NULL,
    "consistent": {"type": "boolean"},
    "degraded_shards": {"type": "array", "items": {"type": "integer"}},
}
