"""`quickpay prometheus config` (a scrape configuration for a running `quickpay up`) and
`quickpay prometheus postgres-exporter` (Debian's PostgreSQL exporter against its embedded
PostgreSQL). The configuration itself is quickpay/prometheus.py's."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def cmd_prometheus_config(args: argparse.Namespace) -> int:
    from quickpay import prometheus

    state_dir = Path(args.state_dir)
    token_file = Path(args.token_file) if args.token_file else state_dir / "admin.token"
    if not token_file.is_file():
        raise SystemExit(
            f"quickpay prometheus config: no admin token at {token_file} (start `quickpay up --state-dir "
            f"{state_dir}` first, or pass --token-file)"
        )
    rules = [Path(r) for r in args.rules] if args.rules else [prometheus.RULES_FILE]
    for rule_file in rules:
        if not rule_file.is_file():
            raise SystemExit(f"quickpay prometheus config: no rule file at {rule_file} (pass --rules)")
    try:
        config = prometheus.scrape_config(
            f"{args.host}:{args.port}",
            token_file,
            rules=rules,
            postgres_exporters=list(args.postgres_exporter or []),
            scrape_interval_s=args.scrape_interval_s,
        )
    except ValueError as exc:
        raise SystemExit(f"quickpay prometheus config: {exc}") from None
    text = prometheus.render(config)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_prometheus_postgres_exporter(args: argparse.Namespace) -> int:
    from quickpay import prometheus

    try:
        argv, env = prometheus.postgres_exporter_env(Path(args.state_dir), args.listen)
    except ValueError as exc:
        raise SystemExit(f"quickpay prometheus postgres-exporter: {exc}") from None
    if shutil.which(argv[0]) is None:
        raise SystemExit(
            f"quickpay prometheus postgres-exporter: {argv[0]} is not installed (as root: scripts/install-prometheus)"
        )
    os.execvpe(argv[0], argv, {**os.environ, **env})  # replaces this process; never returns


def add_prometheus_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from quickpay import prometheus

    prom = sub.add_parser("prometheus", help="scrape configuration and PostgreSQL exporter for Prometheus")
    prom_sub = prom.add_subparsers(dest="prometheus_command", required=True)
    config = prom_sub.add_parser("config", help="print a Prometheus configuration scraping a running `quickpay up`")
    config.add_argument("--state-dir", default="./.quickpay", help="the stack's state directory (its admin.token)")
    config.add_argument("--host", default="127.0.0.1", help="the gateway's address (default 127.0.0.1)")
    config.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")
    config.add_argument("--token-file", help="the admin token's file (default STATE_DIR/admin.token)")
    config.add_argument("--rules", action="append", help=f"a rule file, repeatable (default {prometheus.RULES_FILE})")
    config.add_argument(
        "--postgres-exporter",
        action="append",
        metavar="HOST:PORT",
        help="a prometheus-postgres-exporter to scrape too, repeatable",
    )
    config.add_argument(
        "--scrape-interval-s",
        type=int,
        default=prometheus.SCRAPE_INTERVAL_S_DEFAULT,
        help=f"scrape and rule-evaluation interval, {prometheus.SCRAPE_INTERVAL_S_MIN}-"
        f"{prometheus.SCRAPE_INTERVAL_S_MAX} s (default {prometheus.SCRAPE_INTERVAL_S_DEFAULT})",
    )
    config.add_argument("--out", help="write here instead of standard output")
    config.set_defaults(func=cmd_prometheus_config)
    exporter = prom_sub.add_parser(
        "postgres-exporter", help="run prometheus-postgres-exporter against the stack's embedded PostgreSQL"
    )
    exporter.add_argument("--state-dir", default="./.quickpay", help="the stack's state directory")
    exporter.add_argument("--listen", default="127.0.0.1:9187", help="HOST:PORT to serve on (default 127.0.0.1:9187)")
    exporter.set_defaults(func=cmd_prometheus_postgres_exporter)
