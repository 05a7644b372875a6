"""Runs one gateway worker process; several share the port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

import uvloop
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from . import metrics
from .app import GatewayConfig, create_app
from .app import _new_interaction_id as new_interaction_id
from .errors import ApiError, error_response

__all__ = ["serve", "serve_app"]

log = logging.getLogger("quickpay.gateway")

# The request line's bound. aiohttp's default (8190 bytes) answers a longer line itself, in
# plain text without an interaction id, before any middleware: `quickpay soak` found that for
# 10,000-character paths. 32 KiB lets such a path (percent-encoded too) reach the app, which
# refuses it in the one error shape; the bound on the line stays.
REQUEST_LINE_MAX_BYTES = 32 * 1024


# What aiohttp's own parser refuses, before any route or middleware runs, by status.
PARSER_ERROR_CODES = {
    400: "QP.Http.BadRequest",
    405: "QP.Method.NotAllowed",
    411: "QP.Http.LengthRequired",
    413: "QP.Body.TooLarge",
    414: "QP.Http.UriTooLong",
    431: "QP.Http.HeadersTooLarge",
    501: "QP.Http.NotImplemented",
}


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors (a request it cannot parse:
    a bad request line or method, headers too large, a bad length; or a 500/504 outside the
    app) in the one error shape, with an interaction id, instead of plain text."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        if request.writer.output_size > 0:  # an answer is half sent: nothing to fix
            return super().handle_error(request, status, exc, message)
        interaction_id = new_interaction_id()
        if status >= 500:
            log.error("error outside the app (interaction %s): %r", interaction_id, exc, exc_info=exc)
            code, text = "QP.Internal", "internal error"
        else:
            # A client's malformed request: not our failure, and a hostile client could fill
            # the log, so one short line at info.
            log.info("refused an unparsable request (%s): %s", status, (message or repr(exc))[:200])
            code = PARSER_ERROR_CODES.get(status, "QP.Http")
            text = f"the request could not be parsed: {(message or type(exc).__name__)[:200]}"
        response = error_response(ApiError(status, code, text))
        response.headers["x-fapi-interaction-id"] = interaction_id
        response.force_close()
        return response


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # The app's own server, whose connections use the handler above (the subclass adds
        # no state; tests/test_gateway_errors.py fails if aiohttp stops calling handle_error).
        server.__class__ = _JsonErrorServer
        return server


async def _serve(config: GatewayConfig, host: str, port: int) -> None:
    await serve_app(create_app(config), host, port)


async def serve_app(app: web.Application, host: str, port: int) -> None:
    """Serve `app` on host:port (SO_REUSEPORT) until SIGINT/SIGTERM, then drain."""
    runner = _Runner(app, access_log=None, handle_signals=False, max_line_size=REQUEST_LINE_MAX_BYTES)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=4096)
    await site.start()
    metrics.worker_started(time.time())  # this worker's series in /metrics (gateway/metrics.py)
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
