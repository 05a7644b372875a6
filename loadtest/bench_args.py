"""Arguments of `quickpay bench` (kept apart so the CLI parser imports nothing heavy).

Flags whose default is None get a value from ``loadtest.bench.resolve_settings``: the full
benchmark's default, or a smaller one with ``--quick``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_bench_arguments"]


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench-out", help="report directory (default bench-out)")
    p.add_argument("--quick", action="store_true", help="a first look in under 2 minutes")
    p.add_argument("--state-dir", help="stack state (default: a fresh directory under --out)")
    p.add_argument("--dsn", action="append", help="use these PostgreSQL servers, one per shard")
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="ledger shards (default 1: the cheapest per payment on 2 cores, see --sweep)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway worker processes (default 1: the cheapest per payment on 2 cores)",
    )
    p.add_argument(
        "--with-notifier",
        action="store_true",
        help="run the event/webhook notifier too (off by default, like the monitor: neither is on the "
        "payment path; its CPU shows as the 'notifier' group)",
    )
    p.add_argument(
        "--topology",
        choices=["gateway", "node"],
        default="gateway",
        help="the stack's topology (quickpay up --topology); node: HTTP and shard in one process",
    )
    p.add_argument("--batch-wait-ms", type=float, default=None, help="passed to quickpay up (default: up's own, 1 ms)")
    p.add_argument(
        "--pipeline-depth",
        type=int,
        default=None,
        help="passed to quickpay up, every phase (default: up's own: 2, or its --ha default)",
    )
    p.add_argument(
        "--ha-pipeline-depth",
        type=int,
        default=None,
        help="passed to quickpay up --ha in the --ha phase only (the one-server comparison keeps "
        "--pipeline-depth or up's default)",
    )
    p.add_argument("--customers", type=int, default=None, help="default 1,000,000 (quick: 20,000)")
    p.add_argument("--partners", type=int, default=None, help="default 10 (quick: 2)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per offered-rate step (default 10, quick 5)")
    p.add_argument("--start-rate", type=float, default=None, help="first offered rate (default 500, quick 250)")
    p.add_argument("--max-rate", type=float, default=20000.0)
    p.add_argument("--step-factor", type=float, default=None, help="rate multiplier per step (default 1.5, quick 2)")
    p.add_argument(
        "--steps-max", type=int, default=None, help="steps per search, before refinement (default 14, quick 5)"
    )
    p.add_argument("--generator-processes", type=int, default=1)
    p.add_argument(
        "--generator-poll-ms",
        type=float,
        default=1.0,
        help="generator polls every N ms (0: wake per response); latency is still "
        "measured from each request's intended send time",
    )
    p.add_argument("--connections", type=int, default=256, help="generator connection bound")
    p.add_argument("--p99-ms", type=float, default=25.0)
    p.add_argument("--error-rate-max", type=float, default=0.001)
    p.add_argument("--no-baselines", action="store_true", help="skip the naive ledger and pgbench phases")
    p.add_argument(
        "--naive-customers", type=int, default=None, help="customers for the naive phase (default 20,000, quick 5,000)"
    )
    p.add_argument("--pgbench-s", type=float, default=None, help="pgbench run seconds (default 30, quick 5)")
    p.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument("--verify-payments", type=int, default=200, help="payments in each phase's verification burst")
    p.add_argument(
        "--no-hello",
        action="store_true",
        help="skip the hello calibration phase (then no ratio_vs_hello / cpu_hello_units)",
    )
    p.add_argument(
        "--batch-items",
        type=int,
        default=1000,
        help="payments per request in the batch phase (default 1000; 0 skips the batch phase)",
    )
    p.add_argument(
        "--batch-start-rate", type=float, default=None, help="first offered batch rate, batches/s (default 2)"
    )
    p.add_argument("--batch-p99-ms", type=float, default=100.0, help="batch phase p99 gate (default 100 ms)")
    p.add_argument("--no-rules", action="store_true", help="run the stack without the fraud filter")
    p.add_argument(
        "--history-transfers",
        type=int,
        default=0,
        help="also run the main phase on a ledger holding this many bulk-loaded payments "
        "(e.g. 10000000): restart to ready, RSS, the id filter, TPS against the fresh ledger",
    )
    p.add_argument(
        "--history-accounts",
        type=int,
        default=None,
        help="the history's own accounts (default: a tenth of --history-transfers)",
    )
    p.add_argument(
        "--wrk",
        action="store_true",
        help="also measure with wrk (closed loop, an independent generator): the stack's single and batch "
        "payments, the hello Application, aiohttp's low-level server and the null protocol, same run",
    )
    p.add_argument("--wrk-s", type=float, default=None, help="seconds per wrk run (default 10, quick 5)")
    p.add_argument("--wrk-connections", type=int, default=32, help="wrk connections (batches: an eighth)")
    p.add_argument("--wrk-batch-items", type=int, default=100, help="payments per wrk batch (0: no batch run)")
    p.add_argument(
        "--ha",
        action="store_true",
        help="main phase on `up --ha` (Patroni, synchronous standbys), then the same phase on one "
        "PostgreSQL per shard: the cost of synchronous replication as a ratio",
    )
    p.add_argument("--sweep", action="store_true", help="also run the shards x workers scaling sweep")
    p.add_argument("--profile", action="store_true", help="py-spy the shard and gateway workers")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument(
        "--keep-state", action="store_true", help="keep the phases' state directories (PostgreSQL data) under --out"
    )
