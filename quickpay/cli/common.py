"""What the commands share: the environment variables they read, the limits their flags
check (the shared ones come from kernel.limits), and how DSNs and address lists are given."""

from __future__ import annotations

import argparse
import logging
import os

from kernel.limits import BATCH_ITEMS_MAX

ENV_DSNS = "QUICKPAY_DSNS"
ENV_SHARD_ADDRS = "QUICKPAY_SHARD_ADDRS"
ENV_SUPERVISOR_STATUS = "QUICKPAY_SUPERVISOR_STATUS"
ENV_CLUSTER_SECRET = "QUICKPAY_CLUSTER_SECRET"
# The most the document allows (kernel.limits, which the gateway enforces): a stack may lower it.
BATCH_ITEMS_MAX_DEFAULT = BATCH_ITEMS_MAX
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
