"""What the gateway reads from a request: body limits and readers, the body hash an
idempotency key is checked against, and the small parsers of paths, queries and cursors."""

from __future__ import annotations

import base64
import hashlib
import re

import msgspec
from aiohttp import web

from kernel.limits import (
    BATCH_BODY_MAX_BYTES,
    BODY_MAX_BYTES,
    CURSOR_MAX_CHARS,
    PAGE_LIMIT_MAX,
)
from kernel.money import INT64_MAX

from .errors import ApiError, field_error

QUERY_TEXT_MAX = 200

# Printable ASCII (space to tilde): what an idempotency key, an interaction id or a
# bearer token may hold.
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
# Ids in paths: the shapes kernel.ids makes (prefix, ASCII id characters, bounded).
_ACCOUNT_ID = re.compile(r"(acc|set|sys)_[A-Za-z0-9_\-]{1,60}")
_AGREEMENT_ID = re.compile(r"agr_[A-Za-z0-9_\-]{1,60}")
_PARTNER_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")
_WEBHOOK_ID = re.compile(r"whe_[0-9a-f]{20}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def is_printable_ascii(text: str, max_chars: int) -> bool:
    return len(text) <= max_chars and _PRINTABLE_ASCII.fullmatch(text) is not None


def body_hash(*parts: object) -> str:
    return hashlib.blake2b(msgspec.msgpack.encode(parts), digest_size=16).hexdigest()


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > BODY_MAX_BYTES:
        raise ApiError(413, "QP.Body.TooLarge", f"the request body exceeds {BODY_MAX_BYTES} bytes")
    body = await request.read()
    if body and request.content_type != "application/json":
        raise field_error(
            415, "QP.Body.UnsupportedMediaType", "the request body must be application/json", "header.content-type"
        )
    return body


async def read_batch_body(request: web.Request) -> bytes:
    """The batch body, read up to its own bound (BATCH_BODY_MAX_BYTES, not the app's
    64 KiB client_max_size, which request.read() would apply)."""
    limit = BATCH_BODY_MAX_BYTES
    too_large = ApiError(413, "QP.Body.TooLarge", f"the request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    if body and request.content_type != "application/json":
        raise field_error(
            415, "QP.Body.UnsupportedMediaType", "the request body must be application/json", "header.content-type"
        )
    return bytes(body)


# Fraud rule ids and list names are identifiers of the rule language (fraud/parser.py).
# The audit trail's author in a query: the body's `author` rule (gateway/schemas.py).
_AUTHOR = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,100}")
RULE_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def ascii_int(text: str) -> int | None:
    """A non-negative int of 1-18 ASCII digits (so it always fits int64), else None.

    str.isdigit() and int() accept Unicode digits ("²", "٣", fullwidth "１"), int()
    accepts "1_0", " 1" and signs: partner input gets none of that."""
    return int(text) if _ASCII_DIGITS.fullmatch(text) is not None else None


def _page_limit(request: web.Request) -> int:
    limit = ascii_int(request.query.get("limit", "50"))
    if limit is None:
        raise field_error(400, "QP.Query.Invalid", "limit must be an integer", "query.limit")
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise field_error(400, "QP.Query.Invalid", f"limit must be between 1 and {PAGE_LIMIT_MAX}", "query.limit")
    return limit


def _encode_agreement_cursor(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([key[0], key[1]])).decode().rstrip("=")


def _decode_agreement_cursor(text: str | None) -> tuple[int, str] | None:
    """An agreements page's cursor: the (created_at_ms, agreement id) the next page starts below."""
    if not text:
        return None
    try:
        if len(text) > CURSOR_MAX_CHARS or not text.isascii():
            raise ValueError("cursor too long or not ASCII")
        raw = msgspec.json.decode(base64.urlsafe_b64decode(text.encode() + b"=="))
        if (
            type(raw) is not list
            or len(raw) != 2
            or type(raw[0]) is not int
            or not 0 <= raw[0] <= INT64_MAX
            or type(raw[1]) is not str
            or _AGREEMENT_ID.fullmatch(raw[1]) is None
        ):
            raise ValueError("bad cursor")
    except Exception:
        raise field_error(400, "QP.Cursor.Invalid", "the cursor is not valid", "query.cursor") from None
    return raw[0], raw[1]


def _decode_cursor(text: str | None, shards: list[int]) -> dict[int, int]:
    if not text:
        return {}
    cursor: dict[int, int] = {}
    try:
        if len(text) > CURSOR_MAX_CHARS or not text.isascii():
            raise ValueError("cursor too long or not ASCII")
        raw = msgspec.json.decode(base64.urlsafe_b64decode(text.encode() + b"=="))
        for k, v in raw.items():
            # Positions are journal seqs: ASCII shard numbers, positive int64 values
            # (a bigger one cannot be encoded for the shard or bound in PostgreSQL).
            shard = ascii_int(k)
            if shard is None or type(v) is not int or not 0 < v <= INT64_MAX:
                raise ValueError("bad cursor entry")
            cursor[shard] = v
    except Exception:
        raise field_error(400, "QP.Cursor.Invalid", "the cursor is not valid", "query.cursor") from None
    if any(s not in shards for s in cursor):
        raise field_error(400, "QP.Cursor.Invalid", "the cursor is not valid", "query.cursor")
    return cursor


def _encode_cursor(cursor: dict[int, int]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode({str(k): v for k, v in cursor.items()})).decode().rstrip("=")
