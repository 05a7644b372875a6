"""`quickpay up`: start PostgreSQL (embedded, given, or Patroni clusters with --ha), the shard
workers or nodes, the gateway workers, the monitor and the notifier, supervised."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from kernel.limits import PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_HA_DEFAULT, PIPELINE_DEPTH_MAX, RATE_LIMIT_MAX
from kernel.slots import compatible_shard_count
from ledger.slot_map_store import no_slots_notice
from quickpay.cli.common import (
    BATCH_ITEMS_MAX_DEFAULT,
    ENV_CLUSTER_SECRET,
    ENV_SUPERVISOR_STATUS,
    _dsns_from,
    _split,
)
from quickpay.cli.secrets import _require_secrets

PG_READY_TIMEOUT_S = 120.0


def pipeline_depth(args: argparse.Namespace) -> int:
    """The shard workers' --pipeline-depth: the flag, else the default for this topology."""
    if getattr(args, "pipeline_depth", None) is not None:
        return int(args.pipeline_depth)
    return PIPELINE_DEPTH_HA_DEFAULT if getattr(args, "ha", False) else PIPELINE_DEPTH_DEFAULT


def _embedded(state_path: Path, shards: int) -> tuple[Any, list[str]]:
    from quickpay.embedded_pg import EmbeddedPostgres, shard_database

    pg = EmbeddedPostgres(state_path)
    pg.start()
    names = [shard_database(i) for i in range(shards)]
    pg.create_databases(names)
    return pg, [pg.dsn(n) for n in names]


def _resolve_dsns(args: argparse.Namespace, state: Any) -> tuple[Any, list[str]]:
    dsns = _dsns_from(args)
    if dsns:
        if len(dsns) != args.shards:
            raise SystemExit(f"got {len(dsns)} DSNs for --shards {args.shards}: give one --dsn per shard")
        return None, dsns
    return _embedded(state.path, args.shards)


def _supervised_postgres(state_path: Path, shards: int) -> tuple[Any, Any, list[str]]:
    """The embedded PostgreSQL as a supervised child (foreground postmaster), its DSNs."""
    import signal

    from quickpay.embedded_pg import EmbeddedPostgres, shard_database
    from quickpay.supervisor import Child

    pg = EmbeddedPostgres(state_path)
    if pg.is_running():
        # Left running by `check` or `up --keep-db`: restart it under supervision.
        print("quickpay: stopping the embedded PostgreSQL left running, to supervise it", flush=True)
        pg.stop()
    pg.prepare_foreground()
    child = Child(
        "postgres",
        pg.postmaster_argv(),
        user=pg.run_as,
        stop_signal=signal.SIGINT,
        stop_last=True,
        before_start=pg.before_foreground_start,
        output=pg.log_file,
    )
    return pg, child, [pg.dsn(shard_database(i)) for i in range(shards)]


def _wait_postgres(supervisor: Any, pg: Any, child: Any) -> None:
    """Until the supervised postmaster accepts connections (restarting it if it dies)."""
    import time

    deadline = time.monotonic() + PG_READY_TIMEOUT_S
    while not pg.accepting():
        if time.monotonic() > deadline:
            tail = pg.log_file.read_text(errors="replace")[-3000:] if pg.log_file.exists() else ""
            raise SystemExit(
                f"quickpay up: PostgreSQL did not accept connections within "
                f"{PG_READY_TIMEOUT_S:.0f}s (exits: {child.failures}); {pg.log_file}:\n{tail}"
            )
        supervisor.poll_once()
        time.sleep(0.1)


def cmd_up(args: argparse.Namespace) -> int:
    from quickpay.config import StateDir
    from quickpay.embedded_pg import shard_database
    from quickpay.httpclient import Api, ready_consecutive, wait_ready
    from quickpay.supervisor import Child, Supervisor

    _validate_common(args)
    _refuse_busy_port(args.host, args.port)
    state = StateDir(args.state_dir).ensure()
    state.check_topology(args.shards)
    # Secrets reach children through the environment, never argv (visible in ps).
    cluster_env = {ENV_CLUSTER_SECRET: state.cluster_secret}
    status_path = state.path / "supervisor.json"
    secrets_env = {
        "QUICKPAY_TOKEN_KEY": state.token_key.decode(),
        "QUICKPAY_ADMIN_TOKEN": state.admin_token,
        **cluster_env,
    }
    _require_secrets("quickpay up", secrets_env)
    pg: Any = None
    pg_child: Any = None
    ha: Any = None
    _check_ha_choice(args, state.path)
    if args.ha:
        from quickpay.ha import HaCluster

        ha = HaCluster(state.path, args.shards, args.ha_members)
        ha.prepare()
        ha_children = ha.children()
        dsns = ha.dsns()
    elif _dsns_from(args) or args.keep_db:
        # Given DSNs: their servers are not ours. --keep-db: the server must outlive `up`,
        # so it runs daemonised (pg_ctl) and unsupervised, as it did before.
        pg, dsns = _resolve_dsns(args, state)
    else:
        pg, pg_child, dsns = _supervised_postgres(state.path, args.shards)
    addresses = _split(args.shard_listen) or [state.shard_socket(i) for i in range(args.shards)]
    gateway_addresses = _split(args.gateway_shard_addrs) or addresses
    relay_addresses = _split(args.relay_shard_addrs) or addresses
    for flag, given in (
        ("--shard-listen", addresses),
        ("--gateway-shard-addrs", gateway_addresses),
        ("--relay-shard-addrs", relay_addresses),
    ):
        if len(given) != args.shards:
            raise SystemExit(f"quickpay up: {flag} must list {args.shards} addresses")
    python = [sys.executable, "-m", "quickpay.cli"]
    children = []
    node = args.topology == "node"
    # The gateway processes' Prometheus counters, shared (prometheus-client multiprocess
    # mode): emptied at every start, so a scrape counts this run.
    metrics_dir = state.run_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(mode=0o700)
    metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for shard in range(args.shards):
        argv = [
            *python,
            "node" if node else "shard-worker",
            "--shard",
            str(shard),
            "--shards",
            str(args.shards),
            "--dsn",
            dsns[shard],
            "--listen",
            addresses[shard],
            "--shard-addrs",
            ",".join(relay_addresses),
            "--batch-size-max",
            str(args.batch_size_max),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
            "--pipeline-depth",
            str(pipeline_depth(args)),
            "--refund-window-days",
            str(args.refund_window_days),
            "--pending-expiry-s",
            str(args.pending_expiry_s),
            "--pending-per-account-max",
            str(args.pending_per_account_max),
            "--pending-per-partner-max",
            str(args.pending_per_partner_max),
        ]
        if args.rules:
            argv += ["--rules", str(Path(args.rules).resolve())]
        if args.no_rules:
            argv.append("--no-rules")
        if args.ledger_mode != "batched":
            argv += ["--ledger-mode", args.ledger_mode]
        if node:
            argv += [
                "--host",
                args.host,
                "--port",
                str(args.port),
                "--batch-items-max",
                str(args.batch_items_max),
                *_rate_limit_argv(args, worker=shard, workers=args.shards),
                *(["--webhooks-allow-private"] if _allow_private(args) else []),
            ]
            children.append(
                Child(
                    f"node-{shard}", argv, env={**secrets_env, **metrics_env, ENV_SUPERVISOR_STATUS: str(status_path)}
                )
            )
            continue
        children.append(Child(f"shard-{shard}", argv, env=cluster_env))
    for worker in range(0 if node else args.workers):
        # One gateway worker down is not an outage: the others share the port.
        children.append(
            Child(
                f"gateway-{worker}",
                [
                    *python,
                    "gateway-worker",
                    "--host",
                    args.host,
                    "--port",
                    str(args.port),
                    "--shard-addrs",
                    ",".join(gateway_addresses),
                    "--batch-items-max",
                    str(args.batch_items_max),
                    *_rate_limit_argv(args, worker=worker, workers=args.workers),
                    *(["--webhooks-allow-private"] if _allow_private(args) else []),
                ],
                env={**secrets_env, **metrics_env, ENV_SUPERVISOR_STATUS: str(status_path)},
                needed=False,
            )
        )
    if not args.no_monitor:
        children.append(Child("monitor", [*python, "monitor", "--dsn", *dsns], needed=False))
    if not args.no_notifier:
        children.append(
            Child(
                "notifier",
                [
                    *python,
                    "notifier",
                    "--dsn",
                    *dsns,
                    "--webhook-max-age-h",
                    str(args.webhook_max_age_h),
                    *(["--webhooks-allow-private"] if _allow_private(args) else []),
                ],
                needed=False,
            )
        )
    databases = [pg_child] if pg_child is not None else (ha_children if ha is not None else [])
    supervisor = Supervisor(databases + children, status_path=status_path)
    base_url = f"http://{args.host}:{args.port}"
    try:
        if ha is not None:
            supervisor.start(ha_children[:1])  # etcd
            ha.secure_etcd()
            first, rest = ha.start_order(ha_children[1:])  # the Patroni members: last leaders first
            if first:
                supervisor.start(first)
                ha.wait_leaders([c.name.removeprefix("patroni-") for c in first], supervisor)
            supervisor.start(rest)
            ha.wait_writable(supervisor)
            ha.create_databases()
        if pg_child is not None:
            supervisor.start([pg_child])
            _wait_postgres(supervisor, pg, pg_child)
            pg.create_databases([shard_database(i) for i in range(args.shards)])
        supervisor.start(children)
        # Every gateway process ready, not only the first to answer (ready_consecutive).
        wait_ready(base_url, timeout_s=120, consecutive=ready_consecutive(args.shards if node else args.workers))
        print(
            f"quickpay is up at {base_url}: {args.shards} shards, "
            + (f"{args.shards} nodes (HTTP + shard each)" if node else f"{args.workers} gateway workers")
            + (", PostgreSQL supervised" if pg_child is not None else "")
            + (
                f", PostgreSQL on Patroni: {args.ha_members} members per shard, synchronous (quickpay ha status)"
                if ha is not None
                else ""
            ),
            flush=True,
        )
        print(f"admin token: {state.path / 'admin.token'}", flush=True)
        if not compatible_shard_count(args.shards):
            print(f"note: {no_slots_notice(args.shards)}", flush=True)
        if args.demo:
            from quickpay.demo import curl_example, seed_demo

            demo = seed_demo(Api(base_url, unavailable_retries=5), state.admin_token, args.shards, state.path)
            print(f"demo partner and accounts written to {state.path / 'demo.json'}", flush=True)
            print("make a quick-payment:\n" + curl_example(demo), flush=True)
        print("quickpay ready", flush=True)
        supervisor.run_until_signal()
    finally:
        if ha is not None:
            try:
                ha.order_shutdown(ha_children)
            except Exception as exc:
                print(f"quickpay: could not read the clusters' roles to stop standbys first: {exc}", flush=True)
        supervisor.stop()
        if ha is not None:
            left = ha.stop_orphans()
            if left:
                print(f"quickpay: stopped PostgreSQL left running by {', '.join(left)}", flush=True)
        if pg is not None and pg_child is None and not args.keep_db:
            pg.stop()
    return 0


def _check_ha_choice(args: argparse.Namespace, state_path: Path) -> None:
    """--ha and the state directory agree: data made by one topology is not silently
    ignored by the other."""
    from quickpay.ha import MEMBERS_MAX, MEMBERS_MIN, is_ha_state

    if args.ha:
        if _dsns_from(args) or args.keep_db:
            raise SystemExit("quickpay up --ha runs its own PostgreSQL clusters: no --dsn, no --keep-db")
        if not MEMBERS_MIN <= args.ha_members <= MEMBERS_MAX:
            raise SystemExit(f"quickpay up: --ha-members must be between {MEMBERS_MIN} and {MEMBERS_MAX}")
        if (state_path / "pg" / "PG_VERSION").exists():
            raise SystemExit(f"{state_path} holds a single-server PostgreSQL; --ha needs a new --state-dir")
    elif is_ha_state(state_path) and not _dsns_from(args):
        raise SystemExit(f"{state_path} was made by `quickpay up --ha`; start it with --ha")


def _refuse_busy_port(host: str, port: int) -> None:
    """Gateway workers bind with SO_REUSEPORT, which would silently share a port with
    another running stack; check first with a plain bind."""
    import socket

    with socket.socket() as probe:
        # SO_REUSEADDR: connections of a previous run in TIME_WAIT don't count; a live
        # listener still makes the bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"quickpay up: {host}:{port} is in use ({exc.strerror}); stop the other server or pick --port"
            ) from None


def _validate_common(args: argparse.Namespace) -> None:
    problems = []
    if not 1 <= args.shards <= 64:
        problems.append("--shards must be between 1 and 64")
    if not 1 <= args.workers <= 64:
        problems.append("--workers must be between 1 and 64")
    if not 0 < args.port < 65536:
        problems.append("--port must be a TCP port")
    if not 1 <= pipeline_depth(args) <= PIPELINE_DEPTH_MAX:
        problems.append(f"--pipeline-depth must be between 1 and {PIPELINE_DEPTH_MAX}")
    if not 1 <= args.batch_items_max <= BATCH_ITEMS_MAX_DEFAULT:
        problems.append(f"--batch-items-max must be between 1 and {BATCH_ITEMS_MAX_DEFAULT}")
    if not 0 < args.rate_limit_rps <= RATE_LIMIT_MAX or not 1 <= args.rate_limit_burst <= RATE_LIMIT_MAX:
        problems.append(
            f"--rate-limit-rps must be in (0, {RATE_LIMIT_MAX}] and --rate-limit-burst in [1, {RATE_LIMIT_MAX}]"
        )
    if args.rules and not Path(args.rules).is_file():
        problems.append(f"--rules {args.rules}: no such file")
    elif args.rules:
        # A shard worker given a file that does not build keeps its stored rules (it
        # never crash-loops on rule text); refusing here tells the operator at once.
        import fraud

        try:
            fraud.load_rules_file(args.rules)
        except (fraud.RuleError, OSError, UnicodeDecodeError) as exc:
            problems.append(f"--rules: {exc}")
    if problems:
        raise SystemExit("quickpay up: " + "; ".join(problems))


def _allow_private(args: argparse.Namespace) -> bool:
    """Webhooks to loopback/private addresses: only when asked, or for the demo's local receiver."""
    return bool(getattr(args, "webhooks_allow_private", False) or getattr(args, "demo", False))


def _rate_limit_argv(args: argparse.Namespace, *, worker: int, workers: int) -> list[str]:
    return [
        "--rate-limit-rps",
        str(args.rate_limit_rps),
        "--rate-limit-burst",
        str(args.rate_limit_burst),
        "--rate-limit-worker",
        str(worker),
        "--rate-limit-workers",
        str(workers),
    ]
