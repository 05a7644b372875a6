"""Reconciliation files: a partner's day as CSV, made once per window and shared."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import time

from aiohttp import web

from kernel.limits import RECON_PAGE_ROWS_MAX
from ledger import recon

from ..errors import ApiError, field_error
from ..requests import _DAY
from ..state import RECON_PROVISIONAL_REUSE_S, RECON_ROWS_PER_TOKEN, Gateway, ReconFile


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """GET /v1/reconciliation-files/{day}."""
    router = gw.router

    # -- reconciliation files --
    @routes.get("/v1/reconciliation-files/{day}")
    async def reconciliation_file(request: web.Request) -> web.StreamResponse:
        partner_id = gw.partner_of(request)
        if _DAY.fullmatch(request.match_info["day"]) is None:
            raise field_error(400, "QP.Path.Invalid", "the date is YYYY-MM-DD", "path.day")
        try:
            day = datetime.date.fromisoformat(request.match_info["day"])
        except ValueError:  # well-formed, but no such day (2026-02-30)
            raise ApiError(404, "QP.Reconciliation.NoSuchDay", "there is no such day") from None
        provisional = request.query.get("provisional", "false")
        if provisional not in ("true", "false"):
            raise field_error(400, "QP.Query.Invalid", "provisional is true or false", "query.provisional")
        now_ms = time.time_ns() // 1_000_000
        closed = recon.is_closed(day, now_ms)
        if not closed and provisional != "true":
            raise ApiError(
                404,
                "QP.Reconciliation.NotReady",
                f"{day.isoformat()} is not closed yet: its file is ready "
                f"{recon.CLOSE_GRACE_MS // 60_000} minutes after midnight UTC; "
                "?provisional=true gives the day so far",
            )
        from_ms, to_ms = recon.day_bounds(day)
        if from_ms > now_ms:
            raise ApiError(404, "QP.Reconciliation.NotReady", f"{day.isoformat()} has not begun")
        key = (partner_id, day.isoformat())
        cached = gw.recon_files.get(key)
        if (
            cached is not None
            and cached.closed == closed
            and (closed or time.monotonic() - cached.made_s < RECON_PROVISIONAL_REUSE_S)
        ):
            return recon_response(cached, partner_id, day)
        running = gw.recon_running.get(key)
        if running is None:
            running = gw.recon_running[key] = asyncio.ensure_future(
                build_recon_file(partner_id, day, closed, now_ms, from_ms, to_ms)
            )
            running.add_done_callback(lambda _: gw.recon_running.pop(key, None))
            made = await asyncio.shield(running)
            # The file's size is its cost: one token per RECON_ROWS_PER_TOKEN rows, as debt.
            gw.limiter.charge(partner_id, time.monotonic(), made.rows // RECON_ROWS_PER_TOKEN)
            gw.remember_recon(key, made)
        else:  # the same file is being made for this partner: share it
            made = await asyncio.shield(running)
        return recon_response(made, partner_id, day)

    async def build_recon_file(
        partner_id: str, day: datetime.date, closed: bool, now_ms: int, from_ms: int, to_ms: int
    ) -> ReconFile:
        report = recon.Reconciliation(partner_id, day, provisional=not closed, generated_at_ms=now_ms)
        rows = 0
        for shard in range(router.count):
            after = None
            while True:
                page = await router.call(
                    shard,
                    "recon",
                    {
                        "partner_id": partner_id,
                        "from_ms": from_ms,
                        "to_ms": to_ms,
                        "after": after,
                        "limit": RECON_PAGE_ROWS_MAX,
                    },
                )
                rows += len(page)
                try:
                    report.add(wire for _, wire in page)
                except ValueError as exc:
                    raise ApiError(422, "QP.Reconciliation.TooLarge", str(exc)) from None
                if len(page) < RECON_PAGE_ROWS_MAX:
                    break
                after = page[-1][0]
        body = report.text().encode()
        return ReconFile(body, hashlib.sha256(body).hexdigest(), closed, rows, time.monotonic())

    def recon_response(made: ReconFile, partner_id: str, day: datetime.date) -> web.Response:
        headers = {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="quickpay-{partner_id}-{day.isoformat()}.csv"',
            "Quickpay-Content-SHA256": made.sha256,
            "Quickpay-Reconciliation": "final" if made.closed else "provisional",
        }
        return web.Response(status=200, body=made.body, headers=headers)
