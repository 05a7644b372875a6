"""Money as integers in minor units, and the currency table.

Amounts cross the API as decimal strings ("12.34") and live everywhere else as
`int` minor units. Floats never appear: parsing is done on the string's digits.
"""

from __future__ import annotations

import re

__all__ = ["CURRENCY_EXPONENTS", "INT64_MAX", "AmountError", "format_amount", "parse_amount"]

# ISO 4217 exponents. CNY is the channel's currency; the others exist so that a
# currency mismatch and a zero-decimal currency can be exercised.
CURRENCY_EXPONENTS: dict[str, int] = {"CNY": 2, "USD": 2, "EUR": 2, "HKD": 2, "JPY": 0}
INT64_MAX = 2**63 - 1

_AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]{0,19})(?:\.([0-9]{1,18}))?$")


class AmountError(ValueError):
    """An amount string that is not a valid positive amount in its currency."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_amount(text: object, currency: str) -> int:
    """Parse a decimal string into positive minor units of `currency`.

    Raises AmountError with a machine-readable code for every bad input.
    """
    if not isinstance(text, str):
        raise AmountError("QP.Field.Invalid", 'amount must be a decimal string such as "12.34"')
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise AmountError("QP.Currency.Unsupported", f"currency {currency!r} is not supported")
    match = _AMOUNT_RE.fullmatch(text)  # not .match: "$" also matches before a trailing "\n"
    if match is None:
        raise AmountError("QP.Amount.Invalid", 'amount must be a decimal string such as "12.34"')
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > exponent:
        raise AmountError(
            "QP.Amount.TooManyDecimals",
            f"{currency} allows at most {exponent} decimal places",
        )
    scale: int = 10**exponent  # int ** int is typed Any (a negative exponent would give a float)
    minor = int(whole) * scale + int(fraction.ljust(exponent, "0") or "0")
    if minor <= 0:
        raise AmountError("QP.Amount.NotPositive", "amount must be greater than zero")
    if minor > INT64_MAX:
        raise AmountError("QP.Amount.TooLarge", "amount exceeds the largest representable amount")
    return minor


def format_amount(minor: int, currency: str) -> str:
    """Format minor units as the API's decimal string."""
    exponent = CURRENCY_EXPONENTS[currency]
    if exponent == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"
