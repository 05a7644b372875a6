"""The HTTP half of scripts/compose-smoke: drive a running compose stack through its public
admin and partner APIs and check what it answers. Standard library only (plus the repository's
stdlib-only `quickpay.httpclient` and `kernel.ids`), so it runs on the host with no venv.

    compose_smoke.py --url URL --state FILE setup      (QUICKPAY_ADMIN_TOKEN in the environment)
    compose_smoke.py --url URL --state FILE pay --round N
    compose_smoke.py --url URL --state FILE prometheus --prometheus-url URL

`setup` creates a partner, two customer accounts on each shard, funds them, and gives the
partner an agreement on one account of each shard. `pay` makes, from each shard's debtor, a
same-shard and a cross-shard payment, waits until the cross-shard ones are Completed, replays
one of them with its key (same payment, no second debit), and checks every balance against the
payments made so far. `prometheus` asks the `prometheus` profile's server, through its HTTP
API, what it scraped and evaluated (tests/prometheus_checks.py, the checks tests/test_prometheus.py
makes against `quickpay up`): every target up (the gateway and one PostgreSQL exporter per
shard), both shards up with journal rows committed, the payments counted, one gateway worker,
PostgreSQL's statistics, every rule loaded and healthy, a recording rule's sample, and no
health alert firing. Exits non-zero (with the reason) on any surprise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# prometheus_checks: the checks tests/test_prometheus.py makes too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import prometheus_checks as checks

from kernel.ids import shard_of
from quickpay.httpclient import Api, ApiCallError, ready_consecutive, wait_ready
from quickpay.prometheus import GATEWAY_JOB, POSTGRES_JOB

SHARDS = 2
CURRENCY = "CNY"
FUNDING = Decimal("1000.00")
AMOUNT = Decimal("12.34")
COMPLETED = "AcceptedSettlementCompleted"
IN_PROCESS = "AcceptedSettlementInProcess"
SETTLE_TIMEOUT_S = 90.0
# deploy/prometheus/prometheus.yml scrapes and evaluates every 15 s: a condition that needs a
# scrape and then an evaluation holds within 30 s of the stack showing it; twice that, and more
# for a loaded machine.
PROMETHEUS_WAIT_S = 90.0
PROMETHEUS_START_S = 60.0  # /-/ready after compose up
UI_PAGE_BYTES_MAX = 65_536  # read of the UI's first page


def log(message: str) -> None:
    print(f"[compose_smoke] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    raise SystemExit(f"[compose_smoke] FAILED: {message}")


def setup(api: Api, state_file: Path) -> None:
    admin = os.environ.get("QUICKPAY_ADMIN_TOKEN") or fail("QUICKPAY_ADMIN_TOKEN is not set")
    partner = api.request("POST", "/admin/v1/partners", {"name": "Compose Smoke Wallet"}, token=admin)
    per_shard: dict[int, list[str]] = {s: [] for s in range(SHARDS)}
    opened = 0
    while min(len(v) for v in per_shard.values()) < 2:
        opened += 1
        if opened > 64:
            fail(f"64 accounts opened and still not two on every shard: {per_shard}")
        account = api.request("POST", "/admin/v1/accounts", {"currency": CURRENCY}, token=admin)["account_id"]
        shard = shard_of(account, SHARDS)
        if len(per_shard[shard]) < 2:
            per_shard[shard].append(account)
    for accounts in per_shard.values():
        for account in accounts:
            funding = api.request(
                "POST",
                f"/admin/v1/accounts/{account}/fundings",
                {"amount": str(FUNDING), "currency": CURRENCY, "reference": "smoke funding"},
                token=admin,
                headers={"x-idempotency-key": "smoke-fund-" + account},
            )
            if funding["status"] != COMPLETED:
                fail(f"funding of {account}: {funding}")
    token = api.token(partner["client_id"], partner["client_secret"])
    agreements = {}
    for shard, accounts in per_shard.items():
        agreement = api.request(
            "POST",
            "/v1/agreements",
            {
                "debtor_account": accounts[0],
                "currency": CURRENCY,
                "per_payment_limit": "500.00",
                "daily_limit": "5000.00",
            },
            token=token,
        )
        # The customer authorises it through the bank's channel (the admin API).
        api.request("POST", f"/admin/v1/agreements/{agreement['agreement_id']}/authorise", {}, token=admin)
        if shard_of(agreement["agreement_id"], SHARDS) != shard:
            fail(f"agreement {agreement['agreement_id']} is not on its debtor's shard {shard}")
        agreements[str(shard)] = agreement["agreement_id"]
    state = {
        "admin_token": admin,
        "client_id": partner["client_id"],
        "client_secret": partner["client_secret"],
        "accounts": {str(s): a for s, a in per_shard.items()},
        "agreements": agreements,
        "payments": [],
    }
    state_file.write_text(json.dumps(state))
    log(f"partner {partner['partner_id']}, accounts {per_shard}, agreements {agreements}")


def _settled(api: Api, token: str, payment_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        payment: dict[str, Any] = api.request("GET", f"/v1/quick-payments/{payment_id}", token=token)
        if payment["status"] == COMPLETED:
            return payment
        if payment["status"] != IN_PROCESS or time.monotonic() > deadline:
            fail(f"payment {payment_id} did not complete: {payment}")
        time.sleep(0.5)


def pay(api: Api, state_file: Path, round_no: int) -> None:
    state = json.loads(state_file.read_text())
    token = api.token(state["client_id"], state["client_secret"])
    accounts = {int(s): a for s, a in state["accounts"].items()}
    made = []
    for shard in range(SHARDS):
        debtor = accounts[shard][0]
        other = (shard + 1) % SHARDS
        for kind, creditor in (("same-shard", accounts[shard][1]), ("cross-shard", accounts[other][1])):
            key = f"smoke-r{round_no}-s{shard}-{kind}"
            body = {
                "agreement_id": state["agreements"][str(shard)],
                "amount": str(AMOUNT),
                "currency": CURRENCY,
                "creditor_account": creditor,
                "reference": f"smoke {key}",
            }
            payment = api.request("POST", "/v1/quick-payments", body, token=token, headers={"x-idempotency-key": key})
            if payment["status"] not in (COMPLETED, IN_PROCESS):
                fail(f"{kind} payment from shard {shard} was not accepted: {payment}")
            if kind == "same-shard" and payment["status"] != COMPLETED:
                fail(f"same-shard payment is not Completed at once: {payment}")
            payment = _settled(api, token, payment["payment_id"])
            # A retry with the same key is the same payment (no second debit: see the balances).
            again = api.request("POST", "/v1/quick-payments", body, token=token, headers={"x-idempotency-key": key})
            if again["payment_id"] != payment["payment_id"]:
                fail(f"a retry with key {key} made a new payment: {again} vs {payment}")
            made.append(
                {"debtor": debtor, "creditor": creditor, "amount": str(AMOUNT), "payment_id": payment["payment_id"]}
            )
            log(f"round {round_no}: {kind} payment from shard {shard}: {payment['payment_id']} {payment['status']}")
    state["payments"].extend(made)
    state_file.write_text(json.dumps(state))
    expected = {a: FUNDING for shard_accounts in accounts.values() for a in shard_accounts}
    for p in state["payments"]:
        expected[p["debtor"]] -= Decimal(p["amount"])
        expected[p["creditor"]] += Decimal(p["amount"])
    for account, want in sorted(expected.items()):
        got = Decimal(
            api.request("GET", f"/admin/v1/accounts/{account}/balance", token=state["admin_token"])["balance"]
        )
        if got != want:
            fail(f"balance of {account} is {got}, expected {want} after {len(state['payments'])} payments")
    log(f"round {round_no}: {len(made)} payments, every balance as expected")


def prometheus(prom_url: str, state_file: Path, postgres_servers: int = SHARDS) -> None:
    state = json.loads(state_file.read_text())
    payments = len(state["payments"])
    prom = checks.PrometheusApi(prom_url)
    started = time.monotonic()

    def wait(what: str, check: Any) -> Any:
        seen = checks.wait_for(what, check, PROMETHEUS_WAIT_S)
        log(f"prometheus: {what} ({time.monotonic() - started:.1f} s): {seen}")
        return seen

    checks.wait_for("Prometheus ready", prom.ready, PROMETHEUS_START_S)
    wait("every target up", lambda: checks.targets_up(prom, {GATEWAY_JOB: 1, POSTGRES_JOB: postgres_servers}))
    # Each shard's debtor paid twice in the last round (same-shard, cross-shard debit), after
    # shard 1's worker was killed and restarted (its count is since its start).
    wait("every shard up, with journal rows", lambda: checks.shards_up(prom, SHARDS, committed_min=2))
    wait("the payments counted", lambda: checks.payments_counted(prom, payments))
    wait("one gateway worker", lambda: len(checks.gateway_workers(prom, 1)))
    wait("PostgreSQL's statistics per server", lambda: checks.postgres_up(prom, postgres_servers))
    wait("every rule healthy", lambda: sorted(checks.rules_healthy(prom)))
    count = wait("a recording rule's sample", lambda: checks.recorded(prom, "quickpay:gateway_workers:count"))
    if count != 1.0:
        fail(f"quickpay:gateway_workers:count is {count}, the stack runs one gateway worker")
    wait("no health alert firing", lambda: sorted(checks.none_firing(prom, checks.HEALTH_ALERTS)))
    # The UI README points to: Debian's build redirects / to its classic pages.
    with urllib.request.urlopen(prom_url + "/", timeout=checks.API_TIMEOUT_S) as reply:
        page = reply.read(UI_PAGE_BYTES_MAX).decode(errors="replace")
        if reply.status != 200 or "<title>Prometheus" not in page:
            fail(f"Prometheus' UI at {prom_url}/ answered {reply.status} {reply.url}: {page[:200]!r}")
        log(f"prometheus: the UI answers at {reply.url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--state", required=True, type=Path)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("setup")
    pay_parser = sub.add_parser("pay")
    pay_parser.add_argument("--round", type=int, required=True)
    prom_parser = sub.add_parser("prometheus")
    prom_parser.add_argument("--prometheus-url", required=True)
    prom_parser.add_argument(
        "--postgres-servers",
        type=int,
        default=SHARDS,
        help="PostgreSQL exporters (docker-compose.ha.yml: one per member)",
    )
    args = parser.parse_args()
    wait_ready(args.url, timeout_s=120, consecutive=ready_consecutive(2))
    # 503 means "outcome unknown, retry with the same key": safe for every request made here.
    api = Api(args.url, timeout_s=30, unavailable_retries=20)
    try:
        if args.step == "setup":
            setup(api, args.state)
        elif args.step == "pay":
            pay(api, args.state, args.round)
        else:
            prometheus(args.prometheus_url, args.state, args.postgres_servers)
    except ApiCallError as exc:
        fail(f"HTTP {exc.status}: {exc.body}")
    except checks.CheckFailed as exc:
        fail(f"prometheus: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
