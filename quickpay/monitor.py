"""The post-event monitor's loop: committed transfers from every shard into fraud.MonitorEngine.

At-least-once with a stored position, resumed exactly: every SNAPSHOT_INTERVAL_S
the monitor stores its engine's whole state together with the journal position
per source shard that state reflects (table monitor_snapshot, shard 0's
database, one transaction). After a restart it loads the snapshot and re-reads
the journal from those positions, so nothing is missed. Events after the snapshot
are processed a second time, but the shards' events may interleave differently on
the second reading, so an episode can cross its threshold at another transfer and
get another alert id. Alerts are therefore stored one per episode in the database
too: an alert is not inserted when the same rule already alerted on the same
account within the rule's window. Nothing is raised twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import asyncpg

import fraud
from kernel.ids import is_striped
from ledger import notify_store as store
from ledger.rows import QUARANTINE, RowError, check_row
from ledger.writable import NoWritableHost, connect_writable

__all__ = ["MONITOR_DEFAULTS", "Monitor", "monitor_pass", "run_monitor"]

log = logging.getLogger("quickpay.monitor")

READ_BATCH_MAX = 5_000
POLL_INTERVAL_S = 0.5
SNAPSHOT_INTERVAL_S = 5.0
MONITOR_DEFAULTS: dict[str, int] = {
    "fan_in_distinct_debtors": 3,
    "fan_in_window_s": 600,
    "pass_through_window_s": 600,
    "pass_through_ratio_pct": 80,
}


RECONNECT_S = 1.0
APPLICATION_NAME = "quickpay-monitor"  # its backends, in pg_stat_activity
_CONNECTION_LOST = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ReadOnlySQLTransactionError,
    NoWritableHost,
)


class Monitor:
    def __init__(
        self, dsns: list[str], *, settings: dict[str, int] | None = None, clock_s: Any = time.monotonic
    ) -> None:
        self.dsns = dsns
        self.config: dict[str, Any] = {**MONITOR_DEFAULTS, **(settings or {})}
        self.engine = fraud.MonitorEngine(**self.config)
        self.conns: list[asyncpg.Connection] = []
        self.positions: dict[int, int] = {}
        self.alerts_raised = 0
        self.clock_s = clock_s
        self.last_snapshot_s = clock_s()

    async def start(self) -> None:
        # With `up --ha` (multi-host DSNs): the member that commits, not a cut-off primary.
        self.conns = [
            (await connect_writable(dsn, server_settings={"application_name": APPLICATION_NAME}))[0]
            for dsn in self.dsns
        ]
        row = await self.conns[0].fetchrow("SELECT positions, state FROM monitor_snapshot WHERE id = 1")
        if row is not None:
            try:
                positions = {int(k): v for k, v in json.loads(row["positions"]).items()}
                if not all(type(v) is int and v >= 0 for v in positions.values()):
                    raise ValueError("positions are not journal seqs")
                engine = fraud.MonitorEngine.from_state(json.loads(row["state"]), **self.config)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # A snapshot it cannot read would stop every start: quarantined, and the monitor
                # reads the journals again from the start with an empty engine (alerts are
                # stored once per episode, so nothing is raised twice).
                QUARANTINE.skip("monitor", RowError("monitor_snapshot", 1, repr(exc)))
                await store.record_quarantined(self.conns[0], QUARANTINE.take_unstored(), int(time.time() * 1000))
            else:
                self.engine, self.positions = engine, positions
        for shard in range(len(self.conns)):
            self.positions.setdefault(shard, 0)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    async def poll(self) -> int:
        """One pass over every shard; returns how many journal rows were read."""
        processed = 0
        for shard, conn in enumerate(self.conns):
            rows = await conn.fetch(
                "SELECT seq, id, kind, debit_account, credit_account, creditor_account, amount_minor,"
                " created_at_ms FROM transfers WHERE seq > $1 AND status <> 'Rejected'"
                " ORDER BY seq LIMIT $2",
                self.positions[shard],
                READ_BATCH_MAX,
            )
            if not rows:
                continue
            alerts: list[Any] = []
            for row in rows:
                try:
                    r = check_row("transfers", row)  # one it cannot read is quarantined, not judged
                except RowError as exc:
                    QUARANTINE.skip("monitor", exc, shard)
                    continue
                kind = r["kind"]
                if kind not in ("payment", "refund"):
                    continue  # a credit leg repeats its payment row; fundings are the bank's own
                creditor = r["creditor_account"] or r["credit_account"]
                if kind == "payment" and is_striped(creditor):
                    # Settlement accounts are paid by many customers by design: the mule
                    # patterns are about money moving between customer accounts.
                    continue
                alerts.extend(
                    self.engine.process(
                        fraud.TransferEvent(
                            shard=shard,
                            seq=r["seq"],
                            transfer_id=r["id"],
                            debit_account=r["debit_account"],
                            credit_account=creditor,
                            amount_minor=r["amount_minor"],
                            at_ms=r["created_at_ms"],
                            kind=kind,
                        )
                    )
                )
            if alerts:
                await self._store_alerts(alerts)
            await store.record_quarantined(self.conns[0], QUARANTINE.take_unstored(), int(time.time() * 1000))
            self.positions[shard] = rows[-1]["seq"]
            processed += len(rows)
        if self.clock_s() - self.last_snapshot_s >= SNAPSHOT_INTERVAL_S:
            await self.snapshot()
        return processed

    def _window_ms(self, rule: str) -> int:
        key = "fan_in_window_s" if rule == "fan_in" else "pass_through_window_s"
        return self.config[key] * 1000

    async def _store_alerts(self, alerts: list[Any]) -> None:
        await self.conns[0].executemany(
            "INSERT INTO alerts (id, rule, account, at_ms, details)"
            " SELECT $1::text, $2::text, $3::text, $4::bigint, $5::jsonb WHERE NOT EXISTS"
            " (SELECT 1 FROM alerts WHERE rule = $2 AND account = $3"
            " AND at_ms > $4::bigint - $6::bigint AND at_ms < $4::bigint + $6::bigint)"
            " ON CONFLICT (id) DO NOTHING",
            [(a.alert_id, a.rule, a.account, a.at_ms, json.dumps(a.details), self._window_ms(a.rule)) for a in alerts],
        )
        self.alerts_raised += len(alerts)

    async def snapshot(self) -> None:
        """Store the engine state and the positions it reflects, together."""
        await self.conns[0].execute(
            "INSERT INTO monitor_snapshot (id, positions, state, at_ms) VALUES (1, $1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET positions = excluded.positions, state = excluded.state,"
            " at_ms = excluded.at_ms",
            json.dumps({str(k): v for k, v in self.positions.items()}),
            json.dumps(self.engine.state_dict()),
            int(time.time() * 1000),
        )
        self.last_snapshot_s = self.clock_s()


async def monitor_pass(dsns: list[str], *, snapshot: bool = True) -> Monitor:
    """Catch up once and stop; with snapshot=False it stops as a crash would, unsaved."""
    monitor = Monitor(dsns)
    await monitor.start()
    try:
        while await monitor.poll():
            pass
        if snapshot:
            await monitor.snapshot()
    finally:
        await monitor.close()
    return monitor


async def _wait_for_schema(dsns: list[str]) -> None:
    # Shard workers create the schema; the monitor may start before them.
    for _ in range(600):
        try:
            for dsn in dsns:
                conn = await asyncpg.connect(dsn)
                try:
                    await conn.fetchval("SELECT 1 FROM monitor_snapshot LIMIT 1")
                finally:
                    await conn.close()
            return
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.5)
    raise SystemExit("monitor: shard databases never got their schema")


async def run_monitor(dsns: list[str]) -> None:
    if not dsns:
        raise SystemExit("monitor needs --dsn (every shard, in order) or QUICKPAY_DSNS")
    await _wait_for_schema(dsns)
    while True:
        monitor = Monitor(dsns)
        try:
            await monitor.start()
            log.info("monitor started at positions %s", monitor.positions)
            while True:
                if not await monitor.poll():
                    await asyncio.sleep(POLL_INTERVAL_S)
        except _CONNECTION_LOST as exc:
            # A database restarted or failed over (`up --ha`). Start again from the last
            # snapshot, as after a crash: the engine may have seen rows whose alerts were not
            # stored, and must not count them twice.
            log.warning("monitor lost its database (%r); starting again from its snapshot in %.0f s", exc, RECONNECT_S)
            for conn in monitor.conns:
                conn.terminate()
            await asyncio.sleep(RECONNECT_S)
            continue
        except BaseException:
            try:
                await monitor.snapshot()
            finally:
                await monitor.close()
            raise
