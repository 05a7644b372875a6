"""`quickpay fraud ...`: backtest a candidate rule set; show, propose, activate and roll back rules.

Backtest reads recorded payments straight from the shard databases (it never
writes); the others go through the admin API so every shard worker switches
between two payments. A rule-set version is the sha256 of its text (the same id on
every shard); `activate` takes it or 8+ of its first hex digits. Changes are
all-or-nothing across shards and idempotent: after a failure, run the same command
again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from quickpay.cli.admin_api import admin_token, call_admin

__all__ = ["add_fraud_arguments", "cmd_fraud", "load_recorded_payments", "run_fraud_command"]

_VERSION_RE = re.compile(r"[0-9a-f]{8,64}")  # fullmatch: "$" would let a trailing newline through


def add_fraud_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fraud_command", required=True)
    bt = sub.add_parser("backtest", help="replay recorded payments through a candidate rule set")
    bt.add_argument("--rules", required=True, help="candidate rule file")
    bt.add_argument("--state-dir", default="./.quickpay")
    bt.add_argument("--dsn", action="append", help="shard DSNs in order (default: the state dir's)")
    bt.add_argument("--limit", type=int, default=1_000_000, help="most recent payments to replay")
    bt.add_argument("--json", action="store_true")
    for name, help_text in (
        ("show", "print rule versions and the audit trail"),
        ("propose", "validate and stage a rule file on every shard, then activate it"),
        ("activate", "activate a stored version (its sha256 id, or 8+ leading hex digits)"),
        ("rollback", "return every shard to the previously active version"),
        ("alerts", "list monitor alerts"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--url", default="http://127.0.0.1:8080")
        cmd.add_argument("--state-dir", default="./.quickpay")
        cmd.add_argument("--author", default="cli")
        if name == "propose":
            cmd.add_argument("file")
            cmd.add_argument("--no-activate", action="store_true")
        if name == "activate":
            cmd.add_argument("version", help="version id as `quickpay fraud show` prints it (or a prefix)")


async def load_recorded_payments(dsns: list[str], limit: int) -> tuple[list[Any], Any]:
    """Recorded payments in time order, and the active rule set of shard 0."""
    import asyncpg

    import fraud

    payments: list[Any] = []
    active = None
    for index, dsn in enumerate(dsns):
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT id, partner_id, agreement_id, debit_account, creditor_account, amount_minor,"
                " currency, device_id, ip, created_at_ms FROM transfers WHERE kind = 'payment'"
                " ORDER BY seq DESC LIMIT $1",
                limit,
            )
            if index == 0:
                stored = await conn.fetchval("SELECT value FROM meta WHERE key = 'fraud_registry'")
                if stored:
                    active = fraud.RuleRegistry.from_dict(json.loads(stored)).active_ruleset
        finally:
            await conn.close()
        payments.extend(
            fraud.PaymentFacts(
                transfer_id=r["id"],
                partner_id=r["partner_id"],
                agreement_id=r["agreement_id"],
                debtor_account=r["debit_account"],
                creditor_account=r["creditor_account"],
                amount_minor=r["amount_minor"],
                currency=r["currency"],
                device_id=r["device_id"],
                ip=r["ip"],
                at_ms=r["created_at_ms"],
            )
            for r in rows
        )
    payments.sort(key=lambda f: f.at_ms)
    if active is None:
        active = fraud.load_rules_file(fraud.default_rules_path())
    return payments[-limit:], active


def _state_dsns(args: argparse.Namespace) -> tuple[Any, list[str], bool]:
    if args.dsn:
        return None, list(args.dsn), False
    from quickpay.embedded_pg import attach_state

    return attach_state(args.state_dir)


def _backtest(args: argparse.Namespace) -> int:
    import fraud

    try:
        candidate = fraud.load_rules_file(args.rules)
    except fraud.RuleError as exc:
        print(f"quickpay fraud backtest: {exc}", file=sys.stderr)
        return 2
    pg, dsns, started_here = _state_dsns(args)
    try:
        payments, active = asyncio.run(load_recorded_payments(dsns, args.limit))
    finally:
        if pg is not None and started_here:
            pg.stop()
    report = fraud.backtest(payments, candidate, active)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(_format_backtest(report, len(payments)))
    return 0


def _format_backtest(report: dict[str, Any], count: int) -> str:
    lines = [f"replayed {count} recorded payments"]
    for side in ("active", "candidate"):
        data = report.get(side, {})
        lines.append(
            f"{side}: block rate {data.get('block_rate', 0):.4f}, review rate {data.get('review_rate', 0):.4f}"
        )
        for rule_id, hits in sorted(data.get("rule_hits", {}).items()):
            lines.append(f"  {rule_id}: {hits} hits")
    diff = report.get("differing", {})
    first = ", ".join(diff.get("transfer_ids", [])[:5])
    lines.append(f"decisions that differ: {diff.get('count', 0)} (first: {first})")
    return "\n".join(lines)


def _admin(args: argparse.Namespace) -> int:
    from quickpay.httpclient import Api

    # Propose and activate are idempotent (content-hash versions), so an answer of
    # "unavailable, nothing changed" is retried; a rollback is "one step back" and is not.
    api = Api(args.url, timeout_s=60.0, unavailable_retries=2 if args.fraud_command in ("propose", "activate") else 0)
    token = admin_token(args.state_dir)
    if args.fraud_command == "activate" and not _VERSION_RE.fullmatch(args.version.lower()):
        raise SystemExit(
            f"quickpay fraud activate: {args.version!r} is not a rule-set version; give the sha256 id "
            "that `quickpay fraud show` prints, or 8 or more of its first hex digits"
        )

    def request() -> Any:
        if args.fraud_command == "show":
            return api.request("GET", "/admin/v1/fraud/rules", token=token)
        if args.fraud_command == "propose":
            text = Path(args.file).read_text()
            return api.request(
                "POST",
                "/admin/v1/fraud/rules",
                {
                    "text": text,
                    "author": args.author,
                    "activate": not args.no_activate,
                    "filename": Path(args.file).name,
                },
                token=token,
            )
        if args.fraud_command == "activate":
            return api.request(
                "POST",
                f"/admin/v1/fraud/rules/{args.version.lower()}/activate?author={quote(args.author)}",
                token=token,
            )
        if args.fraud_command == "rollback":
            return api.request("POST", f"/admin/v1/fraud/rules/rollback?author={quote(args.author)}", token=token)
        return api.request("GET", "/admin/v1/fraud/alerts", token=token)

    status, result = call_admin(args.url, request)
    if status:
        return status
    if args.fraud_command != "alerts" and isinstance(result, dict) and "active_version" in result:
        # One line a person can read under the JSON (stderr, so stdout stays JSON).
        state = "consistent" if result.get("consistent") else "SHARDS DISAGREE"
        degraded = result.get("degraded_shards") or []
        print(
            f"active version: {result.get('active_version')} ({state}"
            + (f"; degraded shards: {degraded}" if degraded else "")
            + ")",
            file=sys.stderr,
        )
    return 0


def run_fraud_command(args: argparse.Namespace) -> int:
    if args.fraud_command == "backtest":
        return _backtest(args)
    return _admin(args)


def cmd_fraud(args: argparse.Namespace) -> int:
    return int(run_fraud_command(args))
