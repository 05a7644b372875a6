"""The one error shape as an aiohttp response (the shape and its exception: kernel/errors.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from kernel.errors import ApiError, field_error

__all__ = ["ApiError", "error_response", "field_error"]


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message, "errors": error.errors}
    return web.Response(
        status=error.status, body=msgspec.json.encode(body), content_type="application/json", headers=error.headers
    )
