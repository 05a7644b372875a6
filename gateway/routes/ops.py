"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .. import health, metrics
from ..openapi import openapi_document
from ..responses import _json
from ..state import Gateway


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """GET /healthz, /readyz, /admin/v1/health, /metrics and /openapi.json."""
    router = gw.router
    config = gw.config

    # -- health and docs --
    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        # Public: the state only (gateway/health.py); the reasons are at /admin/v1/health.
        report = await health.assess(router.clients, config.supervisor_status, gw.cutoffs_loaded)
        return _json(503 if report["status"] == health.NOT_READY else 200, {"status": report["status"]})

    @routes.get("/admin/v1/health")
    async def admin_health(request: web.Request) -> web.Response:
        gw.require_admin(request)
        report = await health.assess(router.clients, config.supervisor_status, gw.cutoffs_loaded)
        return _json(200, report)

    @routes.get("/metrics")
    async def prometheus_metrics(request: web.Request) -> web.Response:
        gw.require_admin(request)

        async def ping(shard: int) -> tuple[int, Any]:
            try:
                return shard, await router.clients[shard].call("ping")
            except Exception:
                return shard, None

        pings = list(await asyncio.gather(*(ping(s) for s in range(router.count))))
        try:
            deliveries = await router.clients[0].call("notify", {"action": "stats", "partner_id": "-"})
        except Exception:
            deliveries = None
        services = health.service_restarts(health.report_from(pings, config.supervisor_status))
        return web.Response(
            body=metrics.render(pings, deliveries, services), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    @routes.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return _json(200, openapi_document(config.batch_items_max))
