"""The post-event monitor's loop: committed transfers from every shard into fraud.MonitorEngine.

At-least-once with a stored position: per source shard the monitor keeps the
last journal seq it has processed (table monitor_positions in shard 0's
database) and stores alerts there too, in the same transaction as the new
positions. Alert ids are deterministic, so re-reading events after a crash
re-raises the same ids and ON CONFLICT DO NOTHING drops the duplicates. On
start it re-reads a look-back window before its position to rebuild the
engine's window state without raising anything twice.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg

import fraud
from quickpay.ids import is_striped

__all__ = ["run_monitor", "monitor_pass", "Monitor", "MONITOR_DEFAULTS"]

log = logging.getLogger("quickpay.monitor")

READ_BATCH_MAX = 5_000
POLL_INTERVAL_S = 0.5
MONITOR_DEFAULTS: dict[str, int] = {
    "fan_in_distinct_debtors": 3, "fan_in_window_s": 600,
    "pass_through_window_s": 600, "pass_through_ratio_pct": 80,
}
LOOKBACK_MS = 600_000


class Monitor:
    def __init__(self, dsns: list[str], *, settings: dict[str, int] | None = None) -> None:
        self.dsns = dsns
        self.engine = fraud.MonitorEngine(**{**MONITOR_DEFAULTS, **(settings or {})})
        self.conns: list[asyncpg.Connection] = []
        self.positions: dict[int, int] = {}
        self.read_from: dict[int, int] = {}
        self.alerts_raised = 0

    async def start(self) -> None:
        self.conns = [await asyncpg.connect(dsn) for dsn in self.dsns]
        home = self.conns[0]
        rows = await home.fetch("SELECT source_shard, seq FROM monitor_positions")
        self.positions = {r["source_shard"]: r["seq"] for r in rows}
        for shard, conn in enumerate(self.conns):
            position = self.positions.get(shard, 0)
            self.positions[shard] = position
            # Warm the windows with the events just before the stored position.
            first = await conn.fetchval(
                "SELECT coalesce(min(seq), $1 + 1) FROM transfers WHERE seq <= $1 AND created_at_ms >"
                " (SELECT coalesce(max(created_at_ms), 0) FROM transfers WHERE seq <= $1) - $2",
                position, LOOKBACK_MS)
            self.read_from[shard] = first - 1

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    async def poll(self) -> int:
        """One pass over every shard; returns how many events were processed."""
        processed = 0
        for shard, conn in enumerate(self.conns):
            rows = await conn.fetch(
                "SELECT seq, id, kind, debit_account, credit_account, creditor_account, amount_minor,"
                " created_at_ms FROM transfers WHERE seq > $1 AND status <> 'Rejected'"
                " ORDER BY seq LIMIT $2", self.read_from[shard], READ_BATCH_MAX)
            if not rows:
                continue
            alerts: list[Any] = []
            for r in rows:
                if r["kind"] != "payment":
                    continue  # a credit leg repeats its payment row; fundings are the bank's own
                creditor = r["creditor_account"] or r["credit_account"]
                if is_striped(creditor):
                    # Settlement accounts are paid by many customers by design: the mule
                    # patterns are about money moving between customer accounts.
                    continue
                event = fraud.TransferEvent(
                    shard=shard, seq=r["seq"], transfer_id=r["id"], debit_account=r["debit_account"],
                    credit_account=r["creditor_account"] or r["credit_account"],
                    amount_minor=r["amount_minor"], at_ms=r["created_at_ms"])
                alerts.extend(self.engine.process(event))
            last_seq = rows[-1]["seq"]
            self.read_from[shard] = last_seq
            await self._commit(shard, max(last_seq, self.positions[shard]), alerts)
            processed += len(rows)
        return processed

    async def _commit(self, shard: int, position: int, alerts: list[Any]) -> None:
        home = self.conns[0]
        async with home.transaction():
            if alerts:
                result = await home.executemany(
                    "INSERT INTO alerts (id, rule, account, at_ms, details) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (id) DO NOTHING",
                    [(a.alert_id, a.rule, a.account, a.at_ms, json.dumps(a.details)) for a in alerts])
                del result
                self.alerts_raised += len(alerts)
            await home.execute(
                "INSERT INTO monitor_positions (source_shard, seq) VALUES ($1, $2)"
                " ON CONFLICT (source_shard) DO UPDATE SET seq = excluded.seq", shard, position)
        self.positions[shard] = position


async def monitor_pass(dsns: list[str]) -> Monitor:
    """Catch up once and stop (used by tests and by the CLI's --once)."""
    monitor = Monitor(dsns)
    await monitor.start()
    try:
        while await monitor.poll():
            pass
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
                    await conn.fetchval("SELECT 1 FROM monitor_positions LIMIT 1")
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
    monitor = Monitor(dsns)
    await monitor.start()
    log.info("monitor started at positions %s", monitor.positions)
    try:
        while True:
            if not await monitor.poll():
                await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        await monitor.close()
