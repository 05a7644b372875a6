"""The SQL of notifications, in shard 0's database (the control database): events, the
producer's positions, webhook endpoints and deliveries. Used by the shard-0 worker's
`notify` read op (endpoints, the feed) and by the notifier process (notify/). It lives in
the ledger, which owns every table of its databases, so the ledger never imports notify."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from .rows import QUARANTINE, RowError

__all__ = [
    "ENDPOINTS_PER_PARTNER_MAX",
    "ENDPOINT_COLUMNS",
    "create_endpoint",
    "delete_endpoint",
    "delivery_stats",
    "due_deliveries",
    "get_endpoint",
    "list_endpoints",
    "list_events",
    "mark_delivered",
    "mark_failed",
    "mark_retry",
    "prune_events",
    "read_positions",
    "record_quarantined",
    "rotate_secret",
    "store_events",
]

ENDPOINT_COLUMNS = "id, partner_id, url, events, created_at_ms, previous_secret_until_ms"
ENDPOINTS_PER_PARTNER_MAX = 16


def _endpoint(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "partner_id": row["partner_id"],
        "url": row["url"],
        "events": list(row["events"]),
        "created_at_ms": row["created_at_ms"],
        "previous_secret_until_ms": row["previous_secret_until_ms"],
    }


async def create_endpoint(
    conn: asyncpg.Connection, endpoint_id: str, partner_id: str, url: str, events: list[str], secret: str, now_ms: int
) -> dict[str, Any] | None:
    """The new endpoint, or None when the partner already has ENDPOINTS_PER_PARTNER_MAX."""
    async with conn.transaction():
        # One partner's registrations are serialised, so the bound holds under concurrency.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "webhooks:" + partner_id)
        count = await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE partner_id = $1 AND deleted_at_ms IS NULL", partner_id
        )
        if count >= ENDPOINTS_PER_PARTNER_MAX:
            return None
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (id, partner_id, url, events, secret, created_at_ms)"
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}",
            endpoint_id,
            partner_id,
            url,
            events,
            secret,
            now_ms,
        )
    return _endpoint(row)


async def list_endpoints(conn: asyncpg.Connection, partner_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE partner_id = $1"
        " AND deleted_at_ms IS NULL ORDER BY created_at_ms, id",
        partner_id,
    )
    return [_endpoint(r) for r in rows]


async def get_endpoint(conn: asyncpg.Connection, partner_id: str, endpoint_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND partner_id = $2 AND deleted_at_ms IS NULL",
        endpoint_id,
        partner_id,
    )
    return _endpoint(row) if row else None


async def delete_endpoint(
    conn: asyncpg.Connection, partner_id: str, endpoint_id: str, now_ms: int
) -> dict[str, Any] | None:
    """Stops deliveries to it (its pending ones end as failed). Idempotent: None only when
    the partner never had it."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET deleted_at_ms = coalesce(deleted_at_ms, $3) WHERE id = $1 AND partner_id = $2"
            f" RETURNING {ENDPOINT_COLUMNS}",
            endpoint_id,
            partner_id,
            now_ms,
        )
        if row is None:
            return None
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint deleted',"
            " finished_at_ms = $2 WHERE endpoint_id = $1 AND status = 'pending'",
            endpoint_id,
            now_ms,
        )
    return _endpoint(row)


async def rotate_secret(
    conn: asyncpg.Connection, partner_id: str, endpoint_id: str, secret: str, overlap_ms: int, now_ms: int
) -> dict[str, Any] | None:
    """A new secret; the old one still signs (a second v1) for overlap_ms."""
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until_ms = $4::bigint + $5::bigint, secret = $3"
        f" WHERE id = $1 AND partner_id = $2 AND deleted_at_ms IS NULL RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
        partner_id,
        secret,
        now_ms,
        overlap_ms,
    )
    return _endpoint(row) if row else None


async def list_events(
    conn: asyncpg.Connection, partner_id: str, after_seq: int, event_type: str | None, limit: int, since_ms: int
) -> list[tuple[int, str | None]]:
    """(seq, body) of the partner's events after after_seq, oldest first, not older than since_ms.
    The feed embeds bodies as stored, so one that is not a JSON object (an older version's, or a
    hand's) is quarantined and answered as (seq, None): left out, the cursor still past it."""
    rows = await conn.fetch(
        "SELECT seq, id, body FROM events WHERE partner_id = $1 AND seq > $2 AND ($3::text IS NULL OR type = $3)"
        " AND created_at_ms >= $5 ORDER BY seq LIMIT $4",
        partner_id,
        after_seq,
        event_type,
        limit,
        since_ms,
    )
    found: list[tuple[int, str | None]] = []
    for r in rows:
        try:
            if not isinstance(msgspec.json.decode(r["body"]), dict):
                raise ValueError("not a JSON object")
            found.append((r["seq"], r["body"]))
        except (ValueError, msgspec.DecodeError) as exc:
            QUARANTINE.skip("shard_read", RowError("events", r["id"], f"body: {exc}"), 0)
            found.append((r["seq"], None))
    return found


async def read_positions(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["source"]: r["position"] for r in await conn.fetch("SELECT source, position FROM event_positions")}


async def store_events(conn: asyncpg.Connection, events: list[Any], positions: dict[str, int], now_ms: int) -> int:
    """Insert events (ids already there are skipped: a re-read after a crash), a pending
    delivery for each endpoint of the event's partner subscribed to its type, and the
    positions they were read up to: one transaction. Returns how many events were new."""
    async with conn.transaction():
        rows = []
        if events:
            rows = await conn.fetch(
                "INSERT INTO events (id, partner_id, type, created_at_ms, body)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])"
                " ON CONFLICT (id) DO NOTHING RETURNING seq, partner_id, type",
                [e.id for e in events],
                [e.partner_id for e in events],
                [e.type for e in events],
                [e.created_at_ms for e in events],
                [e.body() for e in events],
            )
        if rows:
            await conn.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_seq, status, next_attempt_at_ms)"
                " SELECT w.id, v.seq, 'pending', $4 FROM unnest($1::bigint[], $2::text[], $3::text[])"
                " AS v(seq, partner_id, type) JOIN webhook_endpoints w ON w.partner_id = v.partner_id"
                " AND w.deleted_at_ms IS NULL AND (v.type = ANY (w.events) OR '*' = ANY (w.events))"
                " ON CONFLICT DO NOTHING",
                [r["seq"] for r in rows],
                [r["partner_id"] for r in rows],
                [r["type"] for r in rows],
                now_ms,
            )
        await conn.executemany(
            "INSERT INTO event_positions (source, position) VALUES ($1, $2)"
            " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
            list(positions.items()),
        )
    return len(rows)


async def due_deliveries(
    conn: asyncpg.Connection,
    now_ms: int,
    per_endpoint: int,
    limit: int,
    skip: list[tuple[str, int]],
    full_endpoints: list[str],
    full_partners: list[str],
) -> list[dict[str, Any]]:
    """Pending deliveries due now, at most per_endpoint for each endpoint (one endpoint's
    backlog cannot fill the read), oldest due first; without those in flight (`skip`) and
    without endpoints and partners whose in-flight slots are all taken (their rows would
    only use up the read's limit)."""
    rows = await conn.fetch(
        "SELECT d.endpoint_id, d.event_seq, d.attempts, ev.body, ev.created_at_ms, d.url, d.secret,"
        " d.previous_secret, d.previous_secret_until_ms, d.partner_id FROM ("
        "  SELECT wd.endpoint_id, wd.event_seq, wd.attempts, wd.next_attempt_at_ms, w.url, w.secret,"
        "   w.previous_secret, w.previous_secret_until_ms, w.partner_id, row_number() OVER"
        "   (PARTITION BY wd.endpoint_id ORDER BY wd.next_attempt_at_ms, wd.event_seq) AS rn"
        "  FROM webhook_deliveries wd JOIN webhook_endpoints w ON w.id = wd.endpoint_id"
        "  WHERE wd.status = 'pending' AND wd.next_attempt_at_ms <= $1 AND w.deleted_at_ms IS NULL"
        "   AND wd.endpoint_id <> ALL ($6::text[]) AND w.partner_id <> ALL ($7::text[])"
        "   AND (wd.endpoint_id, wd.event_seq) NOT IN (SELECT * FROM unnest($4::text[], $5::bigint[]))) d"
        " JOIN events ev ON ev.seq = d.event_seq"
        " WHERE d.rn <= $2 ORDER BY d.next_attempt_at_ms LIMIT $3",
        now_ms,
        per_endpoint,
        limit,
        [s[0] for s in skip],
        [s[1] for s in skip],
        full_endpoints,
        full_partners,
    )
    return [dict(r) for r in rows]


# The outcome of one delivery attempt, written only while the delivery is still pending
# (a delivery is finished once). SET clauses are constants of this module, never input.
_SETTLE = " WHERE endpoint_id = $1 AND event_seq = $2 AND status = 'pending'"
_DELIVERED = "UPDATE webhook_deliveries SET status = 'delivered', attempts = $3, finished_at_ms = $4, last_error = NULL"
_RETRY = "UPDATE webhook_deliveries SET attempts = $3, next_attempt_at_ms = $4, last_error = $5"
_FAILED = "UPDATE webhook_deliveries SET status = 'failed', attempts = $3, finished_at_ms = $4, last_error = $5"
ERROR_TEXT_MAX = 500


async def mark_delivered(
    conn: asyncpg.Connection, endpoint_id: str, event_seq: int, attempts: int, now_ms: int
) -> None:
    await conn.execute(_DELIVERED + _SETTLE, endpoint_id, event_seq, attempts, now_ms)


async def mark_retry(
    conn: asyncpg.Connection, endpoint_id: str, event_seq: int, attempts: int, next_at_ms: int, error: str
) -> None:
    await conn.execute(_RETRY + _SETTLE, endpoint_id, event_seq, attempts, next_at_ms, error[:ERROR_TEXT_MAX])


async def mark_failed(
    conn: asyncpg.Connection, endpoint_id: str, event_seq: int, attempts: int, now_ms: int, error: str
) -> None:
    await conn.execute(_FAILED + _SETTLE, endpoint_id, event_seq, attempts, now_ms, error[:ERROR_TEXT_MAX])


async def delivery_stats(conn: asyncpg.Connection) -> dict[str, Any]:
    """For /metrics: deliveries waiting (the backlog) and given up, events produced so far
    (the identity's high-water mark: an index lookup, not a count), and the rows the notifier
    and the monitor quarantined, per (reader, table)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS pending,"
        " (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed') AS failed,"
        " (SELECT coalesce(max(seq), 0) FROM events) AS events"
    )
    quarantined = await conn.fetch(
        "SELECT reader, source_table, count(*) AS n FROM quarantined_rows GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $1",
        QUARANTINE_GROUPS_MAX,
    )
    return {
        "pending": row["pending"],
        "failed": row["failed"],
        "events": row["events"],
        "quarantined": [[r["reader"], r["source_table"], r["n"]] for r in quarantined],
    }


# (reader, table) pairs /metrics reports from quarantined_rows (readers and tables are ours: a few).
QUARANTINE_GROUPS_MAX = 100


async def record_quarantined(conn: asyncpg.Connection, entries: list[dict[str, Any]], now_ms: int) -> None:
    """Rows the notifier or the monitor skipped (ledger/rows.py Quarantine), once each."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO quarantined_rows (reader, source_table, shard, row_key, problem, first_seen_ms)"
        " SELECT *, $6::bigint FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])"
        " ON CONFLICT DO NOTHING",
        [e["reader"] for e in entries],
        [e["table"] for e in entries],
        [-1 if e["shard"] is None else e["shard"] for e in entries],
        [e["key"] for e in entries],
        [e["problem"] for e in entries],
        now_ms,
    )


async def prune_events(conn: asyncpg.Connection, older_than_ms: int) -> int:
    """Events (and their deliveries) older than the feed keeps them."""
    done = await conn.execute("DELETE FROM events WHERE created_at_ms < $1", older_than_ms)
    return int(done.split()[-1])
