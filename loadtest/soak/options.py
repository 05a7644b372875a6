"""`quickpay soak`'s options and bounds: the duration, the traffic mix, the hostile classes."""

from __future__ import annotations

import argparse
import re

DURATION_MIN_S = 5.0
DURATION_MAX_S = 24 * 3600.0
INFLIGHT_MAX = 2_000  # requests in flight at once; a send beyond it is skipped and counted
DRAIN_S = 60.0  # after the timetable: how long in-flight requests may still take
CONNECTIONS_MAX = 256
TOKEN_REFRESH_S = 1800.0  # tokens live an hour (gateway.auth.TOKEN_TTL_S)
PAYMENTS_KEPT = 200  # per partner, for refunds and reads
EXAMPLES_MAX = 5

# Well-behaved traffic: operation -> weight.
GOOD_MIX: dict[str, int] = {
    "pay": 30,
    "batch": 4,
    "refund": 6,
    "agreement": 4,
    "balance": 10,
    "transactions": 8,
    "agreements_list": 6,
    "get_payment": 8,
    "events": 12,
    "recon": 3,
    "webhooks_list": 2,
}
HOSTILE_CLASSES = [
    "timestamps",
    "non_nfc",
    "amounts",
    "oversized",
    "long_paths",
    "batch_items",
    "pending",
    "control_text",
    "rate_burst",
]


def parse_duration(text: str) -> float:
    """ "10m", "60s", "1h", "90" (seconds) -> seconds, within [DURATION_MIN_S, DURATION_MAX_S]."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is a number with s, m or h (60s, 10m)")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not DURATION_MIN_S <= seconds <= DURATION_MAX_S:
        raise argparse.ArgumentTypeError(f"the duration is {DURATION_MIN_S:g} s to {DURATION_MAX_S / 3600:g} h")
    return seconds


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=parse_duration, default=600.0, help="how long to drive traffic (default 10m)")
    p.add_argument("--partners", type=int, default=150, help="partners, hostile ones included (default 150)")
    p.add_argument("--hostile", type=int, default=10, help="of them, partners sending bad input (default 10)")
    p.add_argument(
        "--rate",
        type=float,
        default=150.0,
        help="operations per second offered in total, spread evenly over the partners (default 150)",
    )
    p.add_argument("--customers-per-partner", type=int, default=4, help="funded customers per partner (default 4)")
    p.add_argument("--batch-items", type=int, default=10, help="payments per well-behaved batch (default 10)")
    p.add_argument(
        "--webhook-every",
        type=int,
        default=3,
        help="every N-th well-behaved partner registers a webhook endpoint (default 3)",
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="per request (default 30)")
    p.add_argument("--url", help="soak a running stack (give its --state-dir too); default: start one")
    p.add_argument(
        "--state-dir",
        help="the running stack's state (with --url), or where to start one (default OUT/state, emptied first)",
    )
    p.add_argument("--port", type=int, default=0, help="port of the stack started here (default: a free one)")
    p.add_argument("--shards", type=int, default=2, help="shards of the stack started here (default 2)")
    p.add_argument("--workers", type=int, default=2, help="gateway workers of the stack started here (default 2)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the traffic mix (default 1)")
    p.add_argument("--out", default="soak-out", help="report directory (default soak-out)")


def validate(args: argparse.Namespace) -> None:
    problems = []
    if not 2 <= args.partners <= 1000:
        problems.append("--partners must be between 2 and 1000")
    if not 0 <= args.hostile < args.partners:
        problems.append("--hostile must be at least 0 and less than --partners")
    if not 0.1 <= args.rate <= 5000:
        problems.append("--rate must be between 0.1 and 5000 operations/s")
    if not 1 <= args.customers_per_partner <= 1000:
        problems.append("--customers-per-partner must be between 1 and 1000")
    if not 1 <= args.batch_items <= 1000:
        problems.append("--batch-items must be between 1 and 1000")
    if not 1 <= args.webhook_every <= 1000:
        problems.append("--webhook-every must be between 1 and 1000")
    if not 1 <= args.timeout_s <= 300:
        problems.append("--timeout-s must be between 1 and 300")
    if args.url and not args.state_dir:
        problems.append("--url needs the stack's --state-dir (admin token, shard sockets, databases)")
    if args.url and not re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?/?$", args.url):
        problems.append("--url must be a loopback http:// address (the soak never leaves the machine)")
    if problems:
        raise SystemExit("quickpay soak: " + "; ".join(problems))
