"""`quickpay shards status`: the slot map (issue 21) through the admin API (GET /admin/v1/shards).

    quickpay shards status [--json]   the map's version, slots per shard, the version each
                                      shard worker acts on, the moves in progress

As `quickpay partners`, it reads the admin token from the state directory (or
QUICKPAY_ADMIN_TOKEN); an error's body goes to stderr as JSON and the exit status is 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from quickpay.cli.admin_api import admin_token, call_admin

__all__ = ["add_shards_arguments", "cmd_shards", "render_status"]


def add_shards_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="shards_command", required=True)
    status = sub.add_parser("status", help="slots per shard, the map version each shard holds, moves in progress")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--state-dir", default="./.quickpay")
    status.add_argument("--json", action="store_true", help="the admin API's answer as JSON")


def render_status(view: dict[str, Any]) -> str:
    """GET /admin/v1/shards as a table for people."""
    if view["version"] is None:
        return (
            f"no slot map: {len(view['shards'])} shards do not divide the {view['slot_count']} slots, so this ledger "
            "routes every id by hash and its slots cannot move\n\n"
            + "\n".join(
                f"shard {row['shard']}: " + ("up" if row["error"] is None else f"? ({row['error']})")
                for row in view["shards"]
            )
        )
    lines = [
        f"slot map version {view['version']} (written {view['written_at']}), {view['slot_count']} slots; "
        f"this gateway worker holds version {view['gateway_held_version']}",
        "",
        f"{'shard':>5}  {'slots':>6}  {'held version':>12}",
    ]
    for row in view["shards"]:
        held = row["held_version"] if row["held_version"] is not None else f"? ({row['error']})"
        lines.append(f"{row['shard']:>5}  {row['slots']:>6}  {held!s:>12}")
    lines.append("")
    if not view["moves"]:
        lines.append("moves in progress: none")
    else:
        lines.append("moves in progress:")
        for move in view["moves"]:
            lines.append(
                f"  slot {move['slot']}: shard {move['source_shard']} -> {move['target_shard']}, "
                f"version {move['from_version']} -> {move['to_version']}, {move['phase']} "
                f"(since {move['started_at']}, last step {move['updated_at']})"
            )
    return "\n".join(lines)


def cmd_shards(args: argparse.Namespace) -> int:
    from quickpay.httpclient import Api

    api = Api(args.url, timeout_s=30.0)
    token = admin_token(args.state_dir)
    status, _ = call_admin(
        args.url,
        lambda: api.request("GET", "/admin/v1/shards", token=token),
        show=None if args.json else render_status,
    )
    return status
