"""HTTP entrypoint: the aiohttp app factory, its middleware and its route table.

Handlers (gateway/routes/, one module per resource) validate, route to the shard that
owns the entity, and translate the shard's result codes into HTTP. They hold no state
of their own beyond caches of immutable facts (verified tokens, account currencies):
the process's state is gateway/state.py's Gateway. The names other code imports from
here (GatewayConfig, Gateway, create_app, api_middleware, the body bounds, ...) stay
importable from here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from kernel.config import GatewayConfig
from kernel.context import INTERACTION_ID
from kernel.limits import BATCH_BODY_MAX_BYTES, BODY_MAX_BYTES, INTERACTION_ID_MAX
from ledger.client import ShardError, ShardOverloaded, ShardUnavailable

from . import console, metrics
from . import web as web_pages
from .errors import ApiError, error_response, field_error
from .requests import ascii_int, is_printable_ascii
from .responses import _PAYMENT_ERRORS, _internal, _shard_error, _unavailable
from .routes import accounts, admin, agreements, batch, events, fraud, ops, payments, recon, refunds, shards, token
from .shards import SlotMoved
from .state import CUTOFF_FIRST_READ_S, GATEWAY_KEY, RATE_VERDICT, RECON_PROVISIONAL_REUSE_S, Gateway

__all__ = [
    "BATCH_BODY_MAX_BYTES",
    "BODY_MAX_BYTES",
    "RECON_PROVISIONAL_REUSE_S",
    "_PAYMENT_ERRORS",
    "Gateway",
    "GatewayConfig",
    "api_middleware",
    "ascii_int",
    "create_app",
]

log = logging.getLogger("quickpay.gateway")

# Control characters and lone surrogates have no business in a path or a query string:
# refused before any handler sees them (a NUL would reach PostgreSQL, a surrogate
# cannot be encoded for the shard protocol).
_UNSAFE_URL_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_random = uuid.uuid4().hex
_interaction_prefix = f"{_random[0:8]}-{_random[8:12]}-4{_random[13:16]}-{_random[16:20]}-"
_interaction_counter = itertools.count(1)


def _new_interaction_id() -> str:
    # UUID-shaped as FAPI expects; unique per process through a random prefix and a
    # counter, and a tenth of the cost of uuid4() per request.
    return f"{_interaction_prefix}{next(_interaction_counter) & 0xFFFFFFFFFFFF:012x}"


def _check_url(request: web.Request) -> None:
    if _UNSAFE_URL_TEXT.search(request.path) is not None:
        raise field_error(400, "QP.Path.Invalid", "the path holds control characters", "path")
    if _UNSAFE_URL_TEXT.search(request.query_string) is not None:
        raise field_error(400, "QP.Query.Invalid", "the query string holds control characters", "query")


# A request refused for its partner's rate is answered after min(Retry-After, this) seconds:
# a client that ignores Retry-After and loops on 429s (a closed loop, or a hostile partner)
# then costs one cheap refusal per connection per hold instead of thousands a second, which
# took CPU from every other partner (tests/test_fairness.py). Held answers are bounded per
# process; past the bound a refusal is answered at once.
REFUSAL_HOLD_S = 1.0
REFUSALS_HELD_MAX = 1024
_refusals_held = 0


async def _hold_refusal(retry_after_s: float) -> None:
    global _refusals_held
    if _refusals_held >= REFUSALS_HELD_MAX:
        return
    _refusals_held += 1
    try:
        await asyncio.sleep(min(retry_after_s, REFUSAL_HOLD_S))
    finally:
        _refusals_held -= 1


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    interaction_id = request.headers.get("x-fapi-interaction-id")
    if not interaction_id or not is_printable_ascii(interaction_id, INTERACTION_ID_MAX):
        interaction_id = _new_interaction_id()
    INTERACTION_ID.set(interaction_id)  # every log line of this request carries it
    try:
        _check_url(request)
        response = await handler(request)
    except ApiError as error:
        response = error_response(error)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(ApiError(413, "QP.Body.TooLarge", f"the request body exceeds {BODY_MAX_BYTES} bytes"))
    except web.HTTPException as exc:
        code = {404: "QP.Resource.NotFound", 405: "QP.Method.NotAllowed"}.get(exc.status, "QP.Http")
        allow = exc.headers.get("Allow")
        response = error_response(
            ApiError(exc.status, code, exc.reason, headers={"Allow": allow} if allow is not None else None)
        )
    except (ShardUnavailable, ShardOverloaded) as exc:
        # The outcome is unknown to us; the partner retries with the same key and
        # gets exactly one payment either way.
        response = error_response(
            _unavailable(f"the ledger did not answer ({exc}); retry with the same x-idempotency-key")
        )
    except SlotMoved as exc:
        response = error_response(_unavailable(f"the account's slot is moving ({exc}); retry with the same key"))
    except ShardError as exc:
        response = error_response(_shard_error(exc, interaction_id))
    except Exception as exc:  # a bug: never a bare text 500 without the interaction id
        response = error_response(_internal(exc, interaction_id))
    response.headers["x-fapi-interaction-id"] = interaction_id
    verdict = request.get(RATE_VERDICT)
    if verdict is not None:
        response.headers.update(verdict.headers())
        if not verdict.allowed and response.status == 429:
            await _hold_refusal(verdict.retry_after_s)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.record(route, request.method, response.status, time.perf_counter() - started)
    return response


CUTOFF_TASK_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("cutoff_refresh", asyncio.Task)
SLOT_MAP_TASK_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("slot_map_fetch", asyncio.Task)


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=BODY_MAX_BYTES)
    gw = Gateway(config)
    app[GATEWAY_KEY] = gw
    router = gw.router
    routes = web.RouteTableDef()

    # One module per resource (gateway/routes/).
    ops.add_routes(routes, gw)
    token.add_routes(routes, gw)
    agreements.add_routes(routes, gw)
    events.add_routes(routes, gw)
    recon.add_routes(routes, gw)
    refunds.add_routes(routes, gw)
    payments.add_routes(routes, gw)
    batch.add_routes(routes, gw)
    accounts.add_routes(routes, gw)
    admin.add_routes(routes, gw)
    shards.add_routes(routes, gw)  # /admin/v1/shards: the slot map
    fraud.add_routes(routes, gw)
    console.add_routes(routes, gw)  # the operator console (gateway/console/)
    web_pages.add_routes(routes, gw)  # the customer's consent page and portal (gateway/web/)

    app.add_routes(routes)

    async def start_slot_map_fetch(app: web.Application) -> None:
        # The slot map from shard 0; a task that keeps trying while shard 0 is not up.
        app[SLOT_MAP_TASK_KEY] = asyncio.get_running_loop().create_task(router.fetch_slot_map_until_held())

    async def start_cutoff_refresh(app: web.Application) -> None:
        # The first read before serving (bounded: shards that are not up yet are read by the loop).
        started = time.monotonic()
        try:
            await asyncio.wait_for(gw.refresh_cutoffs(), CUTOFF_FIRST_READ_S)
        except TimeoutError:
            log.warning("serving before the partner cut-off markers were read (/readyz says not ready)")
        app[CUTOFF_TASK_KEY] = asyncio.get_running_loop().create_task(gw.run_cutoff_refresh())
        # The slot map's fetch ran meanwhile; serve with it if it comes within the same bound
        # (else with version 1, which the fetch replaces when shard 0 answers).
        await asyncio.wait(
            [app[SLOT_MAP_TASK_KEY]], timeout=max(0.0, CUTOFF_FIRST_READ_S - (time.monotonic() - started))
        )

    async def stop_cutoff_refresh(app: web.Application) -> None:
        for task in (app.get(CUTOFF_TASK_KEY), app.get(SLOT_MAP_TASK_KEY)):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def close_router(app: web.Application) -> None:
        await router.close()

    app.on_startup.append(start_slot_map_fetch)
    app.on_startup.append(start_cutoff_refresh)
    app.on_cleanup.append(stop_cutoff_refresh)
    app.on_cleanup.append(close_router)
    return app
