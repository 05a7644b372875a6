"""PostgreSQL cost of the shard worker's one-statement batch write, by batch size.

    python -m loadtest.write_microbench --state-dir S     # S: a stopped or running stack's state

Writes synthetic balanced batches between two scratch accounts into shard 0's database
through ledger.pg.write_batch, and prints the backend's CPU per statement and per row and
the client's CPU per row (psutil; 10 ms tick resolution, so small sizes are approximate).
The rows stay in the journal (they balance), so use a scratch state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

__all__ = ["main"]


async def _run(dsn: str, sizes: list[int], rows_per_size: int) -> None:
    import asyncpg
    import psutil

    from ledger import pg
    from ledger.model import Transfer
    from ledger.state import WriteSet

    conn = await asyncpg.connect(dsn)
    try:
        for account in ("bench_scratch_a", "bench_scratch_b"):
            await conn.execute(
                "INSERT INTO accounts VALUES ($1, 'customer', 'CNY', 0, true, NULL, 0) ON CONFLICT DO NOTHING", account
            )
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        me = psutil.Process()
        seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers") + 1
        for size in sizes:
            batches = max(1, rows_per_size // size)
            b0, m0, t0 = backend.cpu_times(), me.cpu_times(), time.perf_counter()
            for _ in range(batches):
                ws = WriteSet()
                for _ in range(size):
                    ws.transfers.append(
                        Transfer(
                            id=uuid.uuid4().hex,
                            seq=seq,
                            kind="payment",
                            debit_account="bench_scratch_a",
                            credit_account="bench_scratch_b",
                            amount_minor=1,
                            currency="CNY",
                            status="AcceptedSettlementCompleted",
                            created_at_ms=0,
                            partner_id="p",
                            agreement_id="a",
                            reference="r",
                            creditor_account="bench_scratch_b",
                            body_hash="h",
                        )
                    )
                    seq += 1
                ws.deltas = {"bench_scratch_a": -size, "bench_scratch_b": size}
                await pg.write_batch(conn, ws)
            b1, m1, t1 = backend.cpu_times(), me.cpu_times(), time.perf_counter()
            backend_s = b1.user + b1.system - b0.user - b0.system
            client_s = m1.user + m1.system - m0.user - m0.system
            print(
                f"batch {size:5d}: backend {backend_s / batches * 1e6:7.0f} us/statement"
                f" {backend_s / (batches * size) * 1e6:6.1f} us/row; client {client_s / (batches * size) * 1e6:6.1f}"
                f" us/row; wall {(t1 - t0) / batches * 1e6:7.0f} us/statement"
            )
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    from quickpay.embedded_pg import EmbeddedPostgres, shard_database

    parser = argparse.ArgumentParser(prog="python -m loadtest.write_microbench", description=__doc__)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--rows", type=int, default=4000, help="rows written per batch size")
    args = parser.parse_args(argv)
    database = EmbeddedPostgres(args.state_dir)
    started_here = not database.is_running()
    database.start()
    try:
        asyncio.run(_run(database.dsn(shard_database(0)), [1, 4, 16, 64, 256], args.rows))
    finally:
        if started_here:
            database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
