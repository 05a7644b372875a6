"""The calibration server: the cheapest request our HTTP stack can serve.

`quickpay bench` measures this server with the same generator, the same request bytes and the
same gates as quickpay itself, in the same run, so that quickpay's figures can be stated as
ratios that travel between machines (H = its max sustained rate, h = its CPU per request).

One process, aiohttp's `web.Application` on uvloop (the stack quickpay's gateway uses), access
log off, no auth, no I/O: a POST's body is read (not parsed) and answered 201 with a JSON body
of the same size as a payment resource. Any other method or path is aiohttp's own 404/405.

    python -m loadtest.hello --port 18081 [--response-bytes 700] [--server app|low-level|null]

`--server low-level` serves the same answer from aiohttp's low-level server (`web.Server`,
a bare handler: no application, router or middleware), the handler an independent
generator (wrk) is compared against. `--server null` is not HTTP-framework code at all: an
asyncio protocol on uvloop that finds each request's end (head, then Content-Length bytes)
and writes one canned answer. It costs almost nothing per request, so a generator's rate
against it is the generator's own ceiling on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

__all__ = ["PAYMENT_RESOURCE_EXAMPLE", "SERVERS", "NullHttp", "build_app", "build_low_level", "main", "response_body"]

# What GET /v1/quick-payments/{id} shows for a bench payment (the load's shape: 1.00 CNY to the
# partner's settlement account, fraud decision allow with no hits); only its size matters.
PAYMENT_RESOURCE_EXAMPLE: dict[str, Any] = {
    "payment_id": "pay_0123456789abcdef0123456789abcdef_0",
    "status": "AcceptedSettlementCompleted",
    "amount": "1.00",
    "currency": "CNY",
    "agreement_id": "agr_0123456789abcdef0123",
    "debtor_account": "acc_0123456789abcdef0123",
    "creditor_account": "set_ptn_0123456789abcdef",
    "reference": "bench 0123456789abcdef012345",
    "created_at": "2026-11-24T00:00:00.000Z",
    "reasons": [],
    "fraud": {"decision": "allow", "score": 0, "reasons": [], "reason_codes": []},
    "risk": {},
}
RESPONSE_BYTES_MAX = 1_000_000
REQUEST_BYTES_MAX = 1_048_576


def response_body(size_bytes: int | None = None) -> bytes:
    """A JSON object of exactly `size_bytes` bytes (default: the example payment resource)."""
    base = json.dumps(PAYMENT_RESOURCE_EXAMPLE, separators=(",", ":")).encode()
    if size_bytes is None:
        return base
    if not len(b'{"pad":""}') <= size_bytes <= RESPONSE_BYTES_MAX:
        raise ValueError(f"response size must be between 10 and {RESPONSE_BYTES_MAX} bytes")
    body = b'{"pad":"' + b"x" * (size_bytes - len(b'{"pad":""}')) + b'"}'
    assert len(body) == size_bytes
    return body


def build_app(body: bytes) -> Any:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=body, content_type="application/json")

    app = web.Application(client_max_size=REQUEST_BYTES_MAX)
    app.router.add_post("/{tail:.*}", hello)
    return app


SERVERS = ("app", "low-level", "null")
# The null server's bound on one request's head: past it, the connection is closed.
NULL_HEAD_BYTES_MAX = 64 * 1024


def build_low_level(body: bytes) -> Any:
    """aiohttp's low-level server: one handler, no Application, router or middleware."""
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(status=201, body=body, content_type="application/json")

    return web.Server(handler, access_log=None, client_max_size=REQUEST_BYTES_MAX)


class NullHttp(asyncio.Protocol):
    """An asyncio protocol that answers every HTTP/1.1 request on a keep-alive connection
    with `answer`, pipelined requests included. It parses only what it must: the end of the
    head and a Content-Length. Bounded: a head over NULL_HEAD_BYTES_MAX or a body over
    REQUEST_BYTES_MAX closes the connection."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        answers = 0
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > NULL_HEAD_BYTES_MAX:
                    self.transport.close()
                    return
                break
            length = _content_length(bytes(buffer[:end]))
            if length is None or length > REQUEST_BYTES_MAX:
                self.transport.close()
                return
            total = end + 4 + length
            if len(buffer) < total:
                break
            del buffer[:total]
            answers += 1
        if answers:
            self.transport.write(self.answer * answers)


def _content_length(head: bytes) -> int | None:
    """The head's Content-Length (0 when there is none); None when it is not a number."""
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    stop = lower.find(b"\r\n", start)
    value = lower[start : stop if stop >= 0 else len(lower)].strip()
    return int(value) if value.isdigit() else None


def null_answer(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.hello", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--response-bytes",
        type=int,
        default=None,
        help="answer body size (default: the size of the example payment resource)",
    )
    parser.add_argument("--server", choices=SERVERS, default="app", help="what answers (default app)")
    args = parser.parse_args(argv)
    import uvloop
    from aiohttp import web

    body = response_body(args.response_bytes)
    print(f"hello: {args.server} server on {args.host}:{args.port}, {len(body)}-byte answers", flush=True)
    if args.server != "app":
        uvloop.run(_serve(args.server, args.host, args.port, body))
        return
    web.run_app(
        build_app(body),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        handle_signals=True,
    )


async def _serve(server: str, host: str, port: int, body: bytes) -> None:
    """The low-level or the null server, until SIGTERM or SIGINT."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if server == "null":
        answer = null_answer(body)
        listener = await loop.create_server(lambda: NullHttp(answer), host, port, backlog=4096)
        async with listener:
            await stop.wait()
        return
    from aiohttp import web

    runner = web.ServerRunner(build_low_level(body), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
