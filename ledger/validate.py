"""What a shard command may carry: checked before a decision touches memory.

The gateway validates every partner value first (gateway/schemas.py); this is the
shard worker's own line (defence in depth). A command that PostgreSQL would refuse
to store (a NUL or a lone surrogate in text, an int beyond int64, an unknown
currency, a non-positive amount) must never reach the batch write: the write would
fail for the whole batch and stop the worker, so one bad request would cost every
partner on the shard. Such a command is refused with BAD_REQUEST, alone, before
its decision mutates anything. Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from kernel.limits import ID_MAX, REFERENCE_MAX
from kernel.money import CURRENCY_EXPONENTS, INT64_MAX
from kernel.timestamps import TIME_MAX_MS, TIME_MIN_MS

__all__ = [
    "DEVICE_ID_MAX",
    "HASH_MAX",
    "ID_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "IP_MAX",
    "NAME_MAX",
    "REFERENCE_MAX",
    "UNSAFE_TEXT",
    "BadCommand",
    "amount",
    "currency",
    "fields",
    "ident",
    "int64",
    "is_safe_text",
    "is_storable_text",
    "text",
    "timestamp_ms",
]

INT64_MIN = -(2**63)
NAME_MAX = 100
DEVICE_ID_MAX = 128
IP_MAX = 64
HASH_MAX = 128

# Control characters (C0, DEL, C1) and lone surrogates: PostgreSQL refuses NUL in
# text, a surrogate cannot be encoded as UTF-8, and the others make no sense in a
# single-line value.
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{ID_MAX}}}")


class BadCommand(ValueError):
    """The command carries a value the ledger cannot store; it is refused alone."""


def is_safe_text(value: object, max_chars: int) -> bool:
    """One line of text as stored: no control characters, at most max_chars, and already
    in Unicode NFC (the gateway normalises before it checks lengths, so a value that is
    not NFC here did not come through it)."""
    return (
        type(value) is str
        and 0 < len(value) <= max_chars
        and UNSAFE_TEXT.search(value) is None
        and unicodedata.is_normalized("NFC", value)
    )


def is_storable_text(value: object) -> bool:
    """Multi-line text (a rule file, a setting): any characters PostgreSQL can store."""
    return type(value) is str and "\x00" not in value and _SURROGATE.search(value) is None


def fields(args: Any, *names: str) -> dict[str, Any]:
    if type(args) is not dict:
        raise BadCommand("arguments must be a map")
    missing = [n for n in names if n not in args]
    if missing:
        raise BadCommand(f"missing {', '.join(missing)}")
    return args


def ident(args: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = args.get(key)
    if value is None and optional:
        return None
    if type(value) is not str or _ID.fullmatch(value) is None:
        raise BadCommand(f"{key} must be 1-{ID_MAX} characters of A-Z a-z 0-9 _ -")
    return value


def text(args: dict[str, Any], key: str, max_chars: int, *, optional: bool = False) -> str | None:
    value = args.get(key)
    if value is None and optional:
        return None
    if not is_safe_text(value, max_chars):
        raise BadCommand(f"{key} must be 1-{max_chars} characters without control characters")
    return value


def int64(args: dict[str, Any], key: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    value = args.get(key)
    if type(value) is not int or not low <= value <= high:
        raise BadCommand(f"{key} must be an integer in [{low}, {high}]")
    return value


def amount(args: dict[str, Any], key: str) -> int:
    """Minor units: positive (the journal's CHECK) and within int64."""
    return int64(args, key, 1, INT64_MAX)


def currency(args: dict[str, Any], key: str = "currency") -> str:
    value = args.get(key)
    if type(value) is not str or value not in CURRENCY_EXPONENTS:
        raise BadCommand(f"{key} must be a supported currency")
    return value


def timestamp_ms(args: dict[str, Any], key: str, *, optional: bool = False) -> int | None:
    """A UTC instant in ms that every reader can render (kernel.timestamps)."""
    if args.get(key) is None and optional:
        return None
    return int64(args, key, TIME_MIN_MS, TIME_MAX_MS)
