"""The soak's receiver and report: the loopback webhook receiver, processes' RSS, table sizes,
the conservation audit and the summary."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any


# ---- the webhook receiver (loopback) -------------------------------------------------------
async def start_receiver(counter: collections.Counter[str]) -> tuple[Any, str]:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        counter[request.match_info["partner"]] += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{partner}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


# ---- the stack's processes, tables and audit -----------------------------------------------
def stack_processes(up_pid: int | None, state_dir: Path) -> dict[int, dict[str, Any]]:
    """pid -> {group, name, rss_mb} of the `up` process tree and the PostgreSQL server's."""
    import psutil

    from loadtest.bench.stack import SutCpu, process_group

    found: dict[int, dict[str, Any]] = {}
    if up_pid is None:
        return found
    for pid, proc in SutCpu(up_pid, state_dir).processes().items():
        try:
            cmd = proc.cmdline()
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        group = process_group(cmd)
        if "quickpay.cli" in cmd:
            at = cmd.index("quickpay.cli")
            name = " ".join(a for a in cmd[at + 1 : at + 2])
            if "--shard" in cmd:
                name += f" {cmd[cmd.index('--shard') + 1]}"
        else:
            name = proc.name() or cmd[0] if cmd else "?"
            if group == "postgres" and len(cmd) == 1:
                name = cmd[0][:60]  # "postgres: checkpointer", "postgres: user db [local] idle"
        found[pid] = {"pid": pid, "group": group, "name": name, "rss_mb": round(rss / 2**20, 1)}
    return found


def rss_report(start: dict[int, dict[str, Any]], end: dict[int, dict[str, Any]]) -> dict[str, Any]:
    processes = []
    for pid in sorted(set(start) | set(end)):
        a, b = start.get(pid), end.get(pid)
        ref = a or b
        assert ref is not None
        processes.append(
            {
                "pid": pid,
                "group": ref["group"],
                "name": ref["name"],
                "rss_start_mb": a["rss_mb"] if a else None,
                "rss_end_mb": b["rss_mb"] if b else None,
                "growth_mb": round(b["rss_mb"] - a["rss_mb"], 1) if a and b else None,
            }
        )
    groups: dict[str, dict[str, float]] = {}
    for entry in processes:
        g = groups.setdefault(entry["group"], {"start_mb": 0.0, "end_mb": 0.0})
        g["start_mb"] = round(g["start_mb"] + (entry["rss_start_mb"] or 0.0), 1)
        g["end_mb"] = round(g["end_mb"] + (entry["rss_end_mb"] or 0.0), 1)
    for g in groups.values():
        g["growth_mb"] = round(g["end_mb"] - g["start_mb"], 1)
    return {
        "processes": processes,
        "by_group": groups,
        "total_start_mb": round(sum(g["start_mb"] for g in groups.values()), 1),
        "total_end_mb": round(sum(g["end_mb"] for g in groups.values()), 1),
        "note": "PostgreSQL backends come and go with connections: a pid seen only at one end has "
        "no growth; the quickpay processes live through the run",
    }


async def table_sizes(dsns: list[str]) -> list[dict[str, Any]]:
    import asyncpg

    shards = []
    for shard, dsn in enumerate(dsns):
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT c.relname AS name, c.reltuples::bigint AS estimate, pg_total_relation_size(c.oid) AS bytes"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY c.relname"
            )
            tables = {}
            for row in rows:
                count = await conn.fetchval(f'SELECT count(*) FROM "{row["name"]}"')
                tables[row["name"]] = {"rows": int(count), "mb": round(int(row["bytes"]) / 2**20, 2)}
            shards.append({"shard": shard, "tables": tables})
        finally:
            await conn.close()
    return shards


def audit_report(dsns: list[str]) -> dict[str, Any]:
    """What `quickpay check` runs: conservation and every stored row readable."""
    from ledger.audit import audit
    from ledger.writable import resolve_writable

    async def run() -> Any:
        return await audit(await resolve_writable(dsns))

    report = asyncio.run(run())
    return {
        "ok": bool(report.ok),
        "problems": list(report.problems)[:50],
        "total_minor": report.total_minor,
        "in_flight_minor": report.in_flight_minor,
        "unreadable_count": report.unreadable_count,
    }


def latency_ms(histogram: Any, percentile: float) -> float | None:
    if histogram.get_total_count() == 0:
        return None
    return round(histogram.get_value_at_percentile(percentile) / 1000.0, 2)


def summarise(report: dict[str, Any]) -> str:
    lines = [
        f"quickpay soak: {report['duration_s']:g} s, {report['partners']} partners "
        f"({report['hostile_partners']} hostile), {report['offered_per_s']:g} operations/s offered; "
        f"{report['date']} on {report['machine']['cpu_count']} CPUs ({report['machine']['cpu_model']})"
    ]
    t = report["traffic"]
    lines.append(
        f"  sent {t['scheduled']} operations, {t['answered']} answers; payments 201 {t['payments_ok']}, "
        f"batch items 201 {t['batch_items_ok']}, refunds 201 {t['refunds_ok']}, "
        f"webhook deliveries {t['webhook_deliveries']} to {t['webhook_endpoints']} endpoints; "
        f"skipped (generator bound) {t['skipped']}"
    )
    lat = report["latency_ms"]
    lines.append(
        f"  latency (open loop, from the scheduled time): well-behaved p50 {lat['good_p50']} ms, "
        f"p99 {lat['good_p99']} ms; per partner p99 median {lat['partner_p99_median']} ms, "
        f"max {lat['partner_p99_max']} ms ({lat['partner_p99_max_partner']})"
    )
    for op, v in sorted(report["latency_by_operation"].items()):
        lines.append(f"    {op:22s} n={v['count']:7d} p50 {v['p50_ms']} ms p99 {v['p99_ms']} ms")
    lines.append("  errors of well-behaved partners by code: " + (json.dumps(report["errors_good"]) or "{}"))
    lines.append("  answers to hostile partners by code: " + json.dumps(report["errors_hostile"]))
    rss = report["rss"]
    lines.append(f"  RSS of the stack: {rss['total_start_mb']} MB at the start, {rss['total_end_mb']} MB at the end")
    for group, g in sorted(rss["by_group"].items()):
        lines.append(f"    {group:10s} {g['start_mb']:8.1f} -> {g['end_mb']:8.1f} MB ({g['growth_mb']:+.1f})")
    for p in rss["processes"]:
        if p["group"] != "postgres" or (p["growth_mb"] is not None and abs(p["growth_mb"]) >= 5):
            lines.append(f"      {p['pid']:>7} {p['name'][:40]:40s} {p['rss_start_mb']} -> {p['rss_end_mb']} MB")
    sizes = collections.Counter[str]()
    for shard in report["table_sizes"]:
        for name, v in shard["tables"].items():
            sizes[name] += v["rows"]
    lines.append("  table rows (all shards): " + ", ".join(f"{k} {v}" for k, v in sorted(sizes.items()) if v))
    audit = report["audit"]
    lines.append(f"  conservation audit: {'passed' if audit['ok'] else 'FAILED: ' + '; '.join(audit['problems'][:5])}")
    lines.append(
        f"  5xx: {sum(report['status_5xx'].values())} {json.dumps(report['status_5xx']) if report['status_5xx'] else ''}"
    )
    checks = report["checks"]
    lines.append("  checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    for problem in report["problems"]:
        lines.append(f"  problem: {problem}")
    lines.append(
        "  per partner (slowest p99 first): partner, kind, operations sent, answers, p50 ms, p99 ms, unexpected answers"
    )
    for e in sorted(report["per_partner"], key=lambda e: -(e["p99_ms"] or 0.0)):
        lines.append(
            f"    {e['partner_id']} {'hostile' if e['hostile'] else 'good   '} {e['sent']:6d} {e['answered']:6d} "
            f"{e['p50_ms']} {e['p99_ms']} {e['unexpected']}"
        )
    lines.append("PASSED" if report["ok"] else "FAILED")
    return "\n".join(lines)
