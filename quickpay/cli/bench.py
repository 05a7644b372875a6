"""`quickpay seed`, `quickpay bench`, `quickpay soak`: populations and load against a running stack."""

from __future__ import annotations

import argparse


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
