"""The calibration server: the cheapest request our HTTP stack can serve.

`quickpay bench` measures this server with the same generator, the same request bytes and the
same gates as quickpay itself, in the same run, so that quickpay's figures can be stated as
ratios that travel between machines (H = its max sustained rate, h = its CPU per request).

One process, aiohttp's `web.Application` on uvloop (the stack quickpay's gateway uses), access
log off, no auth, no I/O: a POST's body is read (not parsed) and answered 201 with a JSON body
of the same size as a payment resource. Any other method or path is aiohttp's own 404/405.

    python -m loadtest.hello --port 18081 [--response-bytes 700]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["PAYMENT_RESOURCE_EXAMPLE", "build_app", "main", "response_body"]

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
    args = parser.parse_args(argv)
    import uvloop
    from aiohttp import web

    body = response_body(args.response_bytes)
    print(f"hello: listening on {args.host}:{args.port}, {len(body)}-byte answers", flush=True)
    web.run_app(
        build_app(body),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
