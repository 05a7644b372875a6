"""The slot map's rows (issue 21): the authoritative map and the move records in shard 0's
database (the control database, as for consent and notifications), and in every shard's
database the map that shard acts on.

Why the control database and not etcd, even under `--ha`: shard 0's database is then a
Patroni cluster with synchronous replication in strict mode, so a committed map version
survives the loss of its primary exactly as a committed payment does; the map is read at
start-up and written once per move (never on the payment path), so it needs no watch; and
one store keeps one backup, one failover story and one set of credentials. etcd stays
Patroni's alone.

Version 1 (`SlotMap.initial(n)`) is deterministic, so every shard writes its own held copy
at its first start under this code without asking shard 0 (no start-up order between
shards), and shard 0 writes it into the control table the same way. A ledger made before
the slot map existed gets version 1 on its next start. A ledger whose shard count does not divide 5,040 (11, 13, 17, ... shards: `up` has always
allowed 1-64) has no slot map at all: it routes every id by `kernel.ids.shard_of`, its shards
guard nothing, and its slots cannot move (`ensure_slot_map` answers None and writes nothing).
Later versions are written by a
move (not built): the coordinator's SWITCH into `slot_maps`, a shard's INSTALL or RELEASE
into its `slot_map_held`.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from kernel.slots import SLOT_COUNT, SlotMap, SlotMapError, compatible_shard_count

__all__ = [
    "MOVES_SHOWN_MAX",
    "ensure_slot_map",
    "moves_in_progress",
    "no_slots_notice",
    "read_control_map",
]

# Move records one answer lists (moves in progress are a handful; a bound all the same).
MOVES_SHOWN_MAX = 100


def no_slots_notice(shard_count: int) -> str:
    """What `up` says when it starts a ledger without a slot map."""
    compatible = [n for n in range(1, 65) if compatible_shard_count(n)]
    return (
        f"{shard_count} shards do not divide the {SLOT_COUNT} slots of the slot map: this ledger routes every id "
        "by hash and has no slot map, so its slots cannot move (elastic shards need one of "
        + ", ".join(map(str, compatible))
        + " shards)"
    )


async def ensure_slot_map(conn: asyncpg.Connection, shard: int, shard_count: int, now_ms: int) -> SlotMap | None:
    """The map this shard acts on, from its own rows; version 1 written first where there is
    none (idempotent). Shard 0 also writes version 1 into the control table where it is empty.
    None, and nothing written, for a shard count the map cannot serve (the ledger routes by
    hash, see the module's docstring). Refuses (SystemExit) a stored map that names a shard
    beyond the ledger's or cannot be read."""
    if not compatible_shard_count(shard_count):
        return None
    initial = json.dumps(SlotMap.initial(shard_count).to_wire())
    async with conn.transaction():
        if shard == 0:
            # Only while the table is empty: a later version is never shadowed by a restart.
            await conn.execute(
                "INSERT INTO slot_maps (version, map, written_at_ms)"
                " SELECT 1, $1::jsonb, $2 WHERE NOT EXISTS (SELECT 1 FROM slot_maps)",
                initial,
                now_ms,
            )
        await conn.execute(
            "INSERT INTO slot_map_held (singleton, version, map, adopted_at_ms) VALUES (true, 1, $1::jsonb, $2)"
            " ON CONFLICT (singleton) DO NOTHING",
            initial,
            now_ms,
        )
        stored = await conn.fetchval("SELECT map FROM slot_map_held")
    held = _decoded(stored, f"shard {shard}'s held slot map")
    outside = sorted({owner for owner in held.assignment if owner >= shard_count})
    if outside:
        raise SystemExit(
            f"shard {shard}'s slot map (version {held.version}) names shard(s) {outside} of a {shard_count}-shard "
            "ledger; start with the --shards the map was made for"
        )
    return held


async def read_control_map(conn: asyncpg.Connection) -> tuple[SlotMap, int]:
    """The authoritative map (its newest version) and when it was written, from the control
    database. Only shard 0's database has rows; elsewhere this raises LookupError."""
    row = await conn.fetchrow("SELECT map, written_at_ms FROM slot_maps ORDER BY version DESC LIMIT 1")
    if row is None:
        raise LookupError("this database holds no slot map (the control database is shard 0's)")
    return _decoded(row["map"], "the control slot map"), int(row["written_at_ms"])


async def moves_in_progress(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The move records not yet done, oldest first (at most MOVES_SHOWN_MAX)."""
    rows = await conn.fetch(
        "SELECT slot, source_shard, target_shard, from_version, to_version, phase, started_at_ms, updated_at_ms"
        " FROM slot_moves WHERE phase <> 'done' ORDER BY started_at_ms, slot LIMIT $1",
        MOVES_SHOWN_MAX,
    )
    return [dict(row) for row in rows]


def _decoded(stored: Any, what: str) -> SlotMap:
    try:
        return SlotMap.from_wire(json.loads(stored))
    except (SlotMapError, ValueError, TypeError) as exc:
        raise SystemExit(f"{what} cannot be read: {exc}") from None
