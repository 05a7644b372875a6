"""Entry point of a Patroni member container in docker-compose.ha.yml (image: Dockerfile.patroni).

    patroni_member.py                    write /tmp/patroni.yml from the environment, then exec Patroni
    patroni_member.py post-bootstrap DSN Patroni's post_bootstrap hook: create the shard's database

The cluster-wide settings are `quickpay.ha.dcs_settings()`, the very ones `quickpay up --ha`
uses, and the member settings follow `quickpay.ha.HaCluster.patroni_config()` (scram for
every connection, the `replicator` replication role, a password on the REST API's write
endpoints, etcd's root user, fast-checkpoint base backups, pg_rewind). What differs is what a
container needs: addresses are service names on the compose network instead of loopback
ports, the data directory is the member's volume, and the configuration file (it holds the
passwords) is written to the container's private /tmp (tmpfs, 0600). Patroni itself is started
without the secrets in its environment.

Environment (docker-compose.ha.yml sets it):
    QUICKPAY_SHARD                  the shard this member serves (scope quickpay-shard-N)
    QUICKPAY_HA_MEMBER              its name, which is also its host name on the network
    QUICKPAY_HA_MEMBERS             members in the shard (for dcs_settings)
    QUICKPAY_ETCD_HOSTS             etcd's client endpoints, host:port, comma-separated
    POSTGRES_PASSWORD               the `postgres` superuser (also pg_rewind's user)
    QUICKPAY_REPLICATION_PASSWORD   the replication role
    QUICKPAY_PATRONI_PASSWORD       Patroni's REST API (write endpoints)
    QUICKPAY_ETCD_PASSWORD          etcd's root user
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quickpay.embedded_pg import BIN_PATH, shard_database
from quickpay.ha import MEMBERS_MAX, MEMBERS_MIN, NAMESPACE, REPLICATION_USER, REST_USER, SCOPE_PREFIX, dcs_settings

__all__ = ["CONFIG_PATH", "SECRET_VARIABLES", "main", "member_config"]

CONFIG_PATH = Path("/tmp/patroni.yml")
DATA_DIR = "/var/lib/postgresql/data"  # inside the member's volume (/var/lib/postgresql)
SOCKET_DIR = "/tmp"  # the container's own tmpfs: no other process sees it
PG_PORT = 5432
REST_PORT = 8008
# Written into the configuration file only; Patroni is started without them in its environment.
SECRET_VARIABLES = (
    "POSTGRES_PASSWORD",
    "QUICKPAY_REPLICATION_PASSWORD",
    "QUICKPAY_PATRONI_PASSWORD",
    "QUICKPAY_ETCD_PASSWORD",
)
# Every peer on the (internal) compose network authenticates with a password.
PG_HBA = [
    "local all all scram-sha-256",
    "host all all all scram-sha-256",
    f"host replication {REPLICATION_USER} all scram-sha-256",
]


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SystemExit(f"patroni_member: {name} is not set (docker-compose.ha.yml passes it from .env)")
    return value


def member_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The member's Patroni configuration, from its environment (no I/O)."""
    shard = int(_require(env, "QUICKPAY_SHARD"))
    name = _require(env, "QUICKPAY_HA_MEMBER")
    members = int(_require(env, "QUICKPAY_HA_MEMBERS"))
    if not MEMBERS_MIN <= members <= MEMBERS_MAX:
        raise SystemExit(f"patroni_member: QUICKPAY_HA_MEMBERS must be between {MEMBERS_MIN} and {MEMBERS_MAX}")
    etcd_hosts = [h.strip() for h in _require(env, "QUICKPAY_ETCD_HOSTS").split(",") if h.strip()]
    superuser = {"username": "postgres", "password": _require(env, "POSTGRES_PASSWORD")}
    return {
        "scope": f"{SCOPE_PREFIX}{shard}",
        "namespace": NAMESPACE,
        "name": name,
        # Warnings, and what pg_rewind did (a rejoining old primary), as `up --ha` logs.
        "log": {"level": "WARNING", "loggers": {"patroni.postgresql.rewind": "INFO"}},
        "restapi": {
            "listen": f"0.0.0.0:{REST_PORT}",
            "connect_address": f"{name}:{REST_PORT}",
            "authentication": {"username": REST_USER, "password": _require(env, "QUICKPAY_PATRONI_PASSWORD")},
        },
        "etcd3": {"hosts": etcd_hosts, "username": "root", "password": _require(env, "QUICKPAY_ETCD_PASSWORD")},
        "bootstrap": {
            "dcs": dcs_settings(members),
            "initdb": [{"encoding": "UTF8"}, {"auth-local": "scram-sha-256"}, {"auth-host": "scram-sha-256"}],
            # The shard's database, once, on the member that initialises the cluster (Patroni runs
            # it before it turns synchronous replication on, with synchronous_commit=local).
            "post_bootstrap": f"{sys.executable} {Path(__file__).resolve()} post-bootstrap",
        },
        "postgresql": {
            "listen": f"0.0.0.0:{PG_PORT}",
            "connect_address": f"{name}:{PG_PORT}",
            "data_dir": DATA_DIR,
            "bin_dir": str(BIN_PATH),
            "pgpass": "/tmp/pgpass",
            "use_unix_socket": True,
            "authentication": {
                "superuser": superuser,
                "replication": {
                    "username": REPLICATION_USER,
                    "password": _require(env, "QUICKPAY_REPLICATION_PASSWORD"),
                },
                "rewind": dict(superuser),
            },
            "parameters": {"unix_socket_directories": SOCKET_DIR, "unix_socket_permissions": "0700"},
            "pg_hba": PG_HBA,
            "create_replica_methods": ["basebackup"],
            "basebackup": [{"checkpoint": "fast"}],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def post_bootstrap(dsn: str) -> int:
    """Create the shard's database (Patroni passes a DSN and PGPASSFILE)."""
    name = shard_database(int(_require(os.environ, "QUICKPAY_SHARD")))
    result = subprocess.run(
        [str(BIN_PATH / "psql"), dsn, "-v", "ON_ERROR_STOP=1", "-qc", f'CREATE DATABASE "{name}"'],
        stdin=subprocess.DEVNULL,
    )
    return result.returncode


def main(argv: list[str]) -> int:
    if argv[:1] == ["post-bootstrap"]:
        return post_bootstrap(argv[-1])
    if argv:
        raise SystemExit(f"patroni_member: unknown arguments {argv}")
    import yaml

    from quickpay.config import write_private_file

    write_private_file(CONFIG_PATH, yaml.safe_dump(member_config(os.environ), sort_keys=False), replace=True)
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    os.execve(sys.executable, [sys.executable, "-m", "patroni", str(CONFIG_PATH)], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
