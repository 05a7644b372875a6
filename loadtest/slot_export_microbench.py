"""How long `ledger.slot_pg.export_slot` takes on a shard database with a long history (issue 21).

A private embedded PostgreSQL, one shard database bulk-loaded as `quickpay bench
--history-transfers` loads it (loadtest/bench/history.py: a ring of payments over customer
accounts, binary COPY, then ANALYZE), then the export of several slots, each timed, with the
time of each of its statements' plans (EXPLAIN ANALYZE) for the first slot. Run:

    python -m loadtest.slot_export_microbench --accounts 200000 --transfers 1000000

Prints one JSON object. Off the payment path: nothing else runs meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run"]

SLOTS_TIMED_MAX = 50


async def _measure(dsn: str, transfers: int, accounts: int, slots: int) -> dict[str, Any]:
    import asyncpg

    from ledger import pg, slot_pg
    from loadtest.bench.history import _load_shard

    conn = await asyncpg.connect(dsn)
    try:
        await pg.ensure_schema(conn, 0, 1)
        started = time.monotonic()
        now_ms = time.time_ns() // 1_000_000
        await _load_shard(dsn, 0, 1, transfers, accounts, now_ms)
        load_s = time.monotonic() - started
        # Slots spread over the range, each holding accounts (about accounts / 5,040 of them).
        chosen = [(k * 5_039) // max(1, slots - 1) for k in range(slots)]
        timings_ms: list[float] = []
        rows = []
        for slot in chosen:
            t0 = time.perf_counter()
            export = await slot_pg.export_slot(conn, slot, now_ms=now_ms)
            timings_ms.append((time.perf_counter() - t0) * 1_000)
            rows.append((len(export.image.accounts), len(export.image.transfers)))
        ids = list((await slot_pg.export_slot(conn, chosen[0], now_ms=now_ms)).image.accounts)
        plans = {}
        statements: list[tuple[str, str, list[Any]]] = [
            (
                "accounts",
                "SELECT id FROM accounts WHERE kind = 'customer' AND quickpay_slot_of(id) = $1",
                [chosen[0]],
            ),
            ("agreements", "SELECT id FROM agreements WHERE quickpay_slot_of(debtor_account) = $1", [chosen[0]]),
            ("transfers", slot_pg._SNAPSHOT_TRANSFERS, [ids]),
            # What the statement costs without its pass over the journal for Rejected rows.
            (
                "transfers_money_moving_only",
                " UNION ALL ".join(slot_pg._SNAPSHOT_TRANSFERS.split(" UNION ALL ")[:2]),
                [ids],
            ),
            # The accounts' statement without the expression index (crc32 of every account).
            (
                "accounts_without_index",
                "SELECT id FROM accounts WHERE kind = 'customer' AND quickpay_slot_of(id) = $1",
                [chosen[0]],
            ),
        ]
        for name, sql, args in statements:
            off = name.endswith("without_index")
            if off:
                await conn.execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            if off:
                await conn.execute("RESET enable_indexscan; RESET enable_bitmapscan")
            top = json.loads(plan)[0]
            plans[name] = {"execution_ms": round(top["Execution Time"], 2), "plan": _nodes(top["Plan"])}
        return {
            "accounts": accounts,
            "transfers": transfers,
            "load_s": round(load_s, 1),
            "slots_exported": len(chosen),
            "accounts_per_slot_mean": round(statistics.mean(a for a, _ in rows), 1),
            "transfers_per_slot_mean": round(statistics.mean(t for _, t in rows), 1),
            "export_ms_median": round(statistics.median(timings_ms), 1),
            "export_ms_max": round(max(timings_ms), 1),
            "plans": plans,
        }
    finally:
        await conn.close()


def _nodes(plan: dict[str, Any]) -> list[str]:
    """The plan's node types and indexes, depth first."""
    found = [plan["Node Type"] + (f" {plan['Index Name']}" if "Index Name" in plan else "")]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def run(transfers: int, accounts: int, slots: int) -> dict[str, Any]:
    from quickpay.embedded_pg import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="slot-export-") as directory:
        database = EmbeddedPostgres(Path(directory))
        database.start()
        try:
            database.create_databases(["bench"])
            return asyncio.run(_measure(database.dsn("bench"), transfers, accounts, slots))
        finally:
            database.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--slots", type=int, default=20, help=f"slots exported and timed (at most {SLOTS_TIMED_MAX})")
    args = parser.parse_args(argv)
    if not 1 <= args.slots <= SLOTS_TIMED_MAX or args.transfers % args.accounts:
        parser.error(f"--slots 1..{SLOTS_TIMED_MAX}; --transfers a multiple of --accounts")
    print(json.dumps(run(args.transfers, args.accounts, args.slots), indent=2))


if __name__ == "__main__":
    main()
