"""`quickpay soak` end to end: start or attach to a stack, seed, prepare partners, drive, report."""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.soak.client import Partner, code_of
from loadtest.soak.options import CONNECTIONS_MAX, HOSTILE_CLASSES, validate
from loadtest.soak.report import (
    audit_report,
    latency_ms,
    rss_report,
    stack_processes,
    start_receiver,
    summarise,
    table_sizes,
)
from loadtest.soak.timetable import Soak


# ---- setup -------------------------------------------------------------------------------------
async def prepare_partners(soak: Soak, hostile_rate_limited: int) -> list[str]:
    """Webhook endpoints of every --webhook-every-th well-behaved partner; the hostile
    partners' lowered rate limits and their pending-agreement account. Returns problems."""
    problems = []
    good = [p for p in soak.partners if not p.hostile]
    for n, partner in enumerate(good):
        if n % soak.args.webhook_every or soak.receiver_url is None:
            continue
        reply = await soak.request(
            "POST",
            "/v1/webhook-endpoints",
            partner,
            json_body={"url": f"{soak.receiver_url}/hook/{partner.partner_id}", "events": ["*"]},
        )
        if reply.status == 201:
            partner.webhook = reply.body["id"]
        else:
            problems.append(
                f"{partner.partner_id} could not register its webhook endpoint: {code_of(reply)} "
                f"{str(reply.body)[:200]}"
            )
    for n, partner in enumerate(p for p in soak.partners if p.hostile):
        partner.rate_limited = n < hostile_rate_limited
        if partner.rate_limited:
            reply = await soak.request(
                "PUT",
                f"/admin/v1/partners/{partner.partner_id}/rate-limit",
                None,
                admin=True,
                json_body={"requests_per_s": 4, "burst": 4},
            )
            if reply.status != 200:
                problems.append(f"could not lower {partner.partner_id}'s rate limit: {code_of(reply)}")
        partner.pending_account = partner.agreements[-1][1]
    return problems


def run_soak(args: argparse.Namespace) -> int:
    """`quickpay soak`: returns the exit code; the report is OUT/soak-report.json."""
    report = soak_report(args)
    return 0 if report["ok"] else 1


def soak_report(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.bench.common import _free_port, log, machine_info
    from loadtest.bench.population import bench_rules, seed_at
    from loadtest.bench.stack import StackProcess
    from loadtest.generator import new_histogram
    from quickpay.config import StateDir

    validate(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stack: StackProcess | None = None
    if args.url:
        state_dir = Path(args.state_dir).resolve()
        base_url = args.url.rstrip("/")
    else:
        state_dir = Path(args.state_dir).resolve() if args.state_dir else out / "state"
        if not args.state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
        port = args.port or _free_port()
        stack = StackProcess(
            state_dir,
            port,
            args.shards,
            args.workers,
            out / "up.log",
            rules=bench_rules(out),
            notifier=True,
            monitor=True,
            extra_argv=("--webhooks-allow-private",),
        )
        base_url = stack.base_url
    report: dict[str, Any] = {
        "command_line": " ".join(["quickpay", *sys.argv[1:]])
        if sys.argv and "quickpay" in sys.argv[0]
        else " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "duration_s": args.duration,
        "partners": args.partners,
        "hostile_partners": args.hostile,
        "offered_per_s": args.rate,
        "url": base_url,
        "stack": " ".join(stack.argv) if stack else f"a running stack at {base_url}",
        "problems": [],
    }
    try:
        if stack is not None:
            log(f"soak: starting the stack ({args.shards} shards, {args.workers} gateway workers, notifier, monitor)")
            stack.start()
            up_pid: int | None = stack.pid
        else:
            try:
                up_pid = int(json.loads((state_dir / "supervisor.json").read_text())["supervisor_pid"])
            except (OSError, ValueError, KeyError):
                up_pid = None
                report["problems"].append(f"no {state_dir / 'supervisor.json'}: the stack's RSS is not reported")
        customers = args.partners * args.customers_per_partner
        population = seed_at(base_url, state_dir, customers, args.partners, out)
        state = StateDir(state_dir)
        partners = []
        now = time.monotonic()
        by_partner: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
        for partner_index, agreement_id, debtor in population.agreements:
            by_partner[partner_index].append((agreement_id, debtor))
        per_partner_rate = args.rate / args.partners
        for index, p in enumerate(population.partners):
            partners.append(
                Partner(
                    index=index,
                    partner_id=p["partner_id"],
                    settlement_account=p["settlement_account"],
                    client_id=p["client_id"],
                    client_secret=p["client_secret"],
                    token=population.tokens[index],
                    token_at=now,
                    hostile=index >= args.partners - args.hostile,
                    agreements=by_partner[index],
                    rate=per_partner_rate,
                    histogram=new_histogram(),
                )
            )
        dsns = stack.dsns() if stack is not None else _state_dsns(state_dir)
        rss_start = stack_processes(up_pid, state_dir)
        log(
            f"soak: {len(partners)} partners seeded, {len(rss_start)} stack processes; "
            f"driving {args.rate:g} operations/s for {args.duration:g} s"
        )
        soak_result = asyncio.run(_drive(args, base_url, state.admin_token, partners, report))
        rss_end = stack_processes(up_pid, state_dir)
        report["rss"] = rss_report(rss_start, rss_end)
        log("soak: traffic done; table sizes and the audit")
        report["table_sizes"] = asyncio.run(table_sizes(dsns))
        report["audit"] = audit_report(dsns)
        soak = soak_result
        _fill(report, soak, partners, args)
    finally:
        if stack is not None:
            stack.stop()
    (out / "soak-report.json").write_text(json.dumps(report, indent=2, default=str))
    text = summarise(report)
    (out / "soak-summary.txt").write_text(text + "\n")
    print(text, flush=True)
    print(f"wrote {out / 'soak-report.json'} and {out / 'soak-summary.txt'}", flush=True)
    return report


def _state_dsns(state_dir: Path) -> list[str]:
    from quickpay.embedded_pg import EmbeddedPostgres, shard_database
    from quickpay.ha import HaCluster, is_ha_state

    if is_ha_state(state_dir):
        return HaCluster.attach(state_dir).dsns()
    shards = int(json.loads((state_dir / "topology.json").read_text())["shards"])
    pg = EmbeddedPostgres(state_dir)
    return [pg.dsn(shard_database(i)) for i in range(shards)]


async def _drive(
    args: argparse.Namespace, base_url: str, admin_token: str, partners: list[Partner], report: dict[str, Any]
) -> Soak:
    import aiohttp

    deliveries: collections.Counter[str] = collections.Counter()
    runner, receiver_url = await start_receiver(deliveries)
    soak = Soak(args, base_url, admin_token, partners, receiver_url)
    soak.deliveries = deliveries
    try:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX)
        # The 10,000-character paths and 1 MiB bodies are sent as they are.
        async with aiohttp.ClientSession(connector=connector, max_line_size=65536, max_field_size=65536) as session:
            soak.session = session
            report["problems"].extend(await prepare_partners(soak, hostile_rate_limited=min(2, args.hostile)))
            report["traffic"] = await soak.drive(args.duration)
            # Deliveries trail their events: give the notifier a moment to catch up (bounded).
            await asyncio.sleep(min(5.0, args.duration / 10))
    finally:
        await runner.cleanup()
    return soak


def _fill(report: dict[str, Any], soak: Soak, partners: list[Partner], args: argparse.Namespace) -> None:
    from loadtest.generator import new_histogram

    good = [p for p in partners if not p.hostile]
    hostile = [p for p in partners if p.hostile]
    merged = new_histogram()
    for p in good:
        merged.add(p.histogram)
    per_partner = []
    for p in partners:
        per_partner.append(
            {
                "partner_id": p.partner_id,
                "hostile": p.hostile,
                "sent": p.sent,
                "answered": p.answered,
                "skipped": p.skipped,
                "p50_ms": latency_ms(p.histogram, 50),
                "p99_ms": latency_ms(p.histogram, 99),
                "unexpected": p.unexpected,
                "unexpected_codes": dict(p.codes),
                "examples": p.examples,
                "operations": dict(p.ops),
                "webhook_endpoint": p.webhook,
                "webhook_deliveries": soak.deliveries.get(p.partner_id, 0),
            }
        )
    p99s = sorted((e["p99_ms"], e["partner_id"]) for e in per_partner if not e["hostile"] and e["p99_ms"] is not None)
    traffic = report.setdefault("traffic", {})
    traffic.update(
        {
            "answered": sum(p.answered for p in partners),
            "skipped": sum(p.skipped for p in partners),
            "payments_ok": soak.payments_ok,
            "batch_items_ok": soak.batch_items_ok,
            "refunds_ok": soak.refunds_ok,
            "webhook_deliveries": sum(soak.deliveries.values()),
            "webhook_endpoints": sum(1 for p in partners if p.webhook),
        }
    )
    report["latency_ms"] = {
        "good_p50": latency_ms(merged, 50),
        "good_p99": latency_ms(merged, 99),
        "good_max": latency_ms(merged, 100),
        "partner_p99_median": p99s[len(p99s) // 2][0] if p99s else None,
        "partner_p99_max": p99s[-1][0] if p99s else None,
        "partner_p99_max_partner": p99s[-1][1] if p99s else None,
        "note": "open loop: from each operation's scheduled send time (a chain's later requests from the "
        "previous answer); the machine is shared with other work, so these are noisy",
    }
    report["latency_by_operation"] = {
        op: {"count": h.get_total_count(), "p50_ms": latency_ms(h, 50), "p99_ms": latency_ms(h, 99)}
        for op, h in soak.op_histograms.items()
    }
    report["per_partner"] = per_partner
    report["errors_good"] = dict(soak.errors_good.most_common())
    report["errors_hostile"] = dict(soak.errors_hostile.most_common())
    report["hostile_by_class"] = {k: dict(v.most_common()) for k, v in soak.hostile_by_class.items()}
    report["hostile_violations"] = dict(soak.hostile_violations)
    report["hostile_answers_by_input"] = dict(sorted(soak.hostile_inputs.items()))
    report["hostile_violation_examples"] = soak.violation_examples
    report["status_5xx"] = dict(soak.status_5xx)
    unanswered = [p.partner_id for p in partners if p.answered == 0]
    unexpected = {p.partner_id: dict(p.codes) for p in good if p.unexpected}
    classes_seen = set(soak.hostile_by_class)
    checks = {
        "no_5xx": not soak.status_5xx,
        "audit_passed": bool(report["audit"]["ok"]),
        "hostile_answered_in_error_shape": not soak.hostile_violations,
        "good_partners_no_unexpected_error": not unexpected,
        "every_partner_answered": not unanswered,
        "every_hostile_class_sent": not hostile or classes_seen >= set(HOSTILE_CLASSES),
        "drained": bool(traffic.get("drained", False)),
        "setup": not report["problems"],
    }
    if unanswered:
        report["problems"].append(f"partners without an answer: {unanswered[:10]}")
    if unexpected:
        report["problems"].append(
            f"{len(unexpected)} well-behaved partners got unexpected answers: "
            + json.dumps(dict(list(unexpected.items())[:5]))
        )
    if soak.hostile_violations:
        report["problems"].append(
            "hostile requests answered outside the error shape: " + "; ".join(soak.violation_examples[:5])
        )
    report["checks"] = checks
    report["ok"] = all(checks.values())
