"""The argparse tree of the `quickpay` command: every subcommand, its flags, and the function
that runs it (a `cmd_*` of the command group's module)."""

from __future__ import annotations

import argparse

from kernel.limits import PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_MAX, RATE_LIMIT_BURST_DEFAULT, RATE_LIMIT_RPS_DEFAULT
from quickpay.cli.bench import cmd_bench, cmd_seed, cmd_soak
from quickpay.cli.check import cmd_check, cmd_recon
from quickpay.cli.common import (
    BATCH_ITEMS_MAX_DEFAULT,
    ENV_DSNS,
    ENV_SHARD_ADDRS,
)
from quickpay.cli.fraud import add_fraud_arguments, cmd_fraud
from quickpay.cli.ha import cmd_ha, cmd_ha_drill
from quickpay.cli.partners import add_partners_arguments, cmd_partners
from quickpay.cli.processes import cmd_gateway_worker, cmd_monitor, cmd_node, cmd_notifier, cmd_shard_worker
from quickpay.cli.prometheus import add_prometheus_parser
from quickpay.cli.secrets import cmd_secrets
from quickpay.cli.shards import add_shards_arguments, cmd_shards
from quickpay.cli.sms import add_sms_arguments, cmd_sms
from quickpay.cli.up import cmd_up

# The help's description: quickpay/cli/__init__.py's docstring, as it was cli.py's.
DESCRIPTION = "The `quickpay` command: up, seed, check, bench, fraud, and the per-process entrypoints."


def _add_stack_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="gateway listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    p.add_argument("--state-dir", default="./.quickpay", help="data and secrets (default ./.quickpay)")
    p.add_argument("--shards", type=int, default=2, help="ledger shards (default 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="gateway worker processes (default 2; the node topology has one per shard)",
    )
    p.add_argument(
        "--topology",
        choices=["gateway", "node"],
        default="gateway",
        help="gateway: separate gateway workers and shard workers (default); node: one process "
        "per shard serving HTTP and owning its shard (see BENCHMARKS.md)",
    )
    p.add_argument("--dsn", action="append", help=f"PostgreSQL DSN, once per shard (or {ENV_DSNS})")
    p.add_argument("--rules", help="fraud rule file (default: the shipped default rules)")
    p.add_argument("--no-rules", action="store_true", help="run without the fraud filter")
    p.add_argument("--batch-size-max", type=int, default=4000, help="transfers per group commit")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=3.0,
        help="wait this long after the first request of an idle batch, to fill it (default 3; "
        "measured at 2,000/s vs 1 ms: -17..20%% CPU per payment, p99 within noise)",
    )
    p.add_argument(
        "--pipeline-depth",
        type=int,
        default=None,
        help=f"group-commit batches each shard worker has decided and not yet committed, at most, "
        f"1-{PIPELINE_DEPTH_MAX} (default {PIPELINE_DEPTH_DEFAULT}; see BENCHMARKS.md for --ha)",
    )
    p.add_argument(
        "--ledger-mode",
        choices=["batched", "naive"],
        default="batched",
        help="naive: one transaction per payment with row locks (a benchmark baseline)",
    )
    p.add_argument(
        "--batch-items-max",
        type=int,
        default=BATCH_ITEMS_MAX_DEFAULT,
        help=f"payments per POST /v1/quick-payments/batch, 1-{BATCH_ITEMS_MAX_DEFAULT} "
        f"(default {BATCH_ITEMS_MAX_DEFAULT}; more is a 400, and /openapi.json says so)",
    )
    p.add_argument(
        "--refund-window-days",
        type=int,
        default=365,
        help="how long after a payment it can be refunded, 1-3650 days (default 365)",
    )
    _add_pending_arguments(p)
    _add_rate_limit_arguments(p, process=False)
    _add_webhook_arguments(p)
    p.add_argument("--no-notifier", action="store_true", help="do not start the event and webhook process")


def _add_rate_limit_arguments(p: argparse.ArgumentParser, *, process: bool) -> None:
    p.add_argument(
        "--rate-limit-rps",
        type=float,
        default=RATE_LIMIT_RPS_DEFAULT,
        help="requests per second per partner, the default for partners without an override "
        f"(PUT /admin/v1/partners/{{id}}/rate-limit); default {RATE_LIMIT_RPS_DEFAULT:.0f}",
    )
    p.add_argument(
        "--rate-limit-burst",
        type=float,
        default=RATE_LIMIT_BURST_DEFAULT,
        help=f"requests a partner may send at once (default {RATE_LIMIT_BURST_DEFAULT:.0f})",
    )
    if process:
        p.add_argument(
            "--rate-limit-workers",
            type=int,
            default=1,
            help="W, the gateway processes that share each partner's limit (up sets it)",
        )
        p.add_argument(
            "--rate-limit-worker",
            type=int,
            default=0,
            help="which of them this process is, 0..W-1: it enforces that part of each limit, "
            "so the parts add up to the limit (gateway/ratelimit.py; up sets it)",
        )


def _add_webhook_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--webhooks-allow-private",
        action="store_true",
        help="let webhook endpoints be loopback/private/link-local addresses (refused by default; "
        "--demo sets it for the README's local receiver)",
    )
    p.add_argument(
        "--webhook-max-age-h",
        type=float,
        default=72.0,
        help="retry a webhook delivery until its event is this many hours old (default 72)",
    )


def _add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """A shard worker's flags (the `shard-worker` and `node` processes)."""
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--dsn")
    p.add_argument("--listen", help="unix:/path or tcp:host:port (default: this shard's --shard-addrs entry)")
    p.add_argument("--shard-addrs", help=f"every shard's address, comma-separated (or {ENV_SHARD_ADDRS})")
    p.add_argument("--rules")
    p.add_argument("--no-rules", action="store_true")
    p.add_argument("--batch-size-max", type=int, default=4000)
    p.add_argument("--batch-wait-ms", type=float, default=3.0)
    p.add_argument("--pipeline-depth", type=int, default=PIPELINE_DEPTH_DEFAULT)
    p.add_argument("--ledger-mode", choices=["batched", "naive"], default="batched")
    p.add_argument(
        "--queue-max",
        type=int,
        default=100_000,
        help="bound of the intake queue, in payments (at least 1000, the largest batch call)",
    )
    p.add_argument("--refund-window-days", type=int, default=365, help="how long a payment stays refundable")
    _add_pending_arguments(p)


def _add_pending_arguments(p: argparse.ArgumentParser) -> None:
    from ledger.agreements import PENDING_EXPIRY_S
    from ledger.state import PENDING_PER_ACCOUNT_MAX, PENDING_PER_PARTNER_MAX

    p.add_argument(
        "--pending-expiry-s",
        type=int,
        default=PENDING_EXPIRY_S,
        help="an agreement the customer has not authorised within this many seconds reads Expired "
        f"and can no longer be authorised (default {PENDING_EXPIRY_S}: 24 h)",
    )
    p.add_argument(
        "--pending-per-account-max",
        type=int,
        default=PENDING_PER_ACCOUNT_MAX,
        help="agreements a partner may have awaiting the customer over one account "
        f"(default {PENDING_PER_ACCOUNT_MAX}; more is 409 QP.Agreement.TooManyPending)",
    )
    p.add_argument(
        "--pending-per-partner-max",
        type=int,
        default=PENDING_PER_PARTNER_MAX,
        help="agreements a partner may have awaiting customers in total, shared out evenly "
        f"over the shards (default {PENDING_PER_PARTNER_MAX})",
    )


def _add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """What a process serving the HTTP API takes (gateway-worker and node alike)."""
    p.add_argument(
        "--batch-items-max",
        type=int,
        default=BATCH_ITEMS_MAX_DEFAULT,
        help="payments per batch request (at most the default)",
    )
    _add_rate_limit_arguments(p, process=True)
    p.add_argument("--webhooks-allow-private", action="store_true", help="accept private webhook addresses")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickpay", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start PostgreSQL, shard workers and gateway workers, supervised")
    _add_stack_flags(up)
    up.add_argument("--demo", action="store_true", help="seed a demo partner and print a curl example")
    up.add_argument("--no-monitor", action="store_true", help="do not start the post-event fraud monitor")
    up.add_argument(
        "--keep-db", action="store_true", help="run the embedded PostgreSQL unsupervised and leave it running on exit"
    )
    # Test hooks (fault injection): shard workers' listen addresses, and the shard
    # addresses gateways and relays dial, e.g. a fault proxy in front of each shard.
    up.add_argument(
        "--ha",
        action="store_true",
        help="each shard's PostgreSQL as a Patroni cluster with a synchronous standby (etcd as the store)",
    )
    up.add_argument(
        "--ha-members",
        type=int,
        default=3,
        help="PostgreSQL servers per shard with --ha (default 3: one lost server neither loses a "
        "commit nor stops writes; 2: zero loss, but a lost server stops writes until it is back)",
    )
    up.add_argument("--shard-listen", help=argparse.SUPPRESS)
    up.add_argument("--gateway-shard-addrs", help=argparse.SUPPRESS)
    up.add_argument("--relay-shard-addrs", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    shard = sub.add_parser("shard-worker", help="run one ledger shard worker (used by up and compose)")
    _add_worker_arguments(shard)
    shard.set_defaults(func=cmd_shard_worker)

    gw = sub.add_parser("gateway-worker", help="run one gateway worker process (used by up and compose)")
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=8080)
    gw.add_argument("--shard-addrs", help=f"every shard's address, comma-separated (or {ENV_SHARD_ADDRS})")
    gw.add_argument("--state-dir", help="read token key and admin token from here instead of the environment")
    _add_serving_arguments(gw)
    gw.set_defaults(func=cmd_gateway_worker)

    node = sub.add_parser("node", help="run one node: HTTP API plus one shard in one process (up --topology node)")
    _add_worker_arguments(node)
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=8080)
    _add_serving_arguments(node)
    node.set_defaults(func=cmd_node)

    notifier = sub.add_parser("notifier", help="run the event producer and webhook deliverer over all shards")
    notifier.add_argument("--dsn", nargs="*", help=f"every shard's DSN, in shard order (or {ENV_DSNS})")
    _add_webhook_arguments(notifier)
    notifier.set_defaults(func=cmd_notifier)

    rec = sub.add_parser("recon", help="a partner's reconciliation file for one UTC day (from every shard's journal)")
    rec.add_argument("--partner", required=True, help="the partner id (ptn_...)")
    rec.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    rec.add_argument("--provisional", action="store_true", help="the day so far, before it is closed")
    rec.add_argument("--out", help="write the file here (default: standard output)")
    rec.add_argument("--state-dir", default="./.quickpay")
    rec.add_argument("--dsn", action="append", help=f"PostgreSQL DSN, once per shard (or {ENV_DSNS})")
    rec.add_argument("--now-ms", type=int, help=argparse.SUPPRESS)  # the clock, for tests
    rec.set_defaults(func=cmd_recon)

    mon = sub.add_parser("monitor", help="run the post-event fraud monitor over all shards")
    mon.add_argument("--dsn", nargs="*", help=f"every shard's DSN in shard order (or {ENV_DSNS})")
    mon.set_defaults(func=cmd_monitor)

    sec = sub.add_parser("secrets", help="write a .env of fresh secrets for docker compose (mode 0600)")
    sec.add_argument("--out", default=".env", help="where to write (default .env)")
    sec.add_argument("--force", action="store_true", help="replace an existing file")
    sec.set_defaults(func=cmd_secrets)

    add_prometheus_parser(sub)

    check = sub.add_parser("check", help="audit conservation of money across all shards")
    check.add_argument("--state-dir", default="./.quickpay")
    check.add_argument("--dsn", action="append", help=f"PostgreSQL DSN, once per shard (or {ENV_DSNS})")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_check)

    ha = sub.add_parser("ha", help="the HA stack's PostgreSQL clusters (up --ha)")
    ha_sub = ha.add_subparsers(dest="ha_command", required=True)
    ha_status = ha_sub.add_parser("status", help="per shard: members, roles, state, timeline, replication lag")
    ha_status.add_argument("--state-dir", default="./.quickpay")
    ha_status.add_argument("--json", action="store_true", help="print the status as JSON")
    ha_status.set_defaults(func=cmd_ha)
    drill = ha_sub.add_parser("drill", help="fail a shard's leader under a stream of payments; watch and check")
    drill.add_argument(
        "--fault",
        choices=["kill", "freeze", "kill-standby"],
        default="kill",
        help="kill: SIGKILL the leader's postmaster; freeze: SIGSTOP its Patroni (a partition); "
        "kill-standby: SIGKILL the synchronous standby's postmaster",
    )
    drill.add_argument("--shard", type=int, default=0)
    drill.add_argument("--runs", type=int, default=1, help="repeat, and report median and max")
    drill.add_argument("--state-dir", default="./.quickpay")
    drill.add_argument("--json", action="store_true", help="print the reports as JSON at the end")
    drill.set_defaults(func=cmd_ha_drill)

    seed = sub.add_parser("seed", help="create partners, agreements and funded customers")
    seed.add_argument("--url", default="http://127.0.0.1:8080")
    seed.add_argument("--state-dir", default="./.quickpay")
    seed.add_argument("--partners", type=int, default=10)
    seed.add_argument("--customers", type=int, default=10_000)
    seed.add_argument("--funding", default="100000.00", help="initial balance per customer")
    seed.add_argument("--blocked-share", type=float, default=0.01, help="share of debtors put on blocked_accounts")
    seed.add_argument("--out", help="where population.json goes (default: the state dir)")
    seed.set_defaults(func=cmd_seed)

    from loadtest.bench_args import add_bench_arguments

    bench = sub.add_parser("bench", help="benchmark the quick-pay path (open loop) with baselines")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from loadtest.soak import add_soak_arguments

    soak = sub.add_parser("soak", help="mixed traffic from many partners (a hostile few) for a while, then checks")
    add_soak_arguments(soak)
    soak.set_defaults(func=cmd_soak)

    fraud = sub.add_parser("fraud", help="fraud rules: backtest, show, propose, activate, rollback")
    add_fraud_arguments(fraud)
    fraud.set_defaults(func=cmd_fraud)

    partners = sub.add_parser(
        "partners", help="cut a partner off: disable, enable, rotate-secret, retire-secret, revoke-tokens; show, audit"
    )
    add_partners_arguments(partners)
    partners.set_defaults(func=cmd_partners)

    shards = sub.add_parser("shards", help="the slot map: status (slots per shard, held versions, moves)")
    add_shards_arguments(shards)
    shards.set_defaults(func=cmd_shards)

    sms = sub.add_parser("sms", help="the simulated SMS outbox (the consent page's and portal's codes): tail")
    add_sms_arguments(sms)
    sms.set_defaults(func=cmd_sms)
    return parser
