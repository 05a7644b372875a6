"""Runs one gateway worker process; several share the port with SO_REUSEPORT."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal

import uvloop
from aiohttp import web

from .app import GatewayConfig, create_app

__all__ = ["serve", "serve_app"]

log = logging.getLogger("quickpay.gateway")

# The request line's bound. aiohttp's default (8190 bytes) answers a longer line itself, in
# plain text without an interaction id, before any middleware: `quickpay soak` found that for
# 10,000-character paths. 32 KiB lets such a path (percent-encoded too) reach the app, which
# refuses it in the one error shape; the bound on the line stays.
REQUEST_LINE_MAX_BYTES = 32 * 1024


async def _serve(config: GatewayConfig, host: str, port: int) -> None:
    await serve_app(create_app(config), host, port)


async def serve_app(app: web.Application, host: str, port: int) -> None:
    """Serve `app` on host:port (SO_REUSEPORT) until SIGINT/SIGTERM, then drain."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, max_line_size=REQUEST_LINE_MAX_BYTES)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=4096)
    await site.start()
    gc.freeze()  # start-up objects (routes, schemas, OpenAPI) need no collector visits
    log.info("gateway worker listening on http://%s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Graceful drain: stop accepting, let in-flight requests finish (bounded).
    await runner.shutdown()
    await runner.cleanup()


def serve(config: GatewayConfig, host: str, port: int) -> None:
    uvloop.run(_serve(config, host, port))
