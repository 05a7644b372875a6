"""`quickpay up --demo`: a partner, funded customers, agreements, and a curl to paste."""

from __future__ import annotations

import json
import secrets
import shlex
from pathlib import Path
from typing import Any

from kernel.ids import shard_of
from quickpay.config import write_private_file
from quickpay.httpclient import Api

__all__ = ["curl_example", "seed_demo"]

DEMO_FUNDING = "10000.00"


def seed_demo(api: Api, admin_token: str, shard_count: int, state_dir: Path) -> dict[str, Any]:
    demo_file = state_dir / "demo.json"
    if demo_file.exists():
        demo_file.chmod(0o600)  # a state dir from before demo.json was private
        return dict(json.loads(demo_file.read_text()))
    partner = api.request("POST", "/admin/v1/partners", {"name": "Demo Wallet"}, token=admin_token)
    # Open customers until every shard holds at least two, so the demo has both
    # same-shard and cross-shard customer payments.
    accounts: list[str] = []
    per_shard: dict[int, list[str]] = {}
    while min((len(per_shard.get(s, [])) for s in range(shard_count)), default=0) < 2 and len(accounts) < 64:
        account = api.request("POST", "/admin/v1/accounts", {"currency": "CNY"}, token=admin_token)["account_id"]
        accounts.append(account)
        per_shard.setdefault(shard_of(account, shard_count), []).append(account)
    for account in accounts:
        api.request(
            "POST",
            f"/admin/v1/accounts/{account}/fundings",
            {"amount": DEMO_FUNDING, "currency": "CNY", "reference": "demo funding"},
            token=admin_token,
            headers={"x-idempotency-key": "demo-fund-" + account},
        )
    token = api.token(partner["client_id"], partner["client_secret"])
    agreements = []
    for account in accounts:
        agreement = api.request(
            "POST",
            "/v1/agreements",
            {
                "debtor_account": account,
                "currency": "CNY",
                "per_payment_limit": "5000.00",
                "daily_limit": "20000.00",
                "periodic_limits": [{"period": "Month", "alignment": "Calendar", "amount": "100000.00"}],
            },
            token=token,
        )
        # The customer authorises it through the bank (the admin API stands in for its app).
        api.request("POST", f"/admin/v1/agreements/{agreement['agreement_id']}/authorise", {}, token=admin_token)
        agreements.append(
            {
                "agreement_id": agreement["agreement_id"],
                "debtor_account": account,
                "shard": shard_of(account, shard_count),
            }
        )
    first = agreements[0]
    cross = next((a["debtor_account"] for a in agreements if a["shard"] != first["shard"]), None)
    same = next((a["debtor_account"] for a in agreements[1:] if a["shard"] == first["shard"]), None)
    demo = {
        "base_url": api.base_url,
        "admin_token": admin_token,
        "client_id": partner["client_id"],
        "client_secret": partner["client_secret"],
        "partner_id": partner["partner_id"],
        "settlement_account": partner["settlement_account"],
        "agreements": agreements,
        "accounts": accounts,
        "example": {
            "agreement_id": first["agreement_id"],
            "debtor_account": first["debtor_account"],
            "same_shard_creditor": same,
            "cross_shard_creditor": cross,
        },
        "run_id": secrets.token_hex(4),
    }
    # It holds the partner's client secret and the admin token: private from the first byte.
    write_private_file(demo_file, json.dumps(demo, indent=2))
    return demo


def curl_example(demo: dict[str, Any]) -> str:
    base = demo["base_url"]
    example = demo["example"]
    body = json.dumps(
        {
            "agreement_id": example["agreement_id"],
            "amount": "12.34",
            "currency": "CNY",
            "creditor_account": demo["settlement_account"],
            "reference": "my first quick-pay",
        }
    )
    lines = [
        f"TOKEN=$(curl -s -u {demo['client_id']}:{demo['client_secret']} -d grant_type=client_credentials "
        f"{base}/oauth2/token | python3 -c 'import sys, json; print(json.load(sys.stdin)[\"access_token\"])')",
        f'curl -s -X POST {base}/v1/quick-payments -H "Authorization: Bearer $TOKEN" '
        f"-H \"x-idempotency-key: demo-$(date +%s%N)\" -H 'content-type: application/json' -d {shlex.quote(body)}",
    ]
    if example.get("cross_shard_creditor"):
        cross_body = body.replace(demo["settlement_account"], example["cross_shard_creditor"])
        lines.append("# a customer-to-customer payment to an account on another shard:")
        lines.append(
            f'curl -s -X POST {base}/v1/quick-payments -H "Authorization: Bearer $TOKEN" '
            f"-H \"x-idempotency-key: demo-$(date +%s%N)\" -H 'content-type: application/json' "
            f"-d {shlex.quote(cross_body)}"
        )
    return "\n".join(lines)
