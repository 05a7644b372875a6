"""The report: targets, ratios, projection, markdown and console summaries."""

from __future__ import annotations

from typing import Any

# Targets are ratios measured in the same run (issue 8): absolute figures do not travel
# between machines, so they are reported but not judged.
TARGETS = {
    "ratio_vs_hello": 0.75,
    "cpu_hello_units": 2.0,
    "batch_ratio_vs_hello": 3.0,
    "ratio_vs_pgbench": 3.0,
    "ratio_vs_naive": 3.0,
    "cores_for_50000_tps": 8.0,
    "p99_ms": 25.0,
    "batch_p99_ms": 100.0,
}


# ---- report --------------------------------------------------------------------------------
def projection(cpu_us_per_payment: float | None) -> dict[str, Any]:
    if not cpu_us_per_payment:
        return {"cores_for_14000_tps": None, "cores_for_50000_tps": None, "assumption": "no measurement"}
    return {
        "cores_for_14000_tps": round(14000 * cpu_us_per_payment / 1e6, 2),
        "cores_for_50000_tps": round(50000 * cpu_us_per_payment / 1e6, 2),
        "assumption": "linear scaling: cores = target TPS x SUT CPU per payment; ignores contention, "
        "network hops between machines and PostgreSQL I/O limits",
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _fmt(value: Any, spec: str = ".0f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**miss**")


def history_lines(history: dict[str, Any] | None) -> list[str]:
    """The history phase's section (`--history-transfers`), or nothing."""
    if not history:
        return []
    if history.get("error"):
        return ["## Scale with history", "", f"history phase failed: {history['error']}", ""]
    rss = (history.get("rss_mb") or {}).get("by_group") or {}
    filters = history.get("id_filters") or []
    return [
        "## Scale with history (same run, a second main phase)",
        "",
        f"{_fmt(history.get('transfers'))} payments over {_fmt(history.get('accounts'))} accounts bulk-loaded in"
        f" {_fmt(history.get('load_s'), '.1f')} s ({_fmt(history.get('rows_per_s'))} rows/s; {history.get('method')}).",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| restart to ready (s) | {_fmt(history.get('restart_to_ready_s'), '.1f')} | <= 30 |",
        f"| single payments TPS / fresh ledger's | {_fmt(history.get('max_sustained_tps'))} /"
        f" {_fmt(history.get('tps_vs_fresh'), '.2f')} | >= 0.9 |",
        f"| batch payments/s / fresh ledger's | {_fmt(history.get('batch_payments_per_s'))} /"
        f" {_fmt(history.get('batch_vs_fresh'), '.2f')} | >= 0.9 |",
        "| RSS by process group (MB; PostgreSQL's shared buffers count in each backend) | "
        + ", ".join(f"{group} {mb:.0f}" for group, mb in sorted(rss.items()))
        + " | stated |",
        "| id filter per shard: ids, build s, layers | "
        + "; ".join(f"shard {f['shard']}: {f['ids']:,} ids, {f['built_s']:.2f} s ({f['stats']})" for f in filters)
        + " | bounded, stated |",
        f"| exactly-once / conservation | {_fmt(history.get('exactly_once_ok'))} / {_fmt(history.get('conservation_ok'))}"
        " | yes / yes |",
        "",
    ]


def wrk_lines(wrk: dict[str, Any] | None) -> list[str]:
    """The wrk cross-check's section (`--wrk`), or nothing."""
    if not wrk:
        return []
    ratios = wrk.get("ratios") or {}
    agree = ratios.get("agreement") or {}
    lines = [
        "## Cross-check with wrk (closed loop, same run)",
        "",
        "| target | requests/s | payments/s | p50 ms | p99 ms | errors | SUT us/payment | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(f"stack {k}", v) for k, v in (wrk.get("stack") or {}).items() if isinstance(v, dict) and "requests" in v]
    rows += [
        (f"hello {k}", v) for k, v in (wrk.get("servers") or {}).items() if isinstance(v, dict) and "requests" in v
    ]
    for name, v in rows:
        lines.append(
            f"| {name} | {_fmt(v.get('requests_per_s'))} | {_fmt(v.get('payments_per_s'))} | {_fmt(v.get('p50_ms'), '.1f')} |"
            f" {_fmt(v.get('p99_ms'), '.1f')} | {v.get('errors')} | {_fmt(v.get('sut_cpu_us_per_payment'))} |"
            f" `{v.get('command')}` |"
        )
    lines += [
        "",
        f"wrk ratios: single ÷ app {_fmt(ratios.get('single_vs_app'), '.2f')}, single ÷ low-level"
        f" {_fmt(ratios.get('single_vs_low_level'), '.2f')}, batch ÷ app {_fmt(ratios.get('batch_vs_app'), '.2f')},"
        f" batch ÷ low-level {_fmt(ratios.get('batch_vs_low_level'), '.2f')}; app ÷ low-level"
        f" {_fmt(ratios.get('app_vs_low_level'), '.2f')}; wrk's own ceiling (null server)"
        f" {_fmt(ratios.get('wrk_ceiling_requests_per_s'))} requests/s. Distance from the bench's own ratios:"
        f" single {_fmt(agree.get('single'), '.0%')}, batch {_fmt(agree.get('batch'), '.0%')}"
        f" (agree when <= {_fmt(agree.get('max'), '.0%')}; {agree.get('note', '')}).",
        "",
    ]
    for part in ("stack", "servers"):
        if isinstance(wrk.get(part), dict) and wrk[part].get("error"):
            lines += [f"wrk {part}: {wrk[part]['error']}", ""]
    return lines


def summary_markdown(report: dict[str, Any]) -> str:
    r = report
    t = TARGETS
    tps, p99, cpu_us = r.get("max_sustained_tps"), r.get("p99_ms"), r.get("sut_cpu_us_per_payment")
    rn, rp = r.get("ratio_vs_naive"), r.get("ratio_vs_pgbench")
    rh, ch, rb = r.get("ratio_vs_hello"), r.get("cpu_hello_units"), r.get("batch_ratio_vs_hello")
    hello_tps, hello_us = r.get("hello_max_sustained_tps"), r.get("hello_cpu_us_per_request")
    c50 = (r.get("projection") or {}).get("cores_for_50000_tps")
    lines = [
        "# quickpay bench",
        "",
        f"- date: {r['date']}",
        f"- command: `{r['command_line']}`",
        f"- machine: {r['machine'].get('cpu_model')} x {r['cpu_count']} CPUs, {r['machine'].get('memory_mb')} MB,"
        f" {r['machine'].get('platform')}",
        f"- stack: {r['shards']} shards, {r['gateway_workers']} gateway workers, {r['customers']} customers,"
        f" {r['partners']} partners, fraud rules: {r['rules']}",
        f"- mode: {'quick' if r['quick'] else 'full'}; steps of {r['step_s']:g}s; gates p99 <= {r['p99_ms_gate']:g} ms,"
        f" errors < {r['error_rate_gate']:.2%}; latency from the intended send time (open loop)",
        "- the generator shares the machine with the system under test",
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
        f"| hello: H = max sustained requests/s (trivial aiohttp+uvloop handler) | {_fmt(hello_tps)} | | |",
        f"| hello: h = its CPU per request (us) | {_fmt(hello_us)} | | |",
        f"| max sustained TPS, single payments (p99 <= {r['p99_ms_gate']:g} ms) | {_fmt(tps)} | | |",
        f"| ratio_vs_hello = TPS / H | {_fmt(rh, '.2f')} | >= {t['ratio_vs_hello']:g} |"
        f" {_verdict(None if rh is None else rh >= t['ratio_vs_hello'])} |",
        f"| p50 / p99 / p99.9 at that rate (ms) | {_fmt(r.get('p50_ms'), '.2f')} / {_fmt(p99, '.2f')} /"
        f" {_fmt(r.get('p999_ms'), '.2f')} | p99 <= {t['p99_ms']:g} | {_verdict(None if p99 is None else p99 <= t['p99_ms'])} |",
        f"| error rate at that rate | {_fmt(r.get('error_rate'), '.4%')} | < {r['error_rate_gate']:.2%} | "
        f"{_verdict(None if r.get('error_rate') is None else r['error_rate'] < r['error_rate_gate'])} |",
        f"| SUT CPU per payment (us) | {_fmt(cpu_us)} | | |",
        f"| cpu_hello_units = SUT CPU per payment / h | {_fmt(ch, '.2f')} | <= {t['cpu_hello_units']:g} |"
        f" {_verdict(None if ch is None else ch <= t['cpu_hello_units'])} |",
        f"| batch endpoint payments/s ({_fmt(r.get('batch_items'))} per request, batch p99 <="
        f" {t['batch_p99_ms']:g} ms) | {_fmt(r.get('batch_payments_per_s'))} | | |",
        f"| batch p99 (ms) / SUT CPU per batched payment (us) | {_fmt(r.get('batch_p99_ms'), '.1f')} /"
        f" {_fmt(r.get('batch_sut_cpu_us_per_payment'))} | | |",
        f"| batch_ratio_vs_hello = batch payments/s / H | {_fmt(rb, '.2f')} | >= {t['batch_ratio_vs_hello']:g} |"
        f" {_verdict(None if rb is None else rb >= t['batch_ratio_vs_hello'])} |",
        f"| generator share of CPU | {_fmt(r.get('generator_cpu_share'), '.1%')} | | |",
        f"| generator ceiling: our generator against the null server (requests/s) / H as its share |"
        f" {_fmt(r.get('generator_ceiling_per_s'))} / {_fmt(r.get('hello_vs_generator_ceiling'), '.2f')} | | |",
        "| generator-bound (within 2x of that ceiling) | "
        + (", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in (r.get("generator_bound") or {}).items()) or "n/a")
        + " | | |",
        *(
            f"| knee of {name}: best / first failing rate, why, resolution | {_fmt(k.get('best_rate_per_s'))} /"
            f" {_fmt(k.get('first_failed_rate_per_s'))}, {'; '.join(k.get('first_failed_gates') or []) or 'none failed'},"
            f" {_fmt(k.get('resolution'), '.0%')} | <= 10% | |"
            for name, k in (r.get("knees") or {}).items()
        ),
        f"| rate limiter per request, in process (us) / share of SUT CPU per payment |"
        f" {_fmt(r.get('rate_limiter_us_per_request'), '.2f')} / {_fmt(r.get('rate_limiter_share_of_payment'), '.2%')} | | |",
        f"| naive ledger max TPS | {_fmt(r.get('naive_max_sustained_tps'))} | | |",
        f"| ratio vs naive | {_fmt(rn, '.2f')}x | >= {t['ratio_vs_naive']:g}x | {_verdict(None if rn is None else rn >= t['ratio_vs_naive'])} |",
        f"| pgbench TPC-B TPS | {_fmt(r.get('pgbench_tps'))} | | |",
        f"| ratio vs pgbench | {_fmt(rp, '.2f')}x | >= {t['ratio_vs_pgbench']:g}x | {_verdict(None if rp is None else rp >= t['ratio_vs_pgbench'])} |",
        f"| cores projected for 50,000 TPS (single payments) | {_fmt(c50, '.1f')} | <= {t['cores_for_50000_tps']:g} |"
        f" {_verdict(None if c50 is None else c50 <= t['cores_for_50000_tps'])} |",
        f"| exactly-once | {_fmt(r.get('exactly_once_ok'))} | yes | {_verdict(r.get('exactly_once_ok'))} |",
        f"| conservation of money | {_fmt(r.get('conservation_ok'))} | yes | {_verdict(r.get('conservation_ok'))} |",
        "",
        f"Projection (assumes linear scaling): {_fmt(r['projection'].get('cores_for_14000_tps'), '.1f')} cores for"
        f" 14,000 TPS, {_fmt(r['projection'].get('cores_for_50000_tps'), '.1f')} cores for 50,000 TPS.",
        "",
        "Where the SUT CPU goes at the max sustained step (us per payment): "
        + ", ".join(
            f"{group} {_fmt(us, '.0f')}" for group, us in (r.get("sut_cpu_us_per_payment_by_process") or {}).items()
        ),
        "",
        "Capacity per core at that step (payments/s of one core of each component; cores for 14k / 50k): "
        + "; ".join(
            f"{group} {c['payments_per_s']:,} ({c['cores_for_14000_tps']:.1f} / {c['cores_for_50000_tps']:.1f})"
            for group, c in (r.get("capacity_per_core") or {}).items()
        ),
        "",
        *wrk_lines(r.get("wrk")),
        *history_lines(r.get("history")),
        "## Steps (main phase)",
        "",
        "| offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | SUT cores | machine cores busy |"
        " SUT us/payment | gen CPU share | gates |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r.get("steps", []):
        lines.append(
            f"| {s['offered_per_s']:.0f} | {s['achieved_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |"
            f" {s['p999_ms']:.2f} | {s['errors']}/{s['sent']} | {_fmt(s.get('sut_cores'), '.2f')} |"
            f" {_fmt(s.get('machine_cores_busy'), '.2f')} |"
            f" {_fmt(s.get('sut_cpu_us_per_payment'))} | {_fmt(s.get('generator_cpu_share'), '.1%')} |"
            f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |"
        )
    batch = r.get("batch")
    if batch and batch.get("steps"):
        lines += [
            "",
            f"## Batch endpoint ({batch['items_per_batch']} payments per request, same stack)",
            "",
            "| payments/request | batches/s offered | payments/s achieved | p50 ms | p99 ms | items committed |"
            " SUT us/payment | gates |",
            "|---|---|---|---|---|---|---|---|",
        ]
        first = batch.get("first_attempt")
        steps = ([*first["steps"]] if first else []) + list(batch["steps"])
        if first:
            lines[-3] = (
                f"First with {first['items_per_batch']} payments per request (missed at the lowest rate),"
                f" then with {batch['items_per_batch']}:"
            )
            lines.insert(len(lines) - 2, "")
        for s in steps:
            lines.append(
                f"| {s['items_per_batch']} | {s['offered_per_s']:.1f} | {s['payments_per_s']:.0f} |"
                f" {s['p50_ms']:.2f} |"
                f" {s['p99_ms']:.2f} | {s['items_committed']}/{s['items_sent']} |"
                f" {_fmt(s.get('sut_cpu_us_per_payment'))} |"
                f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |"
            )
    hello = r.get("hello")
    if hello and hello.get("steps"):
        lines += [
            "",
            f"## hello calibration (`{hello.get('command')}`: {hello.get('response_bytes')}-byte answers"
            f" to the main phase's requests)",
            "",
            "| offered/s | achieved/s | p50 ms | p99 ms | errors | server us/request | gates |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in hello["steps"]:
            lines.append(
                f"| {s['offered_per_s']:.0f} | {s['achieved_per_s']:.0f} | {s['p50_ms']:.2f} |"
                f" {s['p99_ms']:.2f} | {s['errors']}/{s['sent']} | {_fmt(s.get('sut_cpu_us_per_payment'))} |"
                f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |"
            )
        if hello.get("search_capped"):
            lines.append("\nEvery hello step passed: H is a lower bound.")
    naive = r.get("naive")
    if naive:
        lines += [
            "",
            f"## Naive ledger baseline ({naive['customers']} customers, fresh state, `--ledger-mode naive`)",
            "",
            "| offered/s | achieved/s | p50 ms | p99 ms | errors | gates |",
            "|---|---|---|---|---|---|",
        ]
        for s in naive.get("steps", []):
            lines.append(
                f"| {s['offered_per_s']:.0f} | {s['achieved_per_s']:.0f} | {s['p50_ms']:.2f} |"
                f" {s['p99_ms']:.2f} | {s['errors']}/{s['sent']} |"
                f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |"
            )
        if naive.get("error"):
            lines.append(f"\nNaive phase failed: {naive['error']}")
    if r.get("pgbench"):
        lines += ["", f"## pgbench: {r['pgbench'].get('command', '')}: tps = {_fmt(r['pgbench'].get('tps'))}"]
    if r.get("sweep"):
        lines += [
            "",
            "## Scaling sweep",
            "",
            "| topology | shards | gateway workers | max TPS | p99 ms | SUT cores | SUT us/payment | TPS per SUT core |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in r["sweep"]:
            lines.append(
                f"| {s.get('topology', 'gateway')} | {s['shards']} | {s.get('gateway_workers')} |"
                f" {_fmt(s.get('max_sustained_tps'))} | {_fmt(s.get('p99_ms'), '.1f')} |"
                f" {_fmt(s.get('sut_cores'), '.2f')} | {_fmt(s.get('sut_cpu_us_per_payment'))} |"
                f" {_fmt(s.get('efficiency_tps_per_core'))} |"
                + (f" error: {s['error'][:100]}" if s.get("error") else "")
            )
    ha = r.get("ha")
    if ha:
        single, batch = ha["single_payment"], ha["batch"]
        first = batch.get("first_step") or {}
        lines += [
            "",
            f"## Synchronous replication (`up --ha`, {ha['members_per_shard']} members per shard, strict)"
            " vs one server per shard, same session",
            "",
            "| path | HA | one server | ratio |",
            "|---|---|---|---|",
            f"| single payments: max sustained TPS | {_fmt(single['ha_tps'])} | {_fmt(single['single_server_tps'])}"
            f" | {_fmt(single['tps_ratio'], '.2f')} |",
            f"| single payments: SUT CPU µs/payment at the max step | {_fmt(single['ha_cpu_us_per_payment'])} |"
            f" {_fmt(single['single_server_cpu_us_per_payment'])} | {_fmt(single['cpu_ratio'], '.2f')} |",
            f"| batch: max sustained payments/s | {_fmt(batch['ha_payments_per_s'])} |"
            f" {_fmt(batch['single_server_payments_per_s'])} | {_fmt(batch['ratio'], '.2f')} |",
            f"| batch at {_fmt(first.get('payments_per_s'))} payments/s ({first.get('items_per_batch')} per request):"
            f" p50 ms | {_fmt(first.get('ha_p50_ms'), '.1f')} | {_fmt(first.get('single_server_p50_ms'), '.1f')} |"
            f" {_fmt(first.get('p50_ratio'), '.2f')} |",
            f"| batch at that rate: SUT CPU µs/payment | {_fmt(first.get('ha_cpu_us_per_payment'))} |"
            f" {_fmt(first.get('single_server_cpu_us_per_payment'))} | {_fmt(first.get('cpu_ratio'), '.2f')} |",
            f"| pipeline depth (shard worker) | {batch.get('ha_pipeline_depth', '')} |"
            f" {batch.get('single_server_pipeline_depth', '')} | |",
            "",
            "Where the HA stack's CPU goes, µs per payment by role (the leader's PostgreSQL and"
            " Patroni apart from the standbys', which are added up):",
            "",
            f"- single payments at the max step: {roles_text(single.get('ha_cpu_us_by_role'))}",
            f"- batch at the max step: {roles_text(batch.get('ha_cpu_us_by_role'))}",
            f"- batch at the first step: {roles_text(first.get('ha_cpu_us_by_role'))}",
        ]
    notes = r.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    problems = r.get("problems", [])
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


# The roles of cpu_by_role (loadtest/bench/stack.py), in the order a reader wants them.
ROLE_NAMES = {
    "postgres_leader": "leader PostgreSQL",
    "postgres_standby": "standby PostgreSQLs",
    "postgres": "PostgreSQL",
    "patroni_leader": "leader Patroni",
    "patroni_standby": "standby Patronis",
    "etcd": "etcd",
    "shard": "shard",
    "gateway": "gateway",
}


def roles_text(by_role: dict[str, float | None] | None) -> str:
    """'leader PostgreSQL 120, standby PostgreSQLs 60, ...' (µs per payment), known roles first."""
    if not by_role:
        return "n/a"
    keys = [k for k in ROLE_NAMES if k in by_role] + sorted(k for k in by_role if k not in ROLE_NAMES)
    return ", ".join(f"{ROLE_NAMES.get(k, k)} {_fmt(by_role[k])}" for k in keys)
