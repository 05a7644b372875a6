"""`quickpay bench`: the quick-pay path under open-loop load, with baselines and checks.

Phases (each on its own `quickpay up` subprocess and state directory):
  main    the stack as configured; max sustained rate with p99 <= --p99-ms and errors below
          --error-rate-max, SUT CPU per payment measured from the OS (psutil).
  naive   the same load against `quickpay up --ledger-mode naive` (one PostgreSQL
          transaction per payment with row locks), fewer customers.
  pgbench TPC-B on the main phase's embedded PostgreSQL (same server, same fsync settings).
  sweep   (--sweep) shards {1,2,4} x gateway workers {1,2}, a short search each.
After each load phase: exactly-once (every request of every step is looked up by its
payment id, which is derived from the idempotency key; plus a verification burst whose
acknowledged ids must each exist exactly once) and conservation (ledger.audit).
Writes OUT/bench-report.json, OUT/bench-summary.md and PNG plots.

Modules, one concern each (imports go downwards only: main -> phase -> checks/population ->
stack -> common):
  common      constants, log, ports, machine description
  stack       `quickpay up` as a subprocess; SUT CPU from psutil
  population  seeding through the API; request templates (single and batch)
  checks      exactly once and conservation after each phase
  baselines   pgbench; the hello calibration server phase
  profiling   py-spy (--profile)
  phase       one load phase (the stepped search, the batch phase, verification)
  report      targets, ratios, projection, summaries
  main        `run_bench`: the phases in order and the report files
"""

from __future__ import annotations

from loadtest.bench.baselines import parse_pgbench_tps, run_pgbench
from loadtest.bench.checks import check_conservation, check_load_ids, verify_exactly_once
from loadtest.bench.main import resolve_settings, run_bench, validate_settings
from loadtest.bench.population import Population, build_templates, expected_payment_ids
from loadtest.bench.profiling import summarise_raw_profile
from loadtest.bench.report import projection, summary_markdown
from loadtest.bench.stack import StackProcess, SutCpu

__all__ = [
    "Population",
    "StackProcess",
    "SutCpu",
    "build_templates",
    "check_conservation",
    "check_load_ids",
    "expected_payment_ids",
    "parse_pgbench_tps",
    "projection",
    "resolve_settings",
    "run_bench",
    "run_pgbench",
    "summarise_raw_profile",
    "summary_markdown",
    "validate_settings",
    "verify_exactly_once",
]
