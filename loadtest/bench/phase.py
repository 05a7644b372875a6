"""One load phase: start a stack, seed, search the max sustained rate, verify."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.limits import PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_HA_DEFAULT
from loadtest.bench.baselines import run_pgbench
from loadtest.bench.checks import (
    _verification_burst,
    check_conservation,
    check_load_ids,
    count_committed,
    count_payment_rows,
    verify_exactly_once,
)
from loadtest.bench.common import answered_in_step, log, merge_steps
from loadtest.bench.crosscheck import wrk_against_stack
from loadtest.bench.population import (
    build_batch_templates,
    build_templates,
    expected_batch_payment_ids,
    expected_payment_ids,
    seed,
)
from loadtest.bench.profiling import finish_profilers, start_profilers
from loadtest.bench.stack import StackProcess, SutCpu


# ---- one load phase ------------------------------------------------------------------------
@dataclass
class PhaseConfig:
    name: str
    state_dir: Path
    port: int
    shards: int
    workers: int
    customers: int
    partners: int
    step_s: float
    start_rate: float
    step_factor: float
    steps_max: int
    max_rate: float
    ledger_mode: str | None = None
    dsns: list[str] | None = None
    verify: bool = True
    verify_payments: int = 200
    profile: bool = False
    pgbench: bool = False
    pgbench_s: float = 5.0
    pgbench_scale: int = 10
    # The batch phase (POST /v1/quick-payments/batch) on the same stack; 0 items: none.
    batch_items: int = 0
    batch_start_rate: float = 2.0  # batches per second
    batch_step_factor: float = 2.0
    batch_steps_max: int = 5
    batch_step_s: float = 5.0
    batch_p99_ms: float = 100.0
    hello: bool = False  # keep the templates for the hello phase
    topology: str | None = None  # None: --topology
    ha: bool = False  # `up --ha`: each shard a Patroni cluster with a synchronous standby
    # `--wrk`: after the checks, wrk (closed loop) on the same stack (loadtest/bench/crosscheck.py).
    wrk: bool = False
    wrk_s: float = 10.0
    wrk_connections: int = 32
    wrk_batch_items: int = 100
    # `--history-transfers`: this phase's ledger first gets that many payments over
    # history_accounts accounts, bulk-loaded (loadtest/bench/history.py), then restarts.
    history_transfers: int = 0
    history_accounts: int = 0


def settle_database(dsns: list[str]) -> None:
    """VACUUM ANALYZE and CHECKPOINT every shard after seeding, as pgbench does before
    its runs, so that autovacuum and a checkpoint of the seed don't land in a step."""
    import asyncpg

    async def settle() -> None:
        for dsn in dsns:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("VACUUM ANALYZE")
                await conn.execute("CHECKPOINT")
            finally:
                await conn.close()

    started = time.monotonic()
    asyncio.run(settle())
    log(f"vacuum analyze + checkpoint of {len(dsns)} shard databases took {time.monotonic() - started:.1f}s")


def _warmup(step_s: float) -> float:
    return min(1.0, step_s * 0.2)


def phase_pipeline_depth(args: argparse.Namespace, ha: bool) -> int | None:
    """The --pipeline-depth this phase passes to `quickpay up` (None: up's own default)."""
    if ha and getattr(args, "ha_pipeline_depth", None) is not None:
        return int(args.ha_pipeline_depth)
    depth = getattr(args, "pipeline_depth", None)
    return None if depth is None else int(depth)


def per_payment(cpu_s: dict[str, float], payments: float) -> dict[str, float | None]:
    """CPU seconds per key as µs per payment (None when no payment counted)."""
    return {key: seconds / payments * 1e6 if payments else None for key, seconds in sorted(cpu_s.items())}


def run_phase(cfg: PhaseConfig, args: argparse.Namespace, out: Path, rules: Path | None) -> dict[str, Any]:
    from loadtest.generator import LoadSpec, run_load
    from loadtest.stepper import find_max_sustained, knee

    phase_out = out / cfg.name
    phase_out.mkdir(parents=True, exist_ok=True)
    stack = StackProcess(
        cfg.state_dir,
        cfg.port,
        cfg.shards,
        cfg.workers,
        out / f"up-{cfg.name}.log",
        no_rules=args.no_rules,
        rules=rules,
        ledger_mode=cfg.ledger_mode,
        dsns=cfg.dsns,
        topology=str(cfg.topology or getattr(args, "topology", "gateway")),
        batch_wait_ms=getattr(args, "batch_wait_ms", None),
        pipeline_depth=phase_pipeline_depth(args, cfg.ha),
        notifier=bool(getattr(args, "with_notifier", False)),
        ha=cfg.ha,
    )
    result: dict[str, Any] = {
        "phase": cfg.name,
        "shards": cfg.shards,
        "gateway_workers": cfg.workers,
        "customers": cfg.customers,
        "partners": cfg.partners,
        "ledger_mode": cfg.ledger_mode or "batched",
        "up_command": " ".join(stack.argv),
        "topology": cfg.topology or getattr(args, "topology", "gateway"),
        "ha": cfg.ha,
        "pipeline_depth": phase_pipeline_depth(args, cfg.ha)
        or (PIPELINE_DEPTH_HA_DEFAULT if cfg.ha else PIPELINE_DEPTH_DEFAULT),
    }
    log(
        f"{cfg.name}: starting the stack ({cfg.shards} shards, {cfg.workers} gateway workers"
        f"{', ledger-mode ' + cfg.ledger_mode if cfg.ledger_mode else ''})"
    )
    started = time.monotonic()
    with stack:
        log(f"{cfg.name}: stack ready in {time.monotonic() - started:.1f}s")
        population = seed(stack, cfg.customers, cfg.partners, phase_out)
        if cfg.history_transfers:
            result["history"] = _load_history_and_restart(cfg, stack)
        settle_database(stack.dsns())
        templates, routes = build_templates(population)
        dsns = stack.dsns()
        cpu = SutCpu(stack.pid, None if cfg.dsns else stack.state_dir)
        if cfg.history_transfers:
            result["history"]["rss_mb"] = process_rss_mb(cpu)
        sent_ids: list[str] = []
        acknowledged = 0
        extras: list[dict[str, Any]] = []
        # Warm-up pass (not measured): one request per template at a low rate, so that the
        # first measured step does not pay for loading every hot debtor into the workers.
        warm_rate = min(cfg.start_rate, 500.0)
        warm_s = max(1.0, min(len(templates) / warm_rate, 8.0, 2 * cfg.step_s))
        warm_id = uuid.uuid4().hex[:8]
        warm_spec = LoadSpec(
            host="127.0.0.1",
            port=cfg.port,
            rate_per_s=warm_rate,
            duration_s=warm_s,
            requests=templates,
            connections_max=args.connections,
            timeout_s=2.0,
            run_id=warm_id,
        )
        rows_before = count_payment_rows(dsns)
        warm = run_load(warm_spec)
        sent_ids.extend(expected_payment_ids(warm_id, max(1, int(warm_rate * warm_s)), 1, routes, cfg.shards))
        acknowledged += warm.ok
        log(
            f"{cfg.name}: warm-up {warm.sent} requests at {warm_rate:.0f}/s: {warm.status_counts},"
            f" p99 {warm.p99_ms:.1f} ms (not measured)"
        )

        def run_at_rate(rate: float) -> Any:
            nonlocal acknowledged
            run_id = uuid.uuid4().hex[:8]
            spec = LoadSpec(
                host="127.0.0.1",
                port=cfg.port,
                rate_per_s=rate,
                duration_s=cfg.step_s,
                requests=templates,
                processes=args.generator_processes,
                connections_max=args.connections,
                timeout_s=2.0,
                warmup_s=_warmup(cfg.step_s),
                run_id=run_id,
                poll_interval_s=getattr(args, "generator_poll_ms", 0.0) / 1000,
            )
            machine_before = SutCpu.machine()
            before = cpu.sample()
            load = run_load(spec)
            after = cpu.sample()
            machine_cores = SutCpu.machine_cores(machine_before, SutCpu.machine())
            sut_cpu_s = SutCpu.delta(before, after)
            by_group = cpu.delta_by_group(before, after)
            by_role = cpu.delta_by_role(before, after)
            total = max(1, int(spec.rate_per_s * spec.duration_s))
            sent_ids.extend(expected_payment_ids(run_id, total, spec.processes, routes, cfg.shards))
            acknowledged += load.ok
            ok_all = answered_in_step(load, total)  # SUT CPU covers the whole step
            extras.append(
                {
                    "sut_cpu_s": sut_cpu_s,
                    "run_id": run_id,
                    "requests_total": total,
                    "sut_cpu_us_per_payment_by_process": {
                        group: seconds / ok_all * 1e6 if ok_all else None for group, seconds in sorted(by_group.items())
                    },
                    # with `up --ha`: the leader's PostgreSQL and Patroni apart from the standbys'
                    "sut_cpu_us_per_payment_by_role": per_payment(by_role, ok_all),
                    "sut_cpu_us_per_payment": sut_cpu_s / ok_all * 1e6 if ok_all else None,
                    "sut_cores": sut_cpu_s / max(load.wall_s, 1e-9),
                    # the whole machine, kernel work no process is charged for included
                    "machine_cores_busy": machine_cores,
                    "generator_cpu_share": load.generator_cpu_s / (load.generator_cpu_s + sut_cpu_s)
                    if sut_cpu_s + load.generator_cpu_s > 0
                    else None,
                }
            )
            return load

        def on_step(step: Any) -> None:
            r, extra = step.result, extras[-1]
            us = extra["sut_cpu_us_per_payment"]
            log(
                f"{cfg.name}: offered {step.offered_per_s:8.0f}/s  achieved {r.achieved_per_s:8.0f}/s  "
                f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:8.2f} ms  errors {r.errors}/{r.sent} "
                f"({r.error_ratio:.3%})  SUT CPU {extra['sut_cores']:.2f} cores"
                f" = {us if us is not None else float('nan'):.0f} us/payment, machine"
                f" {extra['machine_cores_busy']:.2f} cores busy  "
                f"{'PASS' if step.passed else 'MISS: ' + '; '.join(step.failed_gates)}"
            )

        best, steps = find_max_sustained(
            run_at_rate,
            cfg.start_rate,
            step_factor=cfg.step_factor,
            rate_max=cfg.max_rate,
            steps_max=cfg.steps_max,
            p99_ms_max=args.p99_ms,
            error_rate_max=args.error_rate_max,
            confirm_miss=not getattr(args, "quick", False),
            on_step=on_step,
        )
        if best == 0.0 and cfg.start_rate / 4 >= 10:
            log(
                f"{cfg.name}: even {cfg.start_rate:.0f}/s missed the gates; searching once more from "
                f"{cfg.start_rate / 4:.0f}/s"
            )
            best, more = find_max_sustained(
                run_at_rate,
                cfg.start_rate / 4,
                step_factor=2.0,
                rate_max=cfg.start_rate,
                steps_max=2,
                p99_ms_max=args.p99_ms,
                error_rate_max=args.error_rate_max,
                on_step=on_step,
            )
            steps = steps + more
        step_dicts, best_step = merge_steps(steps, extras, best)
        result["steps"] = step_dicts
        result["max_sustained_offered_per_s"] = best
        result["best_step"] = best_step
        result["knee"] = knee(best, steps)
        result["max_sustained_tps"] = best_step["achieved_per_s"] if best_step else 0.0
        if best_step is None:
            log(f"{cfg.name}: no step met the gates")

        if cfg.batch_items > 0:
            batch = run_batch_search(cfg, args, stack, population, cpu, sent_ids, cfg.batch_items, out)
            acknowledged += batch["items_acknowledged"]
            if batch["max_sustained_batches_per_s"] == 0.0 and cfg.batch_items >= 2:
                # Even the lowest rate missed: at this size one batch's own serial work is
                # beyond the p99 gate. Search once more with half the items per request.
                half = cfg.batch_items // 2
                log(
                    f"{cfg.name}: batches of {cfg.batch_items} missed the gates at the lowest rate; "
                    f"searching again with {half} payments per request"
                )
                retry = run_batch_search(cfg, args, stack, population, cpu, sent_ids, half, out)
                acknowledged += retry["items_acknowledged"]
                retry["first_attempt"] = {k: v for k, v in batch.items() if k != "first_attempt"}
                batch = retry
            result["batch"] = batch

        if cfg.profile:
            rate = max(100.0, 0.7 * best) if best else cfg.start_rate
            seconds = int(min(10, max(3, cfg.step_s)))
            log(f"{cfg.name}: profiling at {rate:.0f}/s for {seconds}s with py-spy")
            procs = start_profilers(stack, out, seconds)
            load = run_at_rate(rate)
            result["profile"] = {
                "rate_per_s": rate,
                "seconds": seconds,
                "p99_ms": load.p99_ms,
                "files": finish_profilers(procs, out, seconds + 30),
            }

        if cfg.verify:
            burst: dict[str, Any] = {"acknowledged": [], "failures": [], "replays": 0, "replay_mismatch": 0}
            if cfg.verify_payments > 0:
                burst = asyncio.run(_verification_burst(stack.base_url, population, cfg.verify_payments))
            time.sleep(0.5)  # let in-flight cross-shard legs (none expected) settle
            ok_burst, problems = verify_exactly_once(burst["acknowledged"], dsns)
            load_check = check_load_ids(sent_ids, acknowledged, dsns)
            rows_after = count_payment_rows(dsns)
            rows_delta = rows_after - rows_before
            expected_delta = load_check["rows"] + len(burst["acknowledged"])
            count_ok = rows_delta == expected_delta
            if not count_ok:
                problems.append(
                    f"payment rows grew by {rows_delta} but the load and the burst account for {expected_delta}"
                )
            if burst["failures"]:
                problems.append(f"{len(burst['failures'])} verification payments failed: {burst['failures'][:3]}")
            if burst["replay_mismatch"]:
                problems.append(f"{burst['replay_mismatch']} idempotent replays did not return the same payment")
            problems += load_check["problems"]
            exactly_once_ok = (
                ok_burst and load_check["ok"] and count_ok and not burst["failures"] and not burst["replay_mismatch"]
            )
            conservation_ok, audit_report = check_conservation(dsns)
            result["exactly_once_ok"] = exactly_once_ok
            result["exactly_once"] = {
                "ok": exactly_once_ok,
                "problems": problems,
                "verification_payments": len(burst["acknowledged"]),
                "replays": burst["replays"],
                "load": {k: v for k, v in load_check.items() if k != "problems"},
                "payment_rows_before": rows_before,
                "payment_rows_after": rows_after,
            }
            result["conservation_ok"] = conservation_ok
            result["audit"] = {k: audit_report[k] for k in ("ok", "problems", "in_flight_count", "total_minor")}
            log(
                f"{cfg.name}: exactly-once {'OK' if exactly_once_ok else 'FAILED'} "
                f"({load_check['in_ledger']} of {load_check['sent']} load requests in the ledger, "
                f"{acknowledged} acknowledged; {len(burst['acknowledged'])} verification payments); "
                f"conservation {'OK' if conservation_ok else 'FAILED'}"
            )
            for problem in problems[:10] + audit_report["problems"][:10]:
                log(f"{cfg.name}:   {problem}")

        if cfg.wrk:
            # After the exactly-once checks (wrk's payments are not in the generator's list of
            # sent keys); conservation is audited again once wrk is done.
            batch_templates = build_batch_templates(population, cfg.wrk_batch_items)[0] if cfg.wrk_batch_items else []
            try:
                result["wrk"] = wrk_against_stack(
                    cfg.port,
                    templates,
                    batch_templates,
                    cfg.wrk_batch_items,
                    out,
                    seconds=cfg.wrk_s,
                    connections=cfg.wrk_connections,
                    cpu=cpu,
                )
            except Exception as exc:
                log(f"{cfg.name}: wrk failed: {exc}")
                result["wrk"] = {"error": str(exc)[-1500:]}
            time.sleep(0.5)
            wrk_conserved, wrk_audit = check_conservation(dsns)
            result["wrk"]["conservation_ok"] = wrk_conserved
            if not wrk_conserved:
                result["conservation_ok"] = False
                log(f"{cfg.name}: conservation FAILED after wrk: {wrk_audit['problems'][:5]}")

        if cfg.pgbench and not cfg.dsns:
            log(
                f"pgbench: TPC-B scale {cfg.pgbench_scale}, {cfg.pgbench_s:.0f}s on the same PostgreSQL (quickpay idle)"
            )
            try:
                result["pgbench"] = run_pgbench(stack.state_dir, cfg.pgbench_s, cfg.pgbench_scale, out)
                log(f"pgbench: tps = {result['pgbench']['tps']:.0f}")
            except Exception as exc:
                log(f"pgbench failed: {exc}")
                result["pgbench"] = {"tps": None, "error": str(exc)}
    log(f"{cfg.name}: stack stopped; phase took {time.monotonic() - started:.1f}s")
    if cfg.hello:
        result["_templates"] = templates  # for the hello phase; not part of the report
    return result


ID_FILTER_WAIT_S = 600.0
_ID_FILTER_LINE = re.compile(r"shard (\d+): transfer id filter of (\d+) ids built in ([0-9.]+)s \((.*)\)")


def _load_history_and_restart(cfg: PhaseConfig, stack: StackProcess) -> dict[str, Any]:
    """Bulk-load the history while the stack idles, then restart it and time how long it
    takes to be ready again (every shard reloads balances, agreements, spend and its id
    filter from PostgreSQL), and what the id filter grew to (from the shards' log lines)."""
    from loadtest.bench.history import load_history

    log(f"{cfg.name}: bulk-loading {cfg.history_transfers:,} history payments over {cfg.history_accounts:,} accounts")
    loaded = load_history(stack.dsns(), cfg.history_transfers, cfg.history_accounts)
    log(f"{cfg.name}: history loaded in {loaded['load_s']}s ({loaded['rows_per_s']} rows/s); restarting the stack")
    stack.stop()
    started = time.monotonic()
    stack.start()
    loaded["restart_to_ready_s"] = round(time.monotonic() - started, 1)
    # Each shard builds its id filter while it serves (ledger/worker.py): wait for them all.
    deadline = time.monotonic() + ID_FILTER_WAIT_S
    while len(_ID_FILTER_LINE.findall(stack.log_text())) < cfg.shards and time.monotonic() < deadline:
        time.sleep(0.2)
    loaded["id_filters_built_after_restart_s"] = round(time.monotonic() - started, 1)
    loaded["id_filters"] = [
        {"shard": int(m[0]), "ids": int(m[1]), "built_s": float(m[2]), "stats": m[3]}
        for m in _ID_FILTER_LINE.findall(stack.log_text())
    ]
    log(f"{cfg.name}: ready again in {loaded['restart_to_ready_s']}s; id filters {loaded['id_filters']}")
    return loaded


def process_rss_mb(cpu: SutCpu) -> dict[str, Any]:
    """RSS of every process of the stack and its PostgreSQL (MB), by process group and each."""
    import psutil

    from loadtest.bench.stack import process_group

    each: list[dict[str, Any]] = []
    groups: dict[str, float] = {}
    for pid, proc in cpu.processes().items():
        try:
            rss_mb = proc.memory_info().rss / 1e6
            group = process_group(proc.cmdline())
        except psutil.Error:
            continue
        groups[group] = round(groups.get(group, 0.0) + rss_mb, 1)
        each.append({"pid": pid, "group": group, "rss_mb": round(rss_mb, 1)})
    return {"by_group": groups, "processes": sorted(each, key=lambda e: -e["rss_mb"])}


def run_batch_search(
    cfg: PhaseConfig,
    args: argparse.Namespace,
    stack: StackProcess,
    population: Any,
    cpu: SutCpu,
    sent_ids: list[str],
    items: int,
    out: Path | None = None,
) -> dict[str, Any]:
    """Stepped batch rates (batches/s) of `cfg.batch_items` payments each, open loop, same
    generator; gates: batch p99 <= cfg.batch_p99_ms, errors < --error-rate-max, achieved >= 95%.
    An item is an error when its payment is not in the ledger after the step (the generator
    sees only the batch's HTTP status); that ratio counts against the error gate like failed
    requests. Every item's id goes to `sent_ids` for the phase's exactly-once check."""
    import dataclasses
    import math

    from loadtest.generator import LoadSpec, run_load
    from loadtest.stepper import find_max_sustained, knee

    templates, routes = build_batch_templates(population, items)
    dsns = stack.dsns()
    extras: list[dict[str, Any]] = []
    acknowledged_items = 0

    def run_at_rate(rate: float) -> Any:
        nonlocal acknowledged_items
        run_id = uuid.uuid4().hex[:8]
        spec = LoadSpec(
            host="127.0.0.1",
            port=cfg.port,
            rate_per_s=rate,
            duration_s=cfg.batch_step_s,
            requests=templates,
            processes=1,
            connections_max=args.connections,
            timeout_s=10.0,
            warmup_s=_warmup(cfg.batch_step_s),
            run_id=run_id,
        )
        before = cpu.sample()
        load = run_load(spec)
        after = cpu.sample()
        sut_cpu_s = SutCpu.delta(before, after)
        by_group = cpu.delta_by_group(before, after)
        by_role = cpu.delta_by_role(before, after)
        total = max(1, int(rate * cfg.batch_step_s))
        ids = expected_batch_payment_ids(run_id, total, 1, routes, cfg.shards)
        sent_ids.extend(ids)
        committed = count_committed(ids, dsns)
        ok_all = answered_in_step(load, total)
        acknowledged_items += load.ok * items
        item_error_ratio = 1.0 - committed / len(ids) if ids else 0.0
        extras.append(
            {
                "items_per_batch": items,
                "items_sent": len(ids),
                "items_committed": committed,
                "item_error_ratio": item_error_ratio,
                "payments_per_s": load.achieved_per_s * items,
                "sut_cpu_s": sut_cpu_s,
                "sut_cores": sut_cpu_s / max(load.wall_s, 1e-9),
                "sut_cpu_us_per_payment": sut_cpu_s / committed * 1e6 if committed else None,
                "sut_cpu_us_per_payment_by_process": {
                    group: seconds / committed * 1e6 if committed else None
                    for group, seconds in sorted(by_group.items())
                },
                "sut_cpu_us_per_payment_by_role": per_payment(by_role, committed),
                "requests_ok_all": ok_all,
            }
        )
        item_errors = math.ceil(item_error_ratio * load.sent)
        return dataclasses.replace(load, errors=max(load.errors, item_errors))

    def on_step(step: Any) -> None:
        r, extra = step.result, extras[-1]
        us = extra["sut_cpu_us_per_payment"]
        log(
            f"{cfg.name} batch x{items}: offered {step.offered_per_s:6.1f}/s = {step.offered_per_s * items:7.0f}"
            f" payments/s  achieved {extra['payments_per_s']:7.0f} payments/s  p50 {r.p50_ms:7.2f} ms  p99"
            f" {r.p99_ms:8.2f} ms  items committed {extra['items_committed']}/{extra['items_sent']}  SUT CPU"
            f" {extra['sut_cores']:.2f} cores = {us if us is not None else float('nan'):.0f} us/payment  "
            f"{'PASS' if step.passed else 'MISS: ' + '; '.join(step.failed_gates)}"
        )

    best, steps = find_max_sustained(
        run_at_rate,
        cfg.batch_start_rate,
        step_factor=cfg.batch_step_factor,
        rate_max=cfg.max_rate / items * 4,
        steps_max=cfg.batch_steps_max,
        p99_ms_max=cfg.batch_p99_ms,
        error_rate_max=args.error_rate_max,
        confirm_miss=not getattr(args, "quick", False),
        on_step=on_step,
    )
    step_dicts, best_step = merge_steps(steps, extras, best)
    profile = None
    if cfg.profile and out is not None:
        # The batch path's own profile (`--profile`), at its max sustained rate, or at the
        # first rate when none passed (a profile of the work is what is wanted, gates or not).
        rate = best or cfg.batch_start_rate
        seconds = int(min(10, max(3, cfg.batch_step_s)))
        log(f"{cfg.name} batch x{items}: profiling at {rate:.1f} batches/s for {seconds}s with py-spy")
        procs = start_profilers(stack, out, seconds, prefix=f"batch{items}-")
        load = run_at_rate(rate)
        profile = {
            "batches_per_s": rate,
            "items_per_batch": items,
            "seconds": seconds,
            "p99_ms": load.p99_ms,
            "files": finish_profilers(procs, out, seconds + 30),
        }
    return {
        "profile": profile,
        "knee": knee(best, steps),
        "items_per_batch": items,
        "steps": step_dicts,
        "max_sustained_batches_per_s": best,
        "batch_payments_per_s": best_step["payments_per_s"] if best_step else 0.0,
        "batch_p50_ms": best_step["p50_ms"] if best_step else None,
        "batch_p99_ms": best_step["p99_ms"] if best_step else None,
        "batch_sut_cpu_us_per_payment": best_step["sut_cpu_us_per_payment"] if best_step else None,
        "batch_sut_cpu_us_per_payment_by_process": best_step["sut_cpu_us_per_payment_by_process"]
        if best_step
        else None,
        "batch_sut_cpu_us_per_payment_by_role": best_step.get("sut_cpu_us_per_payment_by_role") if best_step else None,
        "p99_ms_gate": cfg.batch_p99_ms,
        "items_acknowledged": acknowledged_items,
        "search_capped": bool(steps) and all(s.passed for s in steps),
    }
