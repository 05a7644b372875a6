"""The admin API as `quickpay fraud` and `quickpay partners` call it: the admin token (from
QUICKPAY_ADMIN_TOKEN or the state directory), and a call whose answer is printed as JSON (an
error's body on stderr, and exit status 1)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["admin_token", "call_admin"]


def admin_token(state_dir: str) -> str:
    """QUICKPAY_ADMIN_TOKEN, or the state directory's admin.token; SystemExit if neither."""
    from quickpay.config import StateDir

    token_file = StateDir(state_dir).path / "admin.token"
    token = os.environ.get("QUICKPAY_ADMIN_TOKEN") or (token_file.read_text().strip() if token_file.exists() else None)
    if not token:
        raise SystemExit(
            f"no admin token: {token_file} does not exist and QUICKPAY_ADMIN_TOKEN is not set; "
            "give the stack's --state-dir"
        )
    return token


def call_admin(url: str, request: Callable[[], Any], *, show: Callable[[Any], str] | None = None) -> tuple[int, Any]:
    """Run `request` (calls of the admin API at `url`) and print its answer as JSON (or as
    `show` renders it): (0, the answer). An error answer's body goes to stderr as JSON: (1, None). No stack answering at
    `url`: SystemExit."""
    import urllib.error

    from quickpay.httpclient import ApiCallError

    try:
        result = request()
    except ApiCallError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return 1, None
    except urllib.error.URLError as exc:
        raise SystemExit(
            f"no quickpay stack answered at {url} ({exc.reason}); start it with `quickpay up` or give --url"
        ) from None
    print(json.dumps(result, indent=2) if show is None else show(result))
    return 0, result
