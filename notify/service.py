"""The `quickpay notifier` process: events from every shard's committed journal, then
signed webhook deliveries with retries. It reads the shards' databases and writes only
the notification tables of shard 0's (like the monitor), so it costs the payment path
nothing, and nothing that did not commit becomes an event.

Produce: per shard, the journal (transfers by seq) and agreement transitions
(agreement_events by seq) after the stored positions, and agreements whose valid_to
passed; the events, their pending deliveries and the new positions are stored in one
transaction, and event ids come from the source rows, so a crash between reading and
storing only re-reads (and skips) what is already there.

Deliver: due deliveries, at most PER_ENDPOINT_IN_FLIGHT per endpoint and IN_FLIGHT_MAX in
all, each in its own task: a slow or dead endpoint holds only its own slots, never the
others' or the loop. A 2xx marks the delivery delivered at once; a crash between the
answer and that mark re-sends it after the restart (at least once: partners dedupe by
event id). Failures are retried on notify.delivery's schedule until the event is
max_age_s old, then marked failed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from kernel.ids import shard_of_payment
from kernel.limits import FEED_RETENTION_MS
from ledger import notify_store as store
from ledger import pg
from ledger.rows import QUARANTINE, RowError, decode_agreement, decode_agreement_event
from ledger.state import ShardState
from ledger.writable import NoWritableHost, connect_writable

from . import delivery, events
from .ssrf import UrlRefused, address_allowed, check_url, connector, ip_literal

__all__ = ["FEED_RETENTION_MS", "Notifier", "run_notifier"]

log = logging.getLogger("quickpay.notifier")

READ_BATCH_MAX = 2_000
PER_ENDPOINT_IN_FLIGHT = 4
# One partner's endpoints together (a partner may register 16): dead endpoints of one partner
# hold at most this many of the IN_FLIGHT_MAX slots, so the other partners keep theirs.
PER_PARTNER_IN_FLIGHT = 8
IN_FLIGHT_MAX = 64
CONNECT_TIMEOUT_S = 3.0
DUE_READ_MAX = 256
POLL_INTERVAL_S = 0.2
PRUNE_INTERVAL_MS = 3_600_000
RESPONSE_READ_MAX_BYTES = 64 * 1024
APPLICATION_NAME = "quickpay-notifier"  # in pg_stat_activity


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Notifier:
    def __init__(
        self,
        dsns: list[str],
        *,
        allow_private: bool = False,
        max_age_s: int = delivery.MAX_AGE_S_DEFAULT,
        clock_ms: Callable[[], int] = _now_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.dsns = dsns
        self.allow_private = allow_private
        self.max_age_s = max_age_s
        self.clock_ms = clock_ms
        self.rng = rng or random.Random()
        self.conns: list[asyncpg.Connection] = []
        # Delivery tasks run concurrently and an asyncpg connection runs one query at a time:
        # they record their outcomes through a small pool on the control database.
        self.pool: asyncpg.Pool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.in_flight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.per_endpoint: dict[str, int] = {}
        self.per_partner: dict[str, int] = {}
        self.partner_of: dict[tuple[str, int], str] = {}
        self.last_prune_ms = 0
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        settings = {"application_name": APPLICATION_NAME}
        # With `up --ha` (multi-host DSNs): the members that commit, not a cut-off primary.
        chosen = [await connect_writable(dsn, server_settings=settings) for dsn in self.dsns]
        self.conns = [conn for conn, _ in chosen]
        self.pool = await asyncpg.create_pool(chosen[0][1], min_size=1, max_size=4, server_settings=settings)
        self.session = aiohttp.ClientSession(
            connector=connector(self.allow_private, limit=IN_FLIGHT_MAX),
            timeout=aiohttp.ClientTimeout(total=delivery.DELIVERY_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
        )

    async def close(self) -> None:
        for task in list(self.in_flight.values()):
            task.cancel()
        if self.in_flight:
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self.pool is not None:
            await self.pool.close()
        for conn in self.conns:
            await conn.close()

    # ---- produce ----------------------------------------------------------------
    async def produce_once(self) -> int:
        """Read every shard once; store what it gives. Returns how many events were new."""
        control = self.conns[0]
        positions = await store.read_positions(control)
        now_ms = self.clock_ms()
        produced: list[events.Event] = []
        for shard, conn in enumerate(self.conns):
            produced += await self._transfer_events(shard, conn, positions)
            produced += await self._transition_events(shard, conn, positions, now_ms)
            produced += await self._expiry_events(shard, conn, positions, now_ms)
            produced += await self._partner_events(shard, conn, positions)
        # The feed's order is the order events are stored in: within one pass, by the time
        # they happened (shards interleaved); a later pass may still bring an earlier time
        # (a shard that was behind), so `created_at`, not the position, says when.
        produced.sort(key=lambda event: event.created_at_ms)
        # Rows skipped on the way (ledger/rows.py): recorded before the positions move past them.
        await store.record_quarantined(control, QUARANTINE.take_unstored(), now_ms)
        return await store.store_events(control, produced, positions, now_ms)

    async def _transfer_events(
        self, shard: int, conn: asyncpg.Connection, positions: dict[str, int]
    ) -> list[events.Event]:
        source = f"t{shard}"
        # Every row is read once (fundings too, to move past them), in journal order.
        rows = await conn.fetch(
            pg.SELECT_TRANSFER + " WHERE seq > $1 ORDER BY seq LIMIT $2", positions.get(source, 0), READ_BATCH_MAX
        )
        if not rows:
            return []
        # A row that cannot be read is quarantined and passed over: the feed goes on.
        wires = [
            (t.seq, t.to_wire())
            for t in QUARANTINE.decode_all(
                READER, (r for r in rows if r["kind"] != "funding"), pg.row_to_transfer, shard
            )
        ]
        # Cross-shard completions: the payment rows of this shard's credit legs, from their debtor shards.
        debtor_rows: dict[str, dict[str, Any]] = {}
        wanted: dict[int, list[str]] = {}
        for _, wire in wires:
            if wire["kind"] == "credit_leg":
                debtor_shard = shard_of_payment(wire["id"], len(self.conns))
                if debtor_shard is not None:
                    wanted.setdefault(debtor_shard, []).append(wire["id"])
        for debtor_shard, ids in wanted.items():
            for transfer in await pg.prefetch_transfers(self.conns[debtor_shard], ids, reader=READER):
                debtor_rows[transfer.id] = transfer.to_wire()
        found = [
            _built("transfers", wire["id"], shard, events.transfer_event, shard, seq, wire, debtor_rows.get(wire["id"]))
            for seq, wire in wires
        ]
        positions[source] = rows[-1]["seq"]
        return [e for e in found if e is not None]

    async def _agreement_wires(
        self, conn: asyncpg.Connection, ids: list[str], at_ms: int, shard: int
    ) -> dict[str, dict[str, Any]]:
        """The agreements as the API would show them at at_ms (spend rebuilt from the journal)."""
        state = ShardState(0, 1)
        for r in await conn.fetch("SELECT * FROM agreements WHERE id = ANY($1::text[])", ids):
            try:
                state.agreements[r["id"]] = decode_agreement(r, at_ms)
            except RowError as exc:  # its events are passed over; the others' go on
                QUARANTINE.skip(READER, exc, shard)
        await pg.load_spend(conn, state, at_ms)
        return {agreement_id: a.to_wire(at_ms) for agreement_id, a in state.agreements.items()}

    async def _transition_events(
        self, shard: int, conn: asyncpg.Connection, positions: dict[str, int], now_ms: int
    ) -> list[events.Event]:
        source = f"a{shard}"
        rows = await conn.fetch(
            "SELECT seq, agreement_id, from_status, to_status, actor, at_ms FROM agreement_events"
            " WHERE seq > $1 ORDER BY seq LIMIT $2",
            positions.get(source, 0),
            READ_BATCH_MAX,
        )
        if not rows:
            return []
        transitions = QUARANTINE.decode_all(READER, rows, decode_agreement_event, shard)
        wires = await self._agreement_wires(conn, sorted({r["agreement_id"] for r in transitions}), now_ms, shard)
        positions[source] = rows[-1]["seq"]
        found = [
            _built(
                "agreement_events",
                r["seq"],
                shard,
                events.transition_event,
                shard,
                r["seq"],
                r,
                wires[r["agreement_id"]],
            )
            for r in transitions
            if r["agreement_id"] in wires
        ]
        return [e for e in found if e is not None]

    async def _partner_events(
        self, shard: int, conn: asyncpg.Connection, positions: dict[str, int]
    ) -> list[events.Event]:
        """The partner's cut-off actions (its audit trail, partner_events by seq)."""
        source = f"p{shard}"
        rows = await conn.fetch(
            "SELECT seq, partner_id, action, actor, at_ms, details::text AS details"
            " FROM partner_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            positions.get(source, 0),
            READ_BATCH_MAX,
        )
        if not rows:
            return []
        positions[source] = rows[-1]["seq"]
        found = [_built("partner_events", r["seq"], shard, _partner_event, shard, r) for r in rows]
        return [e for e in found if e is not None]

    async def _expiry_events(
        self, shard: int, conn: asyncpg.Connection, positions: dict[str, int], now_ms: int
    ) -> list[events.Event]:
        source = f"x{shard}"
        since_ms = positions.get(source, 0)
        # An agreement ends at valid_to, or (still awaiting the customer) at authorise_by if
        # that is earlier: each branch finds the agreements whose end it is, through its index.
        rows = await conn.fetch(
            "SELECT id, end_ms FROM (SELECT id, valid_to_ms AS end_ms FROM agreements"
            "  WHERE valid_to_ms > $1 AND valid_to_ms < $2"
            "  AND status IN ('AwaitingAuthorisation', 'Authorised', 'Suspended')"
            "  AND NOT (status = 'AwaitingAuthorisation' AND authorise_by_ms IS NOT NULL"
            "           AND authorise_by_ms < valid_to_ms)"
            " UNION ALL SELECT id, authorise_by_ms FROM agreements"
            "  WHERE authorise_by_ms > $1 AND authorise_by_ms < $2 AND status = 'AwaitingAuthorisation'"
            "  AND (valid_to_ms IS NULL OR authorise_by_ms < valid_to_ms)) e ORDER BY end_ms LIMIT $3",
            since_ms,
            now_ms,
            READ_BATCH_MAX,
        )
        if not rows:
            positions[source] = now_ms - 1
            return []
        ends = {r["id"]: r["end_ms"] for r in rows}
        wires = await self._agreement_wires(conn, list(ends), now_ms, shard)
        found = [
            _built("agreements", i, shard, events.expiry_event, shard, wires[i], end_ms)
            for i, end_ms in ends.items()
            if i in wires
        ]
        # Up to the last one read (more may be due at the same time when the read was full);
        # from the rows read, so that a quarantined agreement cannot hold the position back.
        positions[source] = rows[-1]["end_ms"] if len(rows) == READ_BATCH_MAX else now_ms - 1
        return [e for e in found if e is not None]

    # ---- deliver ----------------------------------------------------------------
    async def deliver_once(self) -> int:
        """Start the deliveries that are due and have a free slot; returns how many started."""
        room = IN_FLIGHT_MAX - len(self.in_flight)
        if room <= 0:
            return 0
        full_endpoints = [e for e, n in self.per_endpoint.items() if n >= PER_ENDPOINT_IN_FLIGHT]
        full_partners = [p for p, n in self.per_partner.items() if n >= PER_PARTNER_IN_FLIGHT]
        due = await store.due_deliveries(
            self.conns[0],
            self.clock_ms(),
            PER_ENDPOINT_IN_FLIGHT,
            min(DUE_READ_MAX, room * PER_ENDPOINT_IN_FLIGHT),
            list(self.in_flight),
            full_endpoints,
            full_partners,
        )
        started = 0
        for item in due:
            key = (item["endpoint_id"], item["event_seq"])
            if len(self.in_flight) >= IN_FLIGHT_MAX:
                break
            partner_id = item["partner_id"]
            if (
                key in self.in_flight
                or self.per_endpoint.get(key[0], 0) >= PER_ENDPOINT_IN_FLIGHT
                or self.per_partner.get(partner_id, 0) >= PER_PARTNER_IN_FLIGHT
            ):
                continue
            self.per_endpoint[key[0]] = self.per_endpoint.get(key[0], 0) + 1
            self.per_partner[partner_id] = self.per_partner.get(partner_id, 0) + 1
            self.partner_of[key] = partner_id
            task = asyncio.get_running_loop().create_task(self._deliver(item))
            self.in_flight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
            started += 1
        return started

    def _done(self, key: tuple[str, int], _task: asyncio.Task[None]) -> None:
        self.in_flight.pop(key, None)
        for table, name in ((self.per_endpoint, key[0]), (self.per_partner, self.partner_of.pop(key, ""))):
            left = table.get(name, 1) - 1
            if left > 0:
                table[name] = left
            else:
                table.pop(name, None)

    async def _deliver(self, item: dict[str, Any]) -> None:
        endpoint_id, seq, attempts = item["endpoint_id"], item["event_seq"], item["attempts"] + 1
        body = item["body"].encode()
        now_ms = self.clock_ms()
        secrets = [item["secret"]]
        if item["previous_secret"] and (item["previous_secret_until_ms"] or 0) > now_ms:
            secrets.append(item["previous_secret"])
        error = ""
        try:
            host, _port = check_url(item["url"])
            literal = ip_literal(host)  # an IP in the URL never reaches the checked resolver
            if literal is not None and not address_allowed(literal, self.allow_private):
                raise UrlRefused("the url's address is not public")
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "quickpay-webhooks/1",
                "Quickpay-Event-Id": _event_id(item["body"]),
                **delivery.signature_headers(body, secrets, now_ms // 1000),
            }
            assert self.session is not None
            async with self.session.post(item["url"], data=body, headers=headers, allow_redirects=False) as response:
                await response.content.read(RESPONSE_READ_MAX_BYTES)
                if delivery.is_success(response.status):
                    await store.mark_delivered(self._pool(), endpoint_id, seq, attempts, self.clock_ms())
                    self.delivered += 1
                    return
                error = f"HTTP {response.status}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, unreachable, timed out, reset: retried like a non-2xx
            error = f"{type(exc).__name__}: {exc}"[:300]
        next_at = delivery.next_attempt(attempts, item["created_at_ms"], self.clock_ms(), self.max_age_s, self.rng)
        if next_at is None:
            await store.mark_failed(self._pool(), endpoint_id, seq, attempts, self.clock_ms(), error)
            self.failed += 1
            log.warning(
                "webhook delivery of event %s to %s failed for good after %d attempts: %s",
                seq,
                endpoint_id,
                attempts,
                error,
            )
        else:
            await store.mark_retry(self._pool(), endpoint_id, seq, attempts, next_at, error)

    def _pool(self) -> Any:
        assert self.pool is not None
        return self.pool

    async def drain(self) -> None:
        """Wait for the deliveries in flight (tests)."""
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight.values()), return_exceptions=True)

    async def step(self) -> int:
        """One produce and one deliver pass; returns what they did."""
        produced = await self.produce_once()
        started = await self.deliver_once()
        now_ms = self.clock_ms()
        if now_ms - self.last_prune_ms > PRUNE_INTERVAL_MS:
            await store.prune_events(self.conns[0], now_ms - FEED_RETENTION_MS)
            self.last_prune_ms = now_ms
        return produced + started


READER = "notifier"


def _built(table: str, key: Any, shard: int, build: Callable[..., Any], *args: Any) -> Any:
    """build(*args), the event of one row; a row whose event cannot be built (a value the
    resource shapes cannot show) is quarantined and gives None."""
    try:
        return build(*args)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
        QUARANTINE.skip(READER, RowError(table, key, f"its event cannot be built: {exc!r}"), shard)
        return None


def _partner_event(shard: int, row: Any) -> events.Event:
    return events.partner_event(shard, row["seq"], {**dict(row), "details": json.loads(row["details"])})


def _event_id(body: str) -> str:
    start = body.find('"id":"')
    return body[start + 6 : body.find('"', start + 6)] if start >= 0 else ""


async def run_notifier(
    dsns: list[str], *, allow_private: bool, max_age_s: int, clock_ms: Callable[[], int] = _now_ms, retry_s: float = 1.0
) -> None:
    """Produce and deliver until cancelled. A lost database connection (a restarting
    PostgreSQL, a terminated backend) ends the current Notifier; a new one connects again and
    resumes from the stored positions and deliveries, so nothing is lost or produced twice."""
    log.info(
        "notifier running over %d shards (private webhook addresses %s)",
        len(dsns),
        "allowed" if allow_private else "refused",
    )
    while True:
        notifier = Notifier(dsns, allow_private=allow_private, max_age_s=max_age_s, clock_ms=clock_ms)
        try:
            await notifier.start()
            while True:
                if not await notifier.step():
                    await asyncio.sleep(POLL_INTERVAL_S)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, NoWritableHost) as exc:
            log.warning("notifier lost its database (%r); reconnecting in %.1f s", exc, retry_s)
        finally:
            try:
                await notifier.close()
            except Exception as exc:  # closing what is already broken
                log.debug("closing the old notifier: %r", exc)
        await asyncio.sleep(retry_s)
