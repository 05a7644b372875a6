"""A local webhook receiver for trying webhooks out (README): verifies every delivery with
`verify_webhook` and prints one line per event; answers 400 to anything it cannot verify.

    python -m quickpay_sdk.receiver --port 9000 --secret whsec_...   (or --secret-file F)

It needs aiohttp (the quickpay server's own dependency); the SDK's clients do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .webhooks import SIGNATURE_HEADER, WebhookVerificationError, verify_webhook

BODY_MAX_BYTES = 256 * 1024


def main(argv: list[str] | None = None) -> int:
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="python -m quickpay_sdk.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", action="append", default=[], help="a signing secret (repeat during a rotation)")
    parser.add_argument("--secret-file", help="a file holding the secret")
    args = parser.parse_args(argv)
    secrets = list(args.secret) + ([Path(args.secret_file).read_text().strip()] if args.secret_file else [])
    if not secrets:
        parser.error("give --secret or --secret-file")

    async def hook(request: web.Request) -> web.Response:
        body = await request.content.read(BODY_MAX_BYTES + 1)
        try:
            if len(body) > BODY_MAX_BYTES:
                raise WebhookVerificationError("body too large")
            event = verify_webhook(body, request.headers.get(SIGNATURE_HEADER, ""), secrets)
        except WebhookVerificationError as exc:
            print(json.dumps({"refused": str(exc)}), flush=True)
            return web.Response(status=400)
        obj = event["data"]["object"]
        print(
            json.dumps(
                {
                    "verified": True,
                    "id": event["id"],
                    "type": event["type"],
                    "object": obj.get("payment_id") or obj.get("refund_id") or obj.get("agreement_id"),
                    "status": obj.get("status"),
                }
            ),
            flush=True,
        )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    print(f"receiving on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
