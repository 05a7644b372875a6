"""CPU of one group commit's PostgreSQL write (issue 19, lever 3), by write method and batch size.

    python -m loadtest.pg_write_microbench [--sizes 1000,100] [--rows 20000] [--rounds 3]
        [--methods current,json,copy,unnest,json_nobal,copy_nobal] [--drop-index NAME ...]

Starts a private embedded PostgreSQL (fsync and synchronous_commit on, as `quickpay up` runs it)
in a temporary directory, makes the shard schema (ledger/schema.sql) and 20,000 customer
accounts, then writes balanced batches of payment rows (customer -> one settlement account, as
a batch of one partner's payments is) and measures, per method and batch size:

- the shard side: time.process_time() of this process around the write call (the parameter
  building and encoding included), µs per row;
- the backend: utime+stime of the connection's backend (/proc/<pg_backend_pid()>/stat), µs per
  row; and the cluster's other processes (WAL writer, checkpointer, autovacuum...) apart.

Methods (each writes the same kind of rows in one transaction; all but the `_nobal` ones also
the balance deltas):
- `current`: ledger.pg.write_batch as this checkout has it;
- `json`: the transfers as one JSON document expanded by json_populate_recordset, deltas as two
  arrays, one statement (the write of commit 62dd2bc);
- `copy`: BEGIN; binary COPY of the transfers (asyncpg copy_records_to_table); the deltas'
  UPDATE; COMMIT: four round trips;
- `unnest`: one statement, the transfers as twenty typed arrays expanded by unnest;
- `copy_sorted`: as `copy` with the deltas sorted by account id (an ordered walk of the index);
- `json_nobal`, `copy_nobal`: as `json` and `copy` without the balance UPDATE, to show what the
  per-batch balance update costs (what checkpointed balances would save).

Rounds are interleaved (every method once per round, the order rotated) and the best round of
each is printed: the machine is shared, so compare CPU, never wall clock. /proc ticks are 10 ms:
keep --rows large enough (20,000 rows at ~20 µs a row is 400 ms, 2.5% resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

CUSTOMERS = 20_000
SETTLEMENT = "set_bench_ptn"
PARTNER = "ptn_bench"
NOW_MS = 1_780_000_000_000
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def _children_cpu_s(postmaster_pid: int, skip: int) -> float:
    """CPU of the postmaster and its children other than `skip` (the measured backend)."""
    import psutil

    total = 0.0
    parent = psutil.Process(postmaster_pid)
    for proc in [parent, *parent.children()]:
        if proc.pid == skip:
            continue
        try:
            total += _proc_cpu_s(proc.pid)
        except OSError:
            pass
    return total


def _batch(seq: int, size: int, rng: random.Random) -> Any:
    from ledger.model import Transfer
    from ledger.state import WriteSet

    ws = WriteSet()
    debtors = rng.sample(range(CUSTOMERS), size)
    total = 0
    for n, debtor in enumerate(debtors):
        amount_minor = rng.randint(1, 100_000)
        total += amount_minor
        ws.transfers.append(
            Transfer(
                id=f"pay_{rng.getrandbits(128):032x}_0",
                seq=seq + n,
                kind="payment",
                debit_account=f"acc_{debtor:020d}",
                credit_account=SETTLEMENT,
                amount_minor=amount_minor,
                currency="CNY",
                status="AcceptedSettlementCompleted",
                created_at_ms=NOW_MS + seq + n,
                partner_id=PARTNER,
                agreement_id=f"agr_{debtor:020d}",
                reference=f"order-{seq + n}",
                creditor_account=SETTLEMENT,
                body_hash=f"{rng.getrandbits(256):064x}",
                ip="10.0.0.1",
            )
        )
        ws.deltas[f"acc_{debtor:020d}"] = -amount_minor
    ws.deltas[SETTLEMENT] = total
    return ws


# ---- the candidate writes ------------------------------------------------------------------
_JSON_INSERT = (
    "WITH t AS (INSERT INTO transfers ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::transfers, $1::json)"
    " RETURNING 1){update} SELECT (SELECT count(*) FROM t){count}"
)
_UPDATE_CTE = (
    ", d AS (UPDATE accounts a SET balance_minor = a.balance_minor + v.delta"
    " FROM unnest($2::text[], $3::bigint[]) AS v(id, delta) WHERE a.id = v.id RETURNING 1)"
)
_UPDATE_SQL = (
    "WITH u AS (UPDATE accounts a SET balance_minor = a.balance_minor + v.delta"
    " FROM unnest($1::text[], $2::bigint[]) AS v(id, delta) WHERE a.id = v.id RETURNING 1) SELECT count(*) FROM u"
)
_ARRAY_TYPES = (
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "bigint",
    "text",
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",  # reasons: text[] travels as its array literal text, cast below
    "jsonb",
    "text",
    "text",
    "text",
    "bigint",
    "jsonb",
)


def _sql() -> dict[str, str]:
    from ledger.pg import TRANSFER_COLUMNS

    cols = ", ".join(TRANSFER_COLUMNS)
    arrays = ", ".join(f"${n + 1}::{kind}[]" for n, kind in enumerate(_ARRAY_TYPES))
    select = ", ".join(f"u.{c}::text[]" if c == "reasons" else f"u.{c}" for c in TRANSFER_COLUMNS)
    n = len(TRANSFER_COLUMNS)
    return {
        "json": _JSON_INSERT.format(cols=cols, update=_UPDATE_CTE, count=", (SELECT count(*) FROM d)"),
        "json_nobal": _JSON_INSERT.format(cols=cols, update="", count=""),
        "unnest": (
            f"WITH t AS (INSERT INTO transfers ({cols}) SELECT {select} FROM unnest({arrays}) AS u({cols})"
            " RETURNING 1), d AS (UPDATE accounts a SET balance_minor = a.balance_minor + v.delta"
            f" FROM unnest(${n + 1}::text[], ${n + 2}::bigint[]) AS v(id, delta) WHERE a.id = v.id RETURNING 1)"
            " SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM d)"
        ),
    }


def _methods() -> dict[str, Callable[[Any, Any], Awaitable[None]]]:
    import msgspec

    from ledger import pg

    sql = _sql()
    encode = msgspec.json.Encoder().encode

    async def current(conn: Any, ws: Any) -> None:
        await pg.write_batch(conn, ws)

    async def json_write(conn: Any, ws: Any) -> None:
        await conn.fetchrow(sql["json"], encode(ws.transfers).decode(), list(ws.deltas), list(ws.deltas.values()))

    async def json_nobal(conn: Any, ws: Any) -> None:
        await conn.fetchrow(sql["json_nobal"], encode(ws.transfers).decode())

    async def copy_write(conn: Any, ws: Any, balances: bool = True) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "transfers", columns=pg.TRANSFER_COLUMNS, records=[pg.transfer_record(t) for t in ws.transfers]
            )
            if balances:
                await conn.fetchval(_UPDATE_SQL, list(ws.deltas), list(ws.deltas.values()))

    async def copy_sorted(conn: Any, ws: Any) -> None:
        # as `copy`, with the deltas in key order: the UPDATE then walks accounts_pkey in order
        ws.deltas = dict(sorted(ws.deltas.items()))
        await copy_write(conn, ws)

    async def copy_nobal(conn: Any, ws: Any) -> None:
        await copy_write(conn, ws, balances=False)

    async def unnest_write(conn: Any, ws: Any) -> None:
        records = [pg.transfer_record(t) for t in ws.transfers]
        columns = [list(column) for column in zip(*records)]
        columns[13] = ["{" + ",".join(r) + "}" for r in columns[13]]  # reasons as array literals
        await conn.fetchrow(sql["unnest"], *columns, list(ws.deltas), list(ws.deltas.values()))

    return {
        "current": current,
        "json": json_write,
        "copy": copy_write,
        "unnest": unnest_write,
        "json_nobal": json_nobal,
        "copy_nobal": copy_nobal,
        "copy_sorted": copy_sorted,
    }


async def _run(dsn: str, postmaster_pid: int, args: argparse.Namespace) -> None:
    import asyncpg

    from ledger import pg

    conn = await asyncpg.connect(dsn)
    try:
        await pg.ensure_schema(conn, 0, 1)
        for index in args.drop_index:
            await conn.execute(f'DROP INDEX IF EXISTS "{index}"')
        if args.accounts_fillfactor:
            await conn.execute(f"ALTER TABLE accounts SET (fillfactor = {int(args.accounts_fillfactor)})")
        await conn.execute(
            "INSERT INTO accounts (id, kind, currency, balance_minor, allow_negative, partner_id, created_at_ms)"
            " VALUES ($1, 'settlement', 'CNY', 0, false, $2, 0) ON CONFLICT DO NOTHING",
            SETTLEMENT,
            PARTNER,
        )
        await conn.copy_records_to_table(
            "accounts",
            columns=("id", "kind", "currency", "balance_minor", "allow_negative", "created_at_ms"),
            records=[(f"acc_{i:020d}", "customer", "CNY", 10**15, False, 0) for i in range(CUSTOMERS)],
        )
        await conn.execute("VACUUM ANALYZE accounts")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        methods = _methods()
        chosen = [m.strip() for m in args.methods.split(",")]
        unknown = [m for m in chosen if m not in methods]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(methods)}")
        rng = random.Random(args.seed)
        seq = 1
        # (method, size) -> list of (shard µs/row, backend µs/row, other PostgreSQL µs/row)
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for size in args.sizes:
            batches = max(1, args.rows // size)
            for method in chosen:  # warm-up: plans, caches, the copy's introspection statement
                ws = _batch(seq, size, rng)
                seq += size
                await methods[method](conn, ws)
            for round_no in range(args.rounds):
                order = chosen[round_no % len(chosen) :] + chosen[: round_no % len(chosen)]
                for method in order:
                    sets = []
                    for _ in range(batches):
                        sets.append(_batch(seq, size, rng))
                        seq += size
                    write = methods[method]
                    rows = batches * size
                    shard_s = 0.0
                    b0, o0 = _proc_cpu_s(backend), _children_cpu_s(postmaster_pid, backend)
                    for ws in sets:
                        c0 = time.process_time()
                        await write(conn, ws)
                        shard_s += time.process_time() - c0
                    b1, o1 = _proc_cpu_s(backend), _children_cpu_s(postmaster_pid, backend)
                    results.setdefault((method, size), []).append(
                        (shard_s / rows * 1e6, (b1 - b0) / rows * 1e6, (o1 - o0) / rows * 1e6)
                    )
        hot = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'accounts'")
        print(f"accounts updates: {hot['n_tup_upd']}, of which HOT (no index entry): {hot['n_tup_hot_upd']}")
        count = await conn.fetchval("SELECT count(*) FROM transfers")
        total = await conn.fetchval("SELECT sum(balance_minor) FROM accounts")
        if count != seq - 1 or total != CUSTOMERS * 10**15:
            raise SystemExit(f"written {count} rows of {seq - 1}, balances sum {total}: a method lost a write")
    finally:
        await conn.close()
    print(f"CPU µs per row, best of {args.rounds} interleaved rounds (shard + backend = the pair compared)")
    print(f"{'method':<12} {'rows/batch':>10} {'shard':>8} {'backend':>8} {'sum':>8} {'other PG':>9}  all rounds (s/b)")
    for (method, size), runs in sorted(results.items(), key=lambda kv: (-kv[0][1], chosen.index(kv[0][0]))):
        best = min(runs, key=lambda r: r[0] + r[1])
        rounds = " ".join(f"{s:.1f}/{b:.1f}" for s, b, _ in runs)
        print(
            f"{method:<12} {size:>10} {best[0]:>8.1f} {best[1]:>8.1f} {best[0] + best[1]:>8.1f} {best[2]:>9.1f}  {rounds}"
        )


def main(argv: list[str] | None = None) -> int:
    from quickpay.embedded_pg import EmbeddedPostgres

    parser = argparse.ArgumentParser(prog="python -m loadtest.pg_write_microbench", description=__doc__)
    parser.add_argument("--sizes", default="1000,100", help="rows per batch, comma-separated")
    parser.add_argument("--rows", type=int, default=20_000, help="rows written per method, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="current,json,copy,unnest,json_nobal,copy_nobal")
    parser.add_argument("--drop-index", action="append", default=[], help="drop this index first (repeatable)")
    parser.add_argument("--accounts-fillfactor", type=int, default=0, help="set the accounts table's fillfactor first")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="qp-pgwrite-") as scratch:
        database = EmbeddedPostgres(Path(scratch))
        database.start()
        try:
            database.create_databases(["bench"])
            postmaster_pid = int((database.data_dir / "postmaster.pid").read_text().split()[0])
            asyncio.run(_run(database.dsn("bench"), postmaster_pid, args))
        finally:
            database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
