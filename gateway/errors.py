"""The one error shape: {"code", "message", "errors": [{"code", "message", "path"}]}."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

__all__ = ["ApiError", "error_response", "field_error"]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


def field_error(status: int, code: str, message: str, path: str) -> ApiError:
    return ApiError(status, code, message, [{"code": code, "message": message, "path": path}])


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message, "errors": error.errors}
    return web.Response(
        status=error.status, body=msgspec.json.encode(body), content_type="application/json", headers=error.headers
    )
