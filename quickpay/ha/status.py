"""The HA topology's readiness and status: each member's REST API, each shard's leader and lag,
whether its leader can commit (`quickpay ha status`)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from quickpay.ha.layout import Layout
from quickpay.ha.settings import (
    REST_TIMEOUT_S,
    SCOPE_PREFIX,
    WRITABLE_TIMEOUT_S,
    Member,
)


class Status(Layout):
    """What the members say: roles, leaders, lag, writability."""

    # ---- readiness and status ------------------------------------------------------------
    def rest(self, member: Member, path: str) -> tuple[int, Any]:
        """GET one member's Patroni REST API: (status, JSON body); (0, error) if it did not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{member.rest_port}{path}", timeout=REST_TIMEOUT_S
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, None
        except (OSError, ValueError) as exc:
            return 0, str(exc)

    def cluster_view(self, shard: int, *, avoid: str | None = None) -> dict[str, Any] | None:
        """Patroni's /cluster for the shard (members, roles, state, lag, timeline), from the
        first member that answers (`avoid` asked last); None if none does."""
        for member in sorted(self.shard_members(shard), key=lambda m: m.name == avoid):
            status, body = self.rest(member, "/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return None

    def status(self) -> dict[str, Any]:
        shards = []
        for shard in range(self.shards):
            view = self.cluster_view(shard)
            by_name = {m["name"]: m for m in (view or {}).get("members", [])}
            members = []
            for member in self.shard_members(shard):
                seen = by_name.get(member.name, {})
                members.append(
                    {
                        "member": member.name,
                        "pg_port": member.pg_port,
                        "rest_port": member.rest_port,
                        "role": seen.get("role", "unknown"),
                        "state": seen.get("state", "unreachable"),
                        "timeline": seen.get("timeline"),
                        "lag_bytes": _lag(seen.get("lag")),
                    }
                )
            shards.append(
                {
                    "shard": shard,
                    "scope": f"{SCOPE_PREFIX}{shard}",
                    "members": members,
                    "leader": next((m["member"] for m in members if m["role"] in ("leader", "primary")), None),
                    "synchronous": [m["member"] for m in members if m["role"] == "sync_standby"],
                }
            )
        return {"etcd": f"127.0.0.1:{self.etcd_client_port}", "shards": shards}

    def writable(self, shard: int) -> bool:
        """Whether the shard's leader commits: ledger.writable's probe (a transaction that
        needs its synchronous standby's acknowledgement, strict mode), each host tried; the
        connection is closed, never the wait cancelled, when it does not commit in time."""
        import asyncio

        from ledger.writable import NoWritableHost, connect_writable

        async def probe() -> None:
            conn, _ = await connect_writable(self.dsn(shard, "postgres"), connect_timeout_s=3.0)
            await conn.close()

        try:
            asyncio.run(probe())
            return True
        except (TimeoutError, NoWritableHost, OSError):
            return False
        except Exception:
            return False

    def wait_writable(self, supervisor: Any, timeout_s: float = WRITABLE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(range(self.shards))
        while pending:
            for shard in sorted(pending):
                if self.writable(shard):
                    pending.discard(shard)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"quickpay up --ha: shards {sorted(pending)} had no writable leader "
                    f"with a synchronous standby within {timeout_s:.0f}s; see {self.dir}/*/patroni.log"
                )
            supervisor.poll_once()
            time.sleep(0.5)

    def create_databases(self) -> None:
        from quickpay.embedded_pg import BIN_PATH, shard_database

        psql = str(BIN_PATH / "psql")
        for shard in range(self.shards):
            name = shard_database(shard)
            existing = subprocess.run(
                [psql, self.dsn(shard, "postgres"), "-tAc", "SELECT datname FROM pg_database"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            if name not in existing:
                subprocess.run(
                    [psql, self.dsn(shard, "postgres"), "-qc", f'CREATE DATABASE "{name}"'],
                    check=True,
                    capture_output=True,
                    text=True,
                )


def _lag(value: Any) -> int | None:
    """Patroni reports lag in bytes, or "unknown"; None when it has none."""
    return value if isinstance(value, int) else None


def format_status(status: dict[str, Any]) -> str:
    lines = [f"etcd {status['etcd']}"]
    for shard in status["shards"]:
        if shard["synchronous"]:
            standby = "synchronous standby " + ", ".join(shard["synchronous"])
        elif shard["leader"]:
            # Strict mode: until Patroni names one, any streaming standby must acknowledge.
            standby = "synchronous standby not named yet (commits wait for any standby meanwhile)"
        else:
            standby = "no synchronous standby"
        lines.append(f"shard {shard['shard']} ({shard['scope']}): leader {shard['leader'] or 'NONE'}, {standby}")
        for m in shard["members"]:
            lag = "" if m["lag_bytes"] is None else f", lag {m['lag_bytes']} bytes"
            lines.append(
                f"  {m['member']:<10} {m['role']:<13} {m['state']:<10} timeline {m['timeline']}"
                f"{lag}  (postgres 127.0.0.1:{m['pg_port']}, patroni 127.0.0.1:{m['rest_port']})"
            )
    return "\n".join(lines)
