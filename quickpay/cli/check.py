"""`quickpay check` (the audit of conservation across shards) and `quickpay recon` (a
partner's reconciliation file): both read every shard's database."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from quickpay.cli.common import _dsns_from


def _run_on_shards(args: argparse.Namespace, work: Any) -> Any:
    """Run `work(dsns)` (a coroutine) against the shards' databases: the given DSNs, or the
    state directory's embedded PostgreSQL, started for this and stopped after if it was not
    running."""
    from quickpay.config import StateDir

    dsns = _dsns_from(args)
    pg = None
    started_here = False
    if not dsns:
        from quickpay.ha import HaCluster, is_ha_state

        state_path = StateDir(args.state_dir).path
        if is_ha_state(state_path):
            dsns = HaCluster.attach(state_path).dsns()  # its clusters run under `up --ha`
        else:
            from quickpay.embedded_pg import attach_state

            pg, dsns, started_here = attach_state(state_path)
    try:
        # A multi-host DSN (`up --ha`): read the member that commits now, not a cut-off
        # primary that still says read-write (its journal may be stale).
        from ledger.writable import resolve_writable

        dsns = asyncio.run(resolve_writable(dsns))
        return asyncio.run(work(dsns))
    finally:
        if pg is not None and started_here:
            pg.stop()


def cmd_check(args: argparse.Namespace) -> int:
    from ledger.audit import audit

    report = _run_on_shards(args, audit)
    print(json.dumps(report.to_dict(), indent=2) if args.json else _format_report(report))
    return 0 if report.ok else 1


def _format_report(report: Any) -> str:
    lines = [
        f"shard {s['shard']}: {s['transfers']} journal rows ({s['rejected']} rejected, "
        f"{s['in_process']} in process), clearing {s['clearing_minor']}, sum {s['balance_sum_minor']}"
        for s in report.shards
    ]
    lines.append(f"credits in flight: {report.in_flight_count} ({report.in_flight_minor} minor units)")
    if report.held_count:
        lines.append(
            f"HELD credit legs (in flight until an operator resolves them): {report.held_count} "
            f"({report.held_minor} minor units)"
        )
        lines.extend(
            f"  {h['transfer_id']} on shard {h['shard']} for {h['creditor_account']}: "
            f"{h['amount_minor']} ({', '.join(h['reasons'])})"
            for h in report.held
        )
    if report.ok:
        lines.append(
            "OK: every shard balances, the journal replays to every balance, "
            "money is conserved across shards, and every stored row can be read"
        )
    else:
        lines.append("FAILED:")
        lines.extend("  " + p for p in report.problems)
    return "\n".join(lines)


async def _recon_text(dsns: list[str], partner_id: str, day: Any, now_ms: int) -> tuple[str, bool]:
    import asyncpg

    from ledger import pg, recon

    closed = recon.is_closed(day, now_ms)
    report = recon.Reconciliation(partner_id, day, provisional=not closed, generated_at_ms=now_ms)
    from_ms, to_ms = recon.day_bounds(day)
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            after: tuple[int, int] | None = None
            while True:
                page = await pg.partner_day_transfers(conn, partner_id, from_ms, to_ms, after, 5_000)
                report.add(wire for _, wire in page)
                if len(page) < 5_000:
                    break
                after = (page[-1][0][0], page[-1][0][1])
        finally:
            await conn.close()
    return report.text(), closed


def cmd_recon(args: argparse.Namespace) -> int:
    import datetime
    import hashlib

    from ledger import recon

    try:
        day = datetime.date.fromisoformat(args.date)
    except ValueError:
        raise SystemExit("recon: --date is YYYY-MM-DD") from None
    now_ms = args.now_ms if args.now_ms is not None else time.time_ns() // 1_000_000
    if not recon.is_closed(day, now_ms) and not args.provisional:
        raise SystemExit(
            f"recon: {day} is not closed yet (final {recon.CLOSE_GRACE_MS // 60_000} minutes after "
            "midnight UTC); --provisional gives the day so far"
        )
    text, closed = _run_on_shards(args, lambda dsns: _recon_text(dsns, args.partner, day, now_ms))
    data = text.encode()
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.write(text)
    print(
        f"recon: {'final' if closed else 'PROVISIONAL'} file for {args.partner} on {day}, "
        f"sha256 {hashlib.sha256(data).hexdigest()}",
        file=sys.stderr,
    )
    return 0
