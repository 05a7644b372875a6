"""`python -m quickpay.cli ...`: the `quickpay` command (how `up` starts its processes)."""

from __future__ import annotations

import sys

from quickpay.cli import main

if __name__ == "__main__":
    sys.exit(main())
