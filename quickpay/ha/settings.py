"""`up --ha`'s fixed settings: member counts, Patroni's timings (`dcs_settings`), users and
namespaces, and the tools it needs (etcd)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMBERS_DEFAULT = 3
MEMBERS_MIN = 2
MEMBERS_MAX = 5
# Patroni's smallest allowed leader-key TTL (it refuses less): a frozen or partitioned leader
# keeps its key this long after its last renewal, so a partition is noticed after ~TTL_S.
TTL_S = 20
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 5  # loop_wait + 2 * retry_timeout <= ttl (Patroni's rule)
WRITABLE_TIMEOUT_S = 180.0  # `up --ha`: until every shard's leader can commit
REST_TIMEOUT_S = 1.5
REPLICATION_USER = "replicator"
REST_USER = "quickpay"
_LONGEST_SOCKET = ".s.PGSQL.65535"
SCOPE_PREFIX = "quickpay-shard-"
NAMESPACE = "/quickpay/"


@dataclass(frozen=True)
class Member:
    shard: int
    name: str
    pg_port: int
    rest_port: int


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def is_ha_state(state_path: Path) -> bool:
    return (Path(state_path) / "ha" / "layout.json").exists()


def dcs_settings(members: int) -> dict[str, Any]:
    """Patroni's cluster-wide settings (bootstrap.dcs): the same for the local stack and compose."""
    return {
        "ttl": TTL_S,
        "loop_wait": LOOP_WAIT_S,
        "retry_timeout": RETRY_TIMEOUT_S,
        # An acknowledged commit is on a synchronous standby too; never commit alone.
        "synchronous_mode": True,
        "synchronous_mode_strict": True,
        "synchronous_node_count": 1,
        # A crashed primary fails over at once instead of being restarted in place (its
        # standby already has every acknowledged commit).
        "primary_start_timeout": 0,
        # One etcd here: while it is unreachable a leader that still sees every member keeps
        # its role instead of demoting (Patroni's failsafe mode).
        "failsafe_mode": True,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": {
                "fsync": "on",
                "synchronous_commit": "on",
                "full_page_writes": "on",
                "wal_level": "replica",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "512MB",
                "max_connections": 200,
                "shared_buffers": "256MB",
                "max_wal_size": "4GB",
                "checkpoint_timeout": "15min",
                "wal_buffers": "16MB",
                "password_encryption": "scram-sha-256",
                "log_min_messages": "warning",
                # A backend whose client went away keeps waiting for its synchronous standby
                # (PostgreSQL's default, stated here because it matters): a cut-off primary's
                # unacknowledged commit then never becomes visible there (a cancelled wait would
                # make it visible locally). See ARCHITECTURE.md, "Two sites".
                "client_connection_check_interval": 0,
                # A hung (not crashed) standby is dropped after 5 s, so Patroni can name
                # another synchronous standby instead of every commit waiting for 60 s.
                "wal_sender_timeout": "5s",
                # A registered but broken member's slot may not keep WAL without bound.
                "max_slot_wal_keep_size": "10GB",
            },
        },
    }


PG_HBA = [
    "local all all scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
    f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
]


def ensure_tools() -> Path:
    """etcd's binary: on PATH, or installed by scripts/install-ha-deps (as root)."""
    found = shutil.which("etcd")
    if found:
        return Path(found)
    script = Path(__file__).resolve().parents[2] / "scripts" / "install-ha-deps"
    if os.geteuid() != 0 or not script.exists():
        raise SystemExit(
            f"quickpay up --ha needs etcd (Debian: apt-get install etcd-server); as root, {script} installs it"
        )
    print("quickpay: installing etcd (scripts/install-ha-deps)", flush=True)
    subprocess.run(["bash", str(script)], check=True, stdin=subprocess.DEVNULL)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("scripts/install-ha-deps ran but etcd is still not on PATH")
    return Path(found)
