"""GET /admin/v1/shards (issue 21): the slot map as the control database holds it (version,
slots per shard), the version each shard worker acts on and this gateway worker's, and the
moves in progress; for a ledger without a slot map (a shard count that does not divide
SLOT_COUNT) the versions and slot counts are null and there are no moves. Off the payment path: one read of shard 0's control map, one in-memory
read per shard."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kernel.resources import _iso
from kernel.slots import SLOT_COUNT, SlotMap

from ..responses import _json
from ..state import Gateway

__all__ = ["SHARD_READ_TIMEOUT_S", "add_routes", "shards_view"]

# Each shard's held version is asked with this bound; a shard that does not answer is shown
# with its error, not waited for.
SHARD_READ_TIMEOUT_S = 2.0


async def shards_view(gw: Gateway) -> dict[str, Any]:
    """The answer of GET /admin/v1/shards. Shard 0's control map is required (a shard failure
    is the usual 503); another shard's held version is null with its error when it does not answer."""
    router = gw.router
    control_read = router.clients[0].call("slot_map", {"control": True})
    held_reads = [asyncio.wait_for(client.call("slot_map", {}), SHARD_READ_TIMEOUT_S) for client in router.clients[1:]]
    shard_0, *others = await asyncio.gather(control_read, *held_reads, return_exceptions=True)
    if isinstance(shard_0, BaseException):
        raise shard_0
    control = shard_0["control"]
    held: list[Any] = [shard_0, *others]
    if control is None:
        # A ledger without a slot map (its shard count does not divide SLOT_COUNT): every id
        # routes by hash, so there are no versions, slots per shard or moves to show.
        return {
            "version": None,
            "written_at": None,
            "slot_count": SLOT_COUNT,
            "gateway_held_version": None,
            "shards": [_shard(shard, None, held[shard]) for shard in range(router.count)],
            "moves": [],
        }
    slot_map = SlotMap.from_wire(control["map"])
    router.hold(slot_map)  # a newer map than this worker holds is taken here too
    return {
        "version": slot_map.version,
        "written_at": _iso(control["written_at_ms"]),
        "slot_count": SLOT_COUNT,
        "gateway_held_version": router.slot_map.version if router.slot_map is not None else None,
        "shards": [_shard(shard, slot_map, held[shard]) for shard in range(router.count)],
        "moves": [_move(row) for row in control["moves"]],
    }


def _shard(shard: int, slot_map: SlotMap | None, answer: Any) -> dict[str, Any]:
    failed = isinstance(answer, BaseException)
    return {
        "shard": shard,
        "slots": slot_map.assignment.count(shard) if slot_map is not None else None,
        "held_version": None if failed else answer["version"],
        "error": (str(answer) or type(answer).__name__) if failed else None,
    }


def _move(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "slot": row["slot"],
        "source_shard": row["source_shard"],
        "target_shard": row["target_shard"],
        "from_version": row["from_version"],
        "to_version": row["to_version"],
        "phase": row["phase"],
        "started_at": _iso(row["started_at_ms"]),
        "updated_at": _iso(row["updated_at_ms"]),
    }


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """/admin/v1/shards."""

    @routes.get("/admin/v1/shards")
    async def shards_status(request: web.Request) -> web.Response:
        gw.require_admin(request)
        return _json(200, await shards_view(gw))
