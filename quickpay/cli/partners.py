"""`quickpay partners ...`: cut a partner off, or let it back in, through the admin API.

    quickpay partners show ID            its cut-off state
    quickpay partners disable ID         its tokens are refused (403) and it gets no new ones
    quickpay partners enable ID
    quickpay partners rotate-secret ID [--overlap-s N]   a new client secret (printed once);
                                         the old one stays valid N s (default 86400)
    quickpay partners retire-secret ID   the old secret stops being valid now
    quickpay partners revoke-tokens ID   every token issued until now is refused
    quickpay partners audit ID           who did what, when
    quickpay partners redirect-uris ID [URI ...]   show, or replace, the exact redirect URIs
                                         the consent page may send its customers back to

Every gateway process applies a change within 1 s. Each change is recorded with --actor (and
--reason) in the partner's audit trail and shows in its event feed. As `quickpay fraud`, it
reads the admin token from the state directory (or QUICKPAY_ADMIN_TOKEN) and prints the
answer as JSON; an error's body goes to stderr and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from quickpay.cli.admin_api import admin_token, call_admin

__all__ = ["add_partners_arguments", "cmd_partners", "run_partners_command"]

# command -> the admin route's last segment (None: a GET of the partner itself)
_ACTIONS = {
    "disable": "disable",
    "enable": "enable",
    "rotate-secret": "rotate-secret",
    "retire-secret": "retire-secret",
    "revoke-tokens": "revoke-tokens",
}


def add_partners_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="partners_command", required=True)
    for name, help_text in (
        ("show", "a partner's cut-off state"),
        ("disable", "refuse the partner's tokens at once and issue it none"),
        ("enable", "let a disabled partner back in"),
        ("rotate-secret", "a new client secret; the old one stays valid for --overlap-s"),
        ("retire-secret", "end the old secret's overlap now"),
        ("revoke-tokens", "refuse every token issued to the partner until now"),
        ("audit", "the partner's audit trail of these actions"),
        ("redirect-uris", "show the partner's consent redirect URIs, or replace them with the URIs given"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("partner_id")
        cmd.add_argument("--url", default="http://127.0.0.1:8080")
        cmd.add_argument("--state-dir", default="./.quickpay")
        if name in _ACTIONS:
            cmd.add_argument("--actor", default="cli", help="who does it (recorded in the audit trail)")
            cmd.add_argument("--reason", help="why (recorded in the audit trail)")
        if name == "redirect-uris":
            cmd.add_argument("uris", nargs="*", metavar="URI", help="https (http only to 127.0.0.1/localhost)")
        if name == "rotate-secret":
            cmd.add_argument(
                "--overlap-s",
                type=int,
                default=86_400,
                help="seconds the old secret stays valid (0-2592000; 0: retired at once)",
            )


def run_partners_command(args: argparse.Namespace) -> int:
    from quickpay.httpclient import Api

    # Disable, enable and retire are idempotent; a rotation or a revocation repeated after an
    # unknown outcome would rotate (or revoke) twice, so nothing is retried.
    api = Api(args.url, timeout_s=30.0)
    token = admin_token(args.state_dir)
    path = f"/admin/v1/partners/{quote(args.partner_id, safe='')}"

    def request() -> Any:
        if args.partners_command == "show":
            return api.request("GET", path, token=token)
        if args.partners_command == "audit":
            return api.request("GET", path + "/audit?limit=200", token=token)
        if args.partners_command == "redirect-uris":
            if not args.uris:
                return api.request("GET", path + "/redirect-uris", token=token)
            return api.request("PUT", path + "/redirect-uris", {"redirect_uris": args.uris}, token=token)
        body: dict[str, Any] = {"actor": args.actor}
        if args.reason:
            body["reason"] = args.reason
        if args.partners_command == "rotate-secret":
            body["overlap_s"] = args.overlap_s
        return api.request("POST", f"{path}/{_ACTIONS[args.partners_command]}", body, token=token)

    status, result = call_admin(args.url, request)
    if status:
        return status
    if args.partners_command == "rotate-secret" and isinstance(result, dict):
        print(
            "the new client secret is shown only here; the old one is valid until "
            f"{result.get('previous_secret_valid_until') or 'now (retired)'}",
            file=sys.stderr,
        )
    return 0


def cmd_partners(args: argparse.Namespace) -> int:
    return int(run_partners_command(args))
