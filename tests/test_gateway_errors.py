"""The gateway's error mapping (issue 7 §1): shard errors and unexpected exceptions reach a
partner in the one error shape with x-fapi-interaction-id, never as a bare text 500.

Regression: a shard's OVERLOADED answer and its other errors (ShardError) were not caught
by the middleware, so aiohttp answered a plain-text 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import Stack

from gateway.app import api_middleware
from ledger.client import ShardError, ShardOverloaded, ShardUnavailable


def _app() -> web.Application:
    app = web.Application(middlewares=[api_middleware])

    def raising(exc: BaseException) -> Any:
        async def handler(request: web.Request) -> web.Response:
            raise exc

        return handler

    app.router.add_get("/overloaded", raising(ShardError({"code": "OVERLOADED", "message": "queue is full"})))
    app.router.add_get("/bad", raising(ShardError({"code": "BAD_REQUEST", "message": "reference holds NUL"})))
    app.router.add_get("/internal", raising(ShardError({"code": "INTERNAL", "message": "boom"})))
    app.router.add_get("/unavailable", raising(ShardUnavailable("gone")))
    app.router.add_get("/in-flight", raising(ShardOverloaded("too many")))
    app.router.add_get("/bug", raising(ZeroDivisionError("a bug")))
    app.router.add_get("/ok", raising(KeyError("x")))
    return app


async def _get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with TestClient(TestServer(_app())) as client:
        response = await client.get(path, headers=headers)
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, dict(response.headers), body


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/overloaded", 503, "QP.Service.Unavailable"),
        ("/unavailable", 503, "QP.Service.Unavailable"),
        ("/in-flight", 503, "QP.Service.Unavailable"),
        ("/bad", 400, "QP.Request.Invalid"),
        ("/internal", 500, "QP.Internal"),
        ("/bug", 500, "QP.Internal"),
        ("/ok", 500, "QP.Internal"),
    ],
)
def test_errors_use_the_one_shape(path: str, status: int, code: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="quickpay.gateway"):
        got_status, headers, body = asyncio.run(_get(path, {"x-fapi-interaction-id": "test-1"}))
    assert got_status == status
    assert isinstance(body, dict) and set(body) == {"code", "message", "errors"} and body["code"] == code
    assert headers["x-fapi-interaction-id"] == "test-1"
    if status == 503:
        assert headers["Retry-After"] == "1"
    if status == 500:
        # the partner gets an id, the log has the same id with the traceback
        error_id = body["message"].split()[2].rstrip(";")
        assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records), caplog.text


def test_bad_interaction_id_is_replaced() -> None:
    for given in ("caf\u00e9", "x" * 129, "\u4e2d\u6587"):
        _, headers, _ = asyncio.run(_get("/bad", {"x-fapi-interaction-id": given.encode().decode("latin-1")}))
        assert headers["x-fapi-interaction-id"] != given and headers["x-fapi-interaction-id"].isascii()


def test_numbers_and_payment_ids_are_ascii_only() -> None:
    """Regression: shard_of_payment used str.isdigit(), which accepts "²" that int() refuses
    (a text 500) and "٣" that int() reads as 3."""
    from gateway.app import ascii_int
    from kernel.ids import shard_of_payment

    hexes = "0" * 32
    assert shard_of_payment(f"pay_{hexes}_1", 2) == 1 and shard_of_payment(f"pay_{hexes}_0", 2) == 0
    for tail in ("\u00b2", "\u0663", "\uff11", "01", "-1", "1\n", " 1", "2", "99999999999999999999"):
        assert shard_of_payment(f"pay_{hexes}_{tail}", 2) is None, tail
    assert shard_of_payment("pay_" + "\u0660" * 32 + "_0", 2) is None
    assert [ascii_int(t) for t in ("0", "50", "9" * 18)] == [0, 50, int("9" * 18)]
    for text in ("\u00b2", "\u0663", "\uff11\uff10", "1e3", "-1", "+1", " 1", "1_0", "", "9" * 19, "1\n"):
        assert ascii_int(text) is None, text


# ---- aiohttp's own parser errors, answered before any route: the one error shape too ------
PARSER_CASES = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad method": b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET /healthz HTTP/9.Z\r\nHost: x\r\n\r\n",
    "headers too large": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "request line too long": b"GET /v1/" + b"x" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad content-length": b"POST /v1/quick-payments HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two content-lengths": b"POST /v1/quick-payments HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunked body": b"POST /v1/quick-payments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


def _raw_exchange(stack: Stack, data: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                if len(body) >= int(headers.get("content-length", "0")):
                    return int(lines[0].split()[1]), headers, body
    raise AssertionError(f"no answer to {data[:60]!r}: {answer[:200]!r}")


@pytest.mark.parametrize("case", sorted(PARSER_CASES))
def test_parser_errors_answer_in_the_error_shape(stack: Stack, case: str) -> None:
    status, headers, body = _raw_exchange(stack, PARSER_CASES[case])
    assert 400 <= status < 500, (case, status, body[:200])
    assert headers["content-type"].startswith("application/json"), (case, headers, body[:200])
    error = json.loads(body)
    assert set(error) == {"code", "message", "errors"} and error["code"].startswith("QP."), error
    assert headers.get("x-fapi-interaction-id")
