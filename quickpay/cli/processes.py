"""The per-process entrypoints `up` and compose start: shard-worker, node, gateway-worker,
notifier, monitor."""

from __future__ import annotations

import argparse
import os
from typing import Any

from kernel.limits import RATE_LIMIT_BURST_DEFAULT, RATE_LIMIT_MAX, RATE_LIMIT_RPS_DEFAULT
from quickpay.cli.common import (
    BATCH_ITEMS_MAX_DEFAULT,
    ENV_CLUSTER_SECRET,
    ENV_DSNS,
    ENV_SHARD_ADDRS,
    ENV_SUPERVISOR_STATUS,
    RATE_LIMIT_WORKERS_MAX,
    _setup_logging,
    _split,
    _split_dsns,
)
from quickpay.cli.secrets import _require_dsn_passwords, _require_secrets


def _worker_config(args: argparse.Namespace, command: str) -> Any:
    from ledger.worker import WorkerConfig

    addresses = _split(args.shard_addrs) or _split(os.environ.get(ENV_SHARD_ADDRS))
    if len(addresses) != args.shards:
        raise SystemExit(f"--shard-addrs must list {args.shards} addresses")
    env_dsns = _split_dsns(os.environ.get(ENV_DSNS))
    dsn = args.dsn or (env_dsns[args.shard] if len(env_dsns) > args.shard else None)
    if not dsn:
        raise SystemExit(f"{command} needs --dsn or QUICKPAY_DSNS")
    secret = os.environ.get(ENV_CLUSTER_SECRET)
    _require_secrets(command, {ENV_CLUSTER_SECRET: secret})
    _require_dsn_passwords(command, [dsn])
    assert secret is not None
    return WorkerConfig(
        cluster_secret=secret.encode(),
        shard=args.shard,
        shard_count=args.shards,
        dsn=dsn,
        listen=args.listen or addresses[args.shard],
        peers=dict(enumerate(addresses)),
        batch_size_max=args.batch_size_max,
        batch_wait_ms=args.batch_wait_ms,
        pipeline_depth=args.pipeline_depth,
        rules_path=args.rules,
        no_rules=args.no_rules,
        ledger_mode=args.ledger_mode,
        queue_max=args.queue_max,
        refund_window_days=args.refund_window_days,
        pending_expiry_s=args.pending_expiry_s,
        pending_per_account_max=args.pending_per_account_max,
        pending_per_partner_max=args.pending_per_partner_max,
    )


def cmd_shard_worker(args: argparse.Namespace) -> int:
    import uvloop

    from ledger.worker import run_worker

    config = _worker_config(args, "shard-worker")
    _setup_logging(verbose=True)
    uvloop.run(run_worker(config))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    import uvloop

    from quickpay.node import run_node

    worker_config = _worker_config(args, "node")
    gateway_config = _gateway_config(args, "node")
    _setup_logging(verbose=True)
    uvloop.run(run_node(worker_config, gateway_config, args.host, args.port))
    return 0


def _gateway_config(args: argparse.Namespace, command: str) -> Any:
    from gateway.app import GatewayConfig

    addresses = _split(args.shard_addrs) or _split(os.environ.get(ENV_SHARD_ADDRS))
    if not addresses:
        raise SystemExit(f"{command} needs --shard-addrs or QUICKPAY_SHARD_ADDRS")
    key = os.environ.get("QUICKPAY_TOKEN_KEY")
    admin = os.environ.get("QUICKPAY_ADMIN_TOKEN")
    cluster = os.environ.get(ENV_CLUSTER_SECRET)
    if getattr(args, "state_dir", None):
        from quickpay.config import StateDir

        state = StateDir(args.state_dir).ensure()
        key, admin = key or state.token_key.decode(), admin or state.admin_token
        cluster = cluster or state.cluster_secret
        os.environ[ENV_CLUSTER_SECRET] = cluster  # the shard clients read it from here
    if not key or not admin or not cluster:
        raise SystemExit(
            f"{command} needs QUICKPAY_TOKEN_KEY, QUICKPAY_ADMIN_TOKEN and {ENV_CLUSTER_SECRET} (or --state-dir)"
        )
    _require_secrets(command, {"QUICKPAY_TOKEN_KEY": key, "QUICKPAY_ADMIN_TOKEN": admin, ENV_CLUSTER_SECRET: cluster})
    items_max = getattr(args, "batch_items_max", BATCH_ITEMS_MAX_DEFAULT)
    if not 1 <= items_max <= BATCH_ITEMS_MAX_DEFAULT:
        raise SystemExit(f"{command}: --batch-items-max must be between 1 and {BATCH_ITEMS_MAX_DEFAULT}")
    rate = getattr(args, "rate_limit_rps", RATE_LIMIT_RPS_DEFAULT)
    burst = getattr(args, "rate_limit_burst", RATE_LIMIT_BURST_DEFAULT)
    worker = getattr(args, "rate_limit_worker", 0)
    workers = getattr(args, "rate_limit_workers", 1)
    if (
        not 0 < rate <= RATE_LIMIT_MAX
        or not 1 <= burst <= RATE_LIMIT_MAX
        or not 1 <= workers <= RATE_LIMIT_WORKERS_MAX
        or not 0 <= worker < workers
    ):
        raise SystemExit(
            f"{command}: --rate-limit-rps in (0, {RATE_LIMIT_MAX}], --rate-limit-burst in "
            f"[1, {RATE_LIMIT_MAX}], --rate-limit-workers in [1, {RATE_LIMIT_WORKERS_MAX}], "
            "--rate-limit-worker in [0, workers)"
        )
    return GatewayConfig(
        shard_addresses=addresses,
        patroni_members=_patroni_members(command, len(addresses)),
        token_key=key.encode(),
        admin_token=admin,
        supervisor_status=os.environ.get(ENV_SUPERVISOR_STATUS) or None,
        batch_items_max=items_max,
        rate_limit_rps=rate,
        rate_limit_burst=burst,
        rate_limit_worker=worker,
        rate_limit_workers=workers,
        webhooks_allow_private=bool(getattr(args, "webhooks_allow_private", False)),
    )


def _patroni_members(command: str, shards: int) -> Any:
    """QUICKPAY_PATRONI_MEMBERS (docker-compose.ha.yml's gateway): where the Patroni REST APIs are."""
    text = os.environ.get("QUICKPAY_PATRONI_MEMBERS")
    if not text:
        return None
    from gateway.patroni import parse_members

    try:
        return parse_members(text, shards)
    except ValueError as exc:
        raise SystemExit(f"{command}: {exc}") from None


def cmd_gateway_worker(args: argparse.Namespace) -> int:
    from gateway.server import serve

    config = _gateway_config(args, "gateway-worker")
    _setup_logging()
    serve(config, args.host, args.port)
    return 0


def cmd_notifier(args: argparse.Namespace) -> int:
    import uvloop

    from notify.service import run_notifier

    dsns = list(args.dsn or []) or _split_dsns(os.environ.get(ENV_DSNS))
    _require_dsn_passwords("notifier", dsns)
    if not 1 <= args.webhook_max_age_h <= 24 * 30:
        raise SystemExit("notifier: --webhook-max-age-h must be between 1 and 720")
    _setup_logging(verbose=True)
    uvloop.run(
        run_notifier(dsns, allow_private=args.webhooks_allow_private, max_age_s=int(args.webhook_max_age_h * 3600))
    )
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import uvloop

    from quickpay.monitor import run_monitor

    dsns = list(args.dsn or []) or _split_dsns(os.environ.get(ENV_DSNS))
    # The monitor reads the databases only: it checks the secrets it is given.
    _require_dsn_passwords("monitor", dsns)
    if os.environ.get(ENV_CLUSTER_SECRET) is not None:
        _require_secrets("monitor", {ENV_CLUSTER_SECRET: os.environ[ENV_CLUSTER_SECRET]})
    _setup_logging(verbose=True)
    uvloop.run(run_monitor(dsns))
    return 0
