"""`quickpay secrets`, and the checks every process makes of the secrets it is given."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from quickpay.cli.common import ENV_CLUSTER_SECRET

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
