"""Entry point of `quickpay bench`: settings, the phases in order, the report files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.bench.baselines import rate_limiter_cost_us, run_hello_phase
from loadtest.bench.common import _free_port, log, machine_info
from loadtest.bench.crosscheck import wrk_against_servers, wrk_ratios
from loadtest.bench.phase import PhaseConfig, run_phase
from loadtest.bench.population import bench_rules
from loadtest.bench.report import TARGETS, _fmt, _ratio, projection, summary_markdown


# ---- settings --------------------------------------------------------------------------
def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left at None with the full or the --quick default."""
    quick = bool(getattr(args, "quick", False))
    defaults: dict[str, Any] = {
        "customers": 20_000 if quick else 1_000_000,
        "partners": 2 if quick else 10,
        "step_s": 5.0 if quick else 10.0,
        "start_rate": 250.0 if quick else 500.0,
        "step_factor": 2.0 if quick else 1.5,
        "steps_max": 5 if quick else 14,
        "naive_customers": 5_000 if quick else 20_000,
        "pgbench_s": 5.0 if quick else 30.0,
        "batch_start_rate": 2.0,
        "wrk_s": 5.0 if quick else 10.0,
    }
    resolved = argparse.Namespace(**vars(args))
    for name, value in defaults.items():
        if getattr(resolved, name, None) is None:
            setattr(resolved, name, value)
    fallbacks: dict[str, Any] = {
        "max_rate": 20000.0,
        "generator_processes": 1,
        "connections": 256,
        "p99_ms": 25.0,
        "error_rate_max": 0.001,
        "no_baselines": False,
        "no_rules": False,
        "sweep": False,
        "profile": False,
        "port": 18080,
        "shards": 1,
        "workers": 1,
        "dsn": None,
        "generator_poll_ms": 1.0,
        "state_dir": None,
        "out": "bench-out",
        "verify_payments": 200,
        "pgbench_scale": 10,
        "no_hello": False,
        "batch_items": 1000,
        "batch_p99_ms": 100.0,
        "topology": "gateway",
        "wrk": False,
        "history_transfers": 0,
        "history_accounts": None,
        "wrk_connections": 32,
        "wrk_batch_items": 100,
    }
    for name, value in fallbacks.items():
        if not hasattr(resolved, name):
            setattr(resolved, name, value)
    return resolved


# ---- entry point ---------------------------------------------------------------------------
def validate_settings(args: argparse.Namespace) -> None:
    """Refuse a configuration that cannot run, before anything starts."""
    problems = []
    if not 1 <= args.shards <= 64:
        problems.append("--shards must be between 1 and 64")
    if not 1 <= args.workers <= 64:
        problems.append("--workers must be between 1 and 64")
    if not 1 <= args.partners <= 1_000:
        problems.append("--partners must be between 1 and 1000")
    if not args.partners <= args.customers <= 50_000_000:
        problems.append("--customers must be at least --partners and at most 50,000,000")
    if not 1.0 <= args.step_s <= 600:
        problems.append("--step-s must be between 1 and 600 seconds")
    if not 0 < args.start_rate <= args.max_rate <= 1_000_000:
        problems.append("need 0 < --start-rate <= --max-rate <= 1,000,000")
    if not 1 <= args.generator_processes <= 16:
        problems.append("--generator-processes must be between 1 and 16")
    if not 0 <= args.generator_poll_ms <= 5:
        problems.append("--generator-poll-ms must be between 0 and 5")
    if args.history_transfers:
        from loadtest.bench.history import HISTORY_TRANSFERS_MAX

        if not 1 <= args.history_transfers <= HISTORY_TRANSFERS_MAX:
            raise SystemExit(f"--history-transfers must be 1-{HISTORY_TRANSFERS_MAX}")
        if args.history_accounts is None:
            args.history_accounts = max(2, args.history_transfers // 10)
        per_shard_a = args.history_accounts // args.shards
        if per_shard_a < 2 or (args.history_transfers // args.shards) % per_shard_a:
            raise SystemExit(
                "--history-transfers / --shards must be a multiple of --history-accounts / --shards (each ring balances)"
            )
    if args.wrk and not 1 <= args.wrk_connections <= 1000:
        raise SystemExit("--wrk-connections must be 1-1000")
    if args.wrk and not 0 <= args.wrk_batch_items <= 1000:
        raise SystemExit("--wrk-batch-items must be 0-1000")
    if args.wrk and not 1 <= args.wrk_s <= 120:
        raise SystemExit("--wrk-s must be 1-120")
    if args.wrk and args.no_hello:
        raise SystemExit("--wrk compares against the hello servers: drop --no-hello")
    if not 0 <= args.batch_items <= 1000:
        problems.append("--batch-items must be between 0 (no batch phase) and 1000 (the endpoint's maximum)")
    if not 0 < args.batch_start_rate <= 1000:
        problems.append("--batch-start-rate must be > 0 and <= 1000 batches/s")
    if not 1 <= args.batch_p99_ms <= 60_000:
        problems.append("--batch-p99-ms must be between 1 and 60000")
    if problems:
        raise SystemExit("quickpay bench: " + "; ".join(problems))


def run_bench(args: argparse.Namespace) -> int:
    args = resolve_settings(args)
    validate_settings(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base_state = Path(args.state_dir).resolve() if args.state_dir else out / "state"
    if args.dsn and len(args.dsn) != args.shards:
        raise SystemExit(f"got {len(args.dsn)} --dsn for --shards {args.shards}: give one per shard")
    rules = None if args.no_rules else bench_rules(out)
    report: dict[str, Any] = {
        "command_line": " ".join(["quickpay", *sys.argv[1:]])
        if sys.argv and "quickpay" in sys.argv[0]
        else " ".join(sys.argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "cpu_count": os.cpu_count(),
        "quick": bool(args.quick),
        "shards": args.shards,
        "gateway_workers": args.workers,
        "topology": args.topology,
        "customers": args.customers,
        "partners": args.partners,
        "step_s": args.step_s,
        "p99_ms_gate": args.p99_ms,
        "error_rate_gate": args.error_rate_max,
        "generator_processes": args.generator_processes,
        "rules": "none (--no-rules)"
        if args.no_rules
        else "shipped rules, debtor velocity thresholds raised (every rule still evaluated)",
        "targets": TARGETS,
        "notes": [],
        "problems": [],
    }
    main_state = base_state / "main"
    for path in (main_state, base_state / "naive"):
        if path.exists() and not args.state_dir:
            shutil.rmtree(path, ignore_errors=True)
    code = 0
    try:
        main_cfg = PhaseConfig(
            name="main",
            state_dir=main_state,
            port=_free_port(args.port),
            shards=args.shards,
            workers=args.workers,
            customers=args.customers,
            partners=args.partners,
            step_s=args.step_s,
            start_rate=args.start_rate,
            step_factor=args.step_factor,
            steps_max=args.steps_max,
            max_rate=args.max_rate,
            dsns=args.dsn,
            verify_payments=args.verify_payments,
            profile=args.profile,
            pgbench=not args.no_baselines,
            pgbench_s=args.pgbench_s,
            pgbench_scale=args.pgbench_scale,
            batch_items=args.batch_items,
            batch_start_rate=args.batch_start_rate,
            batch_step_factor=2.0 if args.quick else 1.5,
            batch_steps_max=4 if args.quick else 10,
            batch_step_s=args.step_s,
            batch_p99_ms=args.batch_p99_ms,
            hello=not args.no_hello,
            ha=bool(getattr(args, "ha", False)),
            wrk=bool(args.wrk),
            wrk_s=args.wrk_s,
            wrk_connections=args.wrk_connections,
            wrk_batch_items=args.wrk_batch_items,
        )
        if main_cfg.ha and args.dsn:
            raise SystemExit("quickpay bench: --ha runs its own PostgreSQL clusters; no --dsn")
        main = run_phase(main_cfg, args, out, rules)
        if main_cfg.ha:
            report["ha"] = _single_server_comparison(main_cfg, main, args, out, base_state, rules)
        templates = main.pop("_templates", None)
        best = main.get("best_step") or {}
        report.update(
            {
                "max_sustained_tps": main["max_sustained_tps"],
                "max_sustained_offered_per_s": main["max_sustained_offered_per_s"],
                "p50_ms": best.get("p50_ms"),
                "p99_ms": best.get("p99_ms"),
                "p999_ms": best.get("p999_ms"),
                "error_rate": best.get("error_ratio"),
                "sut_cpu_us_per_payment": best.get("sut_cpu_us_per_payment"),
                "sut_cpu_us_per_payment_by_process": best.get("sut_cpu_us_per_payment_by_process"),
                "sut_cpu_cores_at_max": best.get("sut_cores"),
                "generator_cpu_share": best.get("generator_cpu_share"),
                "generator_cpu_us_per_request": best.get("cpu_us_per_request"),
                "exactly_once_ok": main.get("exactly_once_ok"),
                "conservation_ok": main.get("conservation_ok"),
                "exactly_once": main.get("exactly_once"),
                "audit": main.get("audit"),
                "steps": main["steps"],
                "up_command": main["up_command"],
                "profile": main.get("profile"),
            }
        )
        if args.dsn:
            report["notes"].append("external PostgreSQL (--dsn): its CPU is not in the SUT CPU figure")
        report["notes"].append(
            "SUT CPU = user+sys CPU (psutil) of the `quickpay up` process tree and the PostgreSQL server's"
            " processes over the max sustained step, divided by that step's 2xx answers; at low rates fixed"
            " per-batch costs (commits, wake-ups) are spread over few payments"
        )
        report["projection"] = projection(report["sut_cpu_us_per_payment"])
        # What one core of each component sustains at the max step (payments/s), and the
        # cores each needs for the bank's figures: the basis of the projection, per tier.
        by_process = report.get("sut_cpu_us_per_payment_by_process") or {}
        report["capacity_per_core"] = {
            group: {
                "payments_per_s": round(1e6 / us),
                "cores_for_14000_tps": round(14_000 * us / 1e6, 2),
                "cores_for_50000_tps": round(50_000 * us / 1e6, 2),
            }
            for group, us in by_process.items()
            if us and us >= 1
        }
        report["pgbench"] = main.get("pgbench")
        report["pgbench_tps"] = (main.get("pgbench") or {}).get("tps")
        report["naive_max_sustained_tps"] = None
        if not args.no_baselines:
            naive_rate = max(100.0, (report["max_sustained_tps"] or 1000.0) / 8)
            naive_cfg = PhaseConfig(
                name="naive",
                state_dir=base_state / "naive",
                port=_free_port(),
                shards=args.shards,
                workers=args.workers,
                customers=args.naive_customers,
                partners=args.partners,
                step_s=max(2.0, args.step_s * 0.6),
                start_rate=naive_rate,
                step_factor=2.0 if args.quick else 1.5,
                steps_max=4 if args.quick else 10,
                max_rate=args.max_rate,
                ledger_mode="naive",
                verify_payments=min(args.verify_payments, 100),
            )
            try:
                naive = run_phase(naive_cfg, args, out, rules)
                report["naive"] = {
                    k: naive.get(k)
                    for k in (
                        "customers",
                        "steps",
                        "max_sustained_tps",
                        "exactly_once_ok",
                        "conservation_ok",
                        "up_command",
                    )
                }
                report["naive_max_sustained_tps"] = naive["max_sustained_tps"]
                report["notes"].append(
                    f"naive baseline: fresh state with {args.naive_customers} customers, steps of "
                    f"{naive_cfg.step_s:g}s, same gates"
                )
                if naive.get("exactly_once_ok") is False or naive.get("conservation_ok") is False:
                    report["problems"].append("the naive baseline failed its exactly-once or conservation check")
            except Exception as exc:
                log(f"naive phase failed: {exc}")
                report["naive"] = {"error": str(exc)[-1500:]}
                report["problems"].append(f"naive phase failed: {str(exc)[:300]}")
        batch = main.get("batch") or {}
        report["batch"] = batch or None
        for key in (
            "batch_payments_per_s",
            "batch_p50_ms",
            "batch_p99_ms",
            "batch_sut_cpu_us_per_payment",
            "batch_sut_cpu_us_per_payment_by_process",
            "items_per_batch",
        ):
            report[key if key.startswith("batch_") else "batch_items"] = batch.get(key)
        report["hello"] = None
        if templates is not None:
            hello_start = max(args.start_rate, float(report["max_sustained_tps"] or 0.0))
            try:
                hello = run_hello_phase(
                    args,
                    out,
                    templates,
                    start_rate=hello_start,
                    step_factor=2.0 if args.quick else 1.5,
                    steps_max=4 if args.quick else 8,
                    step_s=args.step_s,
                )
                report["hello"] = hello
            except Exception as exc:
                log(f"hello phase failed: {exc}")
                report["hello"] = {"error": str(exc)[-1500:]}
                report["problems"].append(f"hello phase failed: {str(exc)[:300]}")
        report["generator_ceiling"] = None
        if templates is not None and isinstance(report["hello"], dict) and "error" not in report["hello"]:
            # Our generator against the null protocol: the most it can offer on this machine,
            # so that H (and every rate here) is known to be the server's, not the generator's.
            try:
                report["generator_ceiling"] = run_hello_phase(
                    args,
                    out,
                    templates,
                    # From half of H: the ceiling is above H unless the generator limits H.
                    start_rate=max(args.start_rate, float(report["hello"].get("hello_max_sustained_tps") or 0.0) / 2),
                    step_factor=2.0 if args.quick else 1.5,
                    steps_max=6 if args.quick else 10,
                    step_s=args.step_s,
                    server="null",
                )
            except Exception as exc:
                log(f"generator ceiling (null server) failed: {exc}")
                report["generator_ceiling"] = {"error": str(exc)[-1500:]}
                report["problems"].append(f"generator ceiling phase failed: {str(exc)[:300]}")
        hello_report = report["hello"] or {}
        ceiling = report["generator_ceiling"] or {}
        report["generator_ceiling_per_s"] = ceiling.get("hello_max_sustained_tps")
        report["hello_vs_generator_ceiling"] = _ratio(
            hello_report.get("hello_max_sustained_tps"), report["generator_ceiling_per_s"]
        )
        report["hello_max_sustained_tps"] = hello_report.get("hello_max_sustained_tps")
        report["generator_bound"] = generator_bound(report)
        report["knees"] = {
            name: part.get("knee")
            for name, part in (
                ("main", main),
                ("batch", batch),
                ("hello", hello_report),
                ("generator_ceiling", ceiling),
            )
            if isinstance(part, dict) and part.get("knee")
        }
        report["hello_cpu_us_per_request"] = hello_report.get("hello_cpu_us_per_request")
        report["ratio_vs_hello"] = _ratio(report["max_sustained_tps"], report["hello_max_sustained_tps"])
        report["cpu_hello_units"] = _ratio(report["sut_cpu_us_per_payment"], report["hello_cpu_us_per_request"])
        report["batch_ratio_vs_hello"] = _ratio(report["batch_payments_per_s"], report["hello_max_sustained_tps"])
        report["ratio_vs_naive"] = _ratio(report["max_sustained_tps"], report["naive_max_sustained_tps"])
        report["ratio_vs_pgbench"] = _ratio(report["max_sustained_tps"], report["pgbench_tps"])
        report["rate_limiter_us_per_request"] = round(rate_limiter_cost_us(), 2)
        report["rate_limiter_share_of_payment"] = _ratio(
            report["rate_limiter_us_per_request"], report["sut_cpu_us_per_payment"]
        )
        if args.wrk:
            stack_wrk = main.get("wrk") or {}
            servers = (
                wrk_against_servers(templates, out, seconds=args.wrk_s, connections=args.wrk_connections)
                if templates is not None
                else {"error": "no templates"}
            )
            report["wrk"] = {
                "stack": stack_wrk,
                "servers": servers,
                "ratios": wrk_ratios(stack_wrk, servers, report),
            }
        if args.history_transfers:
            report["history"] = _history_phase(main_cfg, main, args, out, base_state, rules)
        if args.sweep:
            report["sweep"] = run_sweep(args, out, base_state, rules, report["max_sustained_tps"])
        if not report["exactly_once_ok"] or not report["conservation_ok"]:
            report["problems"].append("the main phase failed its exactly-once or conservation check")
            code = 1
    except KeyboardInterrupt:
        log("interrupted; the stack was stopped")
        report["problems"].append("interrupted")
        code = 130
    except Exception as exc:
        log(f"bench failed: {type(exc).__name__}: {exc}")
        report["problems"].append(f"{type(exc).__name__}: {str(exc)[:1000]}")
        code = 1
    if not args.state_dir and not getattr(args, "keep_state", False):
        shutil.rmtree(base_state, ignore_errors=True)  # PostgreSQL data of every phase (stopped by now)
    report["duration_s"] = round(time.monotonic() - started, 1)
    for key in (
        "max_sustained_tps",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "error_rate",
        "sut_cpu_us_per_payment",
        "generator_cpu_share",
        "naive_max_sustained_tps",
        "pgbench_tps",
        "ratio_vs_naive",
        "ratio_vs_pgbench",
        "exactly_once_ok",
        "conservation_ok",
        "steps",
        "hello_max_sustained_tps",
        "hello_cpu_us_per_request",
        "ratio_vs_hello",
        "cpu_hello_units",
        "batch_payments_per_s",
        "batch_p99_ms",
        "batch_ratio_vs_hello",
    ):
        report.setdefault(key, None)
    report.setdefault("projection", projection(None))
    (out / "bench-report.json").write_text(json.dumps(report, indent=2, default=str))
    try:
        (out / "bench-summary.md").write_text(summary_markdown(report))
    except Exception as exc:
        log(f"could not write the summary: {exc}")
    if report.get("steps"):
        try:
            from loadtest.plots import plot_all

            plot_all(report["steps"], out, prefix="main", p99_ms_max=args.p99_ms)
            if (report.get("naive") or {}).get("steps"):
                plot_all(report["naive"]["steps"], out, prefix="naive", p99_ms_max=args.p99_ms)
            if (report.get("hello") or {}).get("steps"):
                plot_all(report["hello"]["steps"], out, prefix="hello", p99_ms_max=args.p99_ms)
            if (report.get("batch") or {}).get("steps"):
                plot_all(report["batch"]["steps"], out, prefix="batch", p99_ms_max=args.batch_p99_ms)
        except Exception as exc:
            log(f"plots failed: {exc}")
    print(_console_summary(report, out))
    return code


GENERATOR_BOUND_SHARE = 0.5


def _history_phase(
    main_cfg: PhaseConfig,
    main: dict[str, Any],
    args: argparse.Namespace,
    out: Path,
    base_state: Path,
    rules: Path | None,
) -> dict[str, Any]:
    """The main phase again, on a fresh state that first gets the bulk-loaded history, and
    its figures as ratios to the fresh ledger's of this run (issue 19: within 10%)."""
    import dataclasses

    cfg = dataclasses.replace(
        main_cfg,
        name="history",
        state_dir=base_state / "history",
        port=_free_port(),
        profile=False,
        pgbench=False,
        hello=False,
        wrk=False,
        history_transfers=args.history_transfers,
        history_accounts=args.history_accounts,
    )
    if cfg.state_dir.exists() and not args.state_dir:
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
    try:
        phase = run_phase(cfg, args, out, rules)
    except Exception as exc:
        log(f"history phase failed: {exc}")
        return {"error": str(exc)[-1500:]}
    phase.pop("_templates", None)
    batch, fresh_batch = phase.get("batch") or {}, main.get("batch") or {}
    found = dict(phase.get("history") or {})
    found.update(
        {
            "max_sustained_tps": phase.get("max_sustained_tps"),
            "batch_payments_per_s": batch.get("batch_payments_per_s"),
            "tps_vs_fresh": _ratio(phase.get("max_sustained_tps"), main.get("max_sustained_tps")),
            "batch_vs_fresh": _ratio(batch.get("batch_payments_per_s"), fresh_batch.get("batch_payments_per_s")),
            "exactly_once_ok": phase.get("exactly_once_ok"),
            "conservation_ok": phase.get("conservation_ok"),
            "steps": phase.get("steps"),
            "batch_steps": batch.get("steps"),
        }
    )
    log(
        f"history: restart to ready {found.get('restart_to_ready_s')}s; TPS {found['max_sustained_tps']} "
        f"({found['tps_vs_fresh']} of fresh); batch {found['batch_payments_per_s']} ({found['batch_vs_fresh']} of fresh)"
    )
    return found


def generator_bound(report: dict[str, Any]) -> dict[str, bool] | None:
    """Which request rates came within 2x of the generator's own ceiling (issue 19): those
    may be the generator's limit rather than the server's, and are marked so."""
    ceiling = report.get("generator_ceiling_per_s")
    if not ceiling:
        return None
    batch = report.get("batch") or {}
    rates = {
        "max_sustained_tps": report.get("max_sustained_tps"),
        "hello_max_sustained_tps": report.get("hello_max_sustained_tps"),
        "batch_requests_per_s": batch.get("max_sustained_batches_per_s"),
    }
    return {name: rate >= ceiling * GENERATOR_BOUND_SHARE for name, rate in rates.items() if rate is not None}


def _console_summary(r: dict[str, Any], out: Path) -> str:
    return "\n".join(
        [
            f"max sustained: {_fmt(r.get('max_sustained_tps'))} TPS at p50 {_fmt(r.get('p50_ms'), '.2f')} ms,"
            f" p99 {_fmt(r.get('p99_ms'), '.2f')} ms, p99.9 {_fmt(r.get('p999_ms'), '.2f')} ms,"
            f" errors {_fmt(r.get('error_rate'), '.4%')}",
            f"SUT CPU: {_fmt(r.get('sut_cpu_us_per_payment'))} us/payment; generator CPU share"
            f" {_fmt(r.get('generator_cpu_share'), '.1%')}",
            f"hello: H {_fmt(r.get('hello_max_sustained_tps'))} requests/s, h {_fmt(r.get('hello_cpu_us_per_request'))}"
            f" us/request; ratio_vs_hello {_fmt(r.get('ratio_vs_hello'), '.2f')}, cpu_hello_units"
            f" {_fmt(r.get('cpu_hello_units'), '.2f')}",
            f"batch: {_fmt(r.get('batch_payments_per_s'))} payments/s at p99 {_fmt(r.get('batch_p99_ms'), '.1f')} ms;"
            f" batch_ratio_vs_hello {_fmt(r.get('batch_ratio_vs_hello'), '.2f')}",
            f"naive ledger: {_fmt(r.get('naive_max_sustained_tps'))} TPS (ratio {_fmt(r.get('ratio_vs_naive'), '.2f')}x);"
            f" pgbench: {_fmt(r.get('pgbench_tps'))} TPS (ratio {_fmt(r.get('ratio_vs_pgbench'), '.2f')}x)",
            f"generator ceiling (null server): {_fmt(r.get('generator_ceiling_per_s'))} requests/s;"
            f" H is {_fmt(r.get('hello_vs_generator_ceiling'), '.2f')} of it",
            *(
                [
                    f"wrk: single ÷ app {_fmt(r['wrk']['ratios'].get('single_vs_app'), '.2f')}, batch ÷ app"
                    f" {_fmt(r['wrk']['ratios'].get('batch_vs_app'), '.2f')}, single ÷ low-level"
                    f" {_fmt(r['wrk']['ratios'].get('single_vs_low_level'), '.2f')}, batch ÷ low-level"
                    f" {_fmt(r['wrk']['ratios'].get('batch_vs_low_level'), '.2f')}"
                ]
                if r.get("wrk")
                else []
            ),
            f"exactly-once: {_fmt(r.get('exactly_once_ok'))}; conservation: {_fmt(r.get('conservation_ok'))}",
            *(
                [
                    f"HA (synchronous standby) vs one server per shard: single payments "
                    f"{_fmt(r['ha']['single_payment']['tps_ratio'], '.2f')}x TPS, "
                    f"{_fmt(r['ha']['single_payment']['cpu_ratio'], '.2f')}x CPU/payment; batch "
                    f"{_fmt(r['ha']['batch']['ratio'], '.2f')}x payments/s"
                ]
                if r.get("ha")
                else []
            ),
            f"took {r.get('duration_s')}s; report: {out / 'bench-report.json'}, {out / 'bench-summary.md'}",
        ]
    )


# The sweep: gateway topology (shards x gateway workers) and node topology (one process per
# shard serving HTTP), each a short search from half the main phase's max sustained rate.
SWEEP_CONFIGS = (
    ("gateway", 1, 1),
    ("gateway", 1, 2),
    ("gateway", 2, 1),
    ("gateway", 2, 2),
    ("node", 1, 1),
    ("node", 2, 1),
)


def _single_server_comparison(
    main_cfg: Any, main: dict[str, Any], args: argparse.Namespace, out: Path, base_state: Path, rules: Path | None
) -> dict[str, Any]:
    """The main phase again on one PostgreSQL per shard (no standby), same settings, same
    session: what synchronous replication costs on the single-payment and batch paths."""
    import dataclasses

    single_cfg = dataclasses.replace(
        main_cfg,
        name="single-server",
        state_dir=base_state / "single-server",
        port=_free_port(),
        ha=False,
        pgbench=False,
        hello=False,
        profile=False,
    )
    if single_cfg.state_dir.exists() and not args.state_dir:
        shutil.rmtree(single_cfg.state_dir, ignore_errors=True)
    single = run_phase(single_cfg, args, out, rules)
    best_ha, best_single = main.get("best_step") or {}, single.get("best_step") or {}
    batch_ha, batch_single = main.get("batch") or {}, single.get("batch") or {}
    return {
        "members_per_shard": 3,
        "synchronous_mode_strict": True,
        "single_payment": {
            "ha_tps": main["max_sustained_tps"],
            "single_server_tps": single["max_sustained_tps"],
            "tps_ratio": _ratio(main["max_sustained_tps"], single["max_sustained_tps"]),
            "ha_p99_ms": best_ha.get("p99_ms"),
            "single_server_p99_ms": best_single.get("p99_ms"),
            "ha_cpu_us_per_payment": best_ha.get("sut_cpu_us_per_payment"),
            "single_server_cpu_us_per_payment": best_single.get("sut_cpu_us_per_payment"),
            "cpu_ratio": _ratio(best_ha.get("sut_cpu_us_per_payment"), best_single.get("sut_cpu_us_per_payment")),
            "ha_cpu_us_by_process": best_ha.get("sut_cpu_us_per_payment_by_process"),
            "ha_cpu_us_by_role": best_ha.get("sut_cpu_us_per_payment_by_role"),
        },
        "batch": {
            # Same first step on both (same items per request and offered rate): comparable
            # even when one side misses its gate there.
            "first_step": _first_step_pair(batch_ha, batch_single),
            "ha_payments_per_s": batch_ha.get("batch_payments_per_s"),
            "single_server_payments_per_s": batch_single.get("batch_payments_per_s"),
            "ratio": _ratio(batch_ha.get("batch_payments_per_s"), batch_single.get("batch_payments_per_s")),
            "ha_p99_ms": batch_ha.get("batch_p99_ms"),
            "single_server_p99_ms": batch_single.get("batch_p99_ms"),
            # At the HA max step: the leader's PostgreSQL and Patroni apart from the standbys'.
            "ha_cpu_us_per_payment": batch_ha.get("batch_sut_cpu_us_per_payment"),
            "ha_cpu_us_by_role": batch_ha.get("batch_sut_cpu_us_per_payment_by_role"),
            "single_server_cpu_us_per_payment": batch_single.get("batch_sut_cpu_us_per_payment"),
            "single_server_cpu_us_by_role": batch_single.get("batch_sut_cpu_us_per_payment_by_role"),
            "ha_pipeline_depth": main.get("pipeline_depth"),
            "single_server_pipeline_depth": single.get("pipeline_depth"),
        },
        "single_server_exactly_once_ok": single.get("exactly_once_ok"),
        "single_server_conservation_ok": single.get("conservation_ok"),
        "up_command": single.get("up_command"),
    }


def _first_step_pair(ha: dict[str, Any], single: dict[str, Any]) -> dict[str, Any] | None:
    """The batch phase's first step on each stack, when both ran the same one."""
    steps_ha, steps_single = ha.get("steps") or [], single.get("steps") or []
    if not steps_ha or not steps_single:
        return None
    a, b = steps_ha[0], steps_single[0]
    if (a.get("items_per_batch"), a.get("offered_per_s")) != (b.get("items_per_batch"), b.get("offered_per_s")):
        return None
    return {
        "items_per_batch": a.get("items_per_batch"),
        "payments_per_s": a.get("payments_per_s"),
        "ha_p50_ms": a.get("p50_ms"),
        "single_server_p50_ms": b.get("p50_ms"),
        "ha_p99_ms": a.get("p99_ms"),
        "single_server_p99_ms": b.get("p99_ms"),
        "p50_ratio": _ratio(a.get("p50_ms"), b.get("p50_ms")),
        "ha_cpu_us_per_payment": a.get("sut_cpu_us_per_payment"),
        "single_server_cpu_us_per_payment": b.get("sut_cpu_us_per_payment"),
        "ha_cpu_us_by_role": a.get("sut_cpu_us_per_payment_by_role"),
        "single_server_cpu_us_by_role": b.get("sut_cpu_us_per_payment_by_role"),
        "cpu_ratio": _ratio(a.get("sut_cpu_us_per_payment"), b.get("sut_cpu_us_per_payment")),
    }


def run_sweep(
    args: argparse.Namespace, out: Path, base_state: Path, rules: Path | None, main_best_tps: float | None = None
) -> list[dict[str, Any]]:
    results = []
    customers = min(args.customers, 20_000)
    start_rate = max(args.start_rate, 0.5 * (main_best_tps or 0.0))
    for topology, shards, workers in SWEEP_CONFIGS:
        name = f"sweep-{topology}-s{shards}" + (f"-w{workers}" if topology == "gateway" else "")
        state = base_state / name
        shutil.rmtree(state, ignore_errors=True)
        cfg = PhaseConfig(
            name=name,
            state_dir=state,
            port=_free_port(),
            shards=shards,
            workers=workers,
            customers=customers,
            partners=min(args.partners, 2),
            step_s=min(args.step_s, 6.0),
            start_rate=start_rate,
            step_factor=1.25,
            steps_max=min(args.steps_max, 7),
            max_rate=args.max_rate,
            verify_payments=50,
            topology=topology,
        )
        entry: dict[str, Any] = {
            "topology": topology,
            "shards": shards,
            "gateway_workers": workers if topology == "gateway" else 0,
        }
        try:
            phase = run_phase(cfg, args, out, rules)
            best = phase.get("best_step") or {}
            cores = best.get("sut_cores")
            entry.update(
                {
                    "max_sustained_tps": phase["max_sustained_tps"],
                    "p99_ms": best.get("p99_ms"),
                    "sut_cores": cores,
                    "sut_cpu_us_per_payment": best.get("sut_cpu_us_per_payment"),
                    "sut_cpu_us_per_payment_by_process": best.get("sut_cpu_us_per_payment_by_process"),
                    "efficiency_tps_per_core": phase["max_sustained_tps"] / cores if cores else None,
                    "exactly_once_ok": phase.get("exactly_once_ok"),
                    "conservation_ok": phase.get("conservation_ok"),
                    "customers": customers,
                }
            )
        except Exception as exc:
            log(f"{name} failed: {exc}")
            entry["error"] = str(exc)[:500]
        results.append(entry)
    return results
