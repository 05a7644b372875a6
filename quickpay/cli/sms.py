"""`quickpay sms tail`: the simulated SMS provider's outbox (GET /admin/v1/sms), where the
one-time codes of the consent page and the portal go in a stack without a real provider.

    quickpay sms tail [--phone +86...] [--account ID] [--follow]

Prints one line per message, oldest first (the last 24 hours at most); --follow keeps
polling every second until interrupted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import urlencode

from quickpay.cli.admin_api import admin_token

__all__ = ["add_sms_arguments", "cmd_sms"]

FOLLOW_POLL_S = 1.0


def add_sms_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sms_command", required=True)
    tail = sub.add_parser("tail", help="the messages the simulated SMS provider 'sent'")
    tail.add_argument("--phone", help="only messages to this phone")
    tail.add_argument("--account", help="only messages for this account")
    tail.add_argument("--follow", action="store_true", help="keep printing new messages")
    tail.add_argument("--url", default="http://127.0.0.1:8080")
    tail.add_argument("--state-dir", default="./.quickpay")


def cmd_sms(args: argparse.Namespace) -> int:
    import urllib.error

    from quickpay.httpclient import Api, ApiCallError

    api = Api(args.url, timeout_s=30.0)
    token = admin_token(args.state_dir)
    after = "0"
    while True:
        query: dict[str, Any] = {"after": after, "limit": 200}
        if args.phone:
            query["phone"] = args.phone
        if args.account:
            query["account_id"] = args.account
        try:
            page = api.request("GET", "/admin/v1/sms?" + urlencode(query), token=token)
        except ApiCallError as exc:
            print(exc.body)
            return 1
        except urllib.error.URLError as exc:
            raise SystemExit(f"no quickpay stack answered at {args.url} ({exc.reason}); give --url") from None
        for message in page["messages"]:
            print(f"{message['at']}  {message['phone']}  {message['account_id']}  {message['text']}", flush=True)
        after = page["next_cursor"]
        if page["messages"] and len(page["messages"]) == 200:
            continue
        if not args.follow:
            return 0
        time.sleep(FOLLOW_POLL_S)
