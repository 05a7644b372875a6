"""What the commands share: the environment variables they read, the limits their flags
check, and how DSNs and address lists are given."""

from __future__ import annotations

import argparse
import logging
import os

ENV_DSNS = "QUICKPAY_DSNS"
ENV_SHARD_ADDRS = "QUICKPAY_SHARD_ADDRS"
ENV_SUPERVISOR_STATUS = "QUICKPAY_SUPERVISOR_STATUS"
ENV_CLUSTER_SECRET = "QUICKPAY_CLUSTER_SECRET"
# gateway.schemas.BATCH_ITEMS_MAX, the most the document allows (not imported here: the
# parser is built without the gateway's modules; tests/test_cli.py checks they agree).
BATCH_ITEMS_MAX_DEFAULT = 1000
RATE_LIMIT_RPS_DEFAULT = 10_000.0
RATE_LIMIT_BURST_DEFAULT = 20_000.0
RATE_LIMIT_MAX = 10_000_000
RATE_LIMIT_WORKERS_MAX = 1024


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
