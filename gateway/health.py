"""Readiness (public) and health (admin): one assessment, two views.

The assessment pings every shard worker and reads the supervisor's status file
(quickpay.supervisor, under `quickpay up`). Its state is one of:

- "not ready" (/readyz 503): a shard worker does not answer or has not committed for a
  while, or a child the stack needs (PostgreSQL, a shard worker, a node) is down. The load
  balancer must take this gateway out.
- "degraded" (/readyz **200**, body {"status": "degraded"}): payments are served, but a
  background service is not doing its job: the notifier, the monitor, a gateway worker or
  a shard's relay is crash-looping (CRASH_LOOP_AFTER deaths in a row), a background child
  is down, a shard enforces an older fraud rule set than the active one, or the
  supervisor's status file cannot be read. 200, not 503: a crash-looping notifier must
  not take the payment API out of every load balancer; monitoring reads the status.
- "ready" (200): none of the above.

/readyz shows the state only. GET /admin/v1/health (admin token) shows the reasons and
the details: per shard (its error, fraud rule-set versions, relay supervision), every
supervised child (state, pid, restarts, crash loop, last exit), the background services
and the HA members (etcd, Patroni) when there are any.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

__all__ = [
    "BACKGROUND_SERVICES",
    "DEGRADED",
    "NOT_READY",
    "READY",
    "assess",
    "evaluate",
    "report_from",
    "service_restarts",
]

READY, DEGRADED, NOT_READY = "ready", "degraded", "not ready"
# The supervised background processes (quickpay up's children); the relay runs inside each
# shard worker and is supervised there (ledger/relay.py).
BACKGROUND_SERVICES = ("notifier", "monitor")
PING_TIMEOUT_S = 5.0


def _shard(index: int, answer: Any, error: str | None = None) -> dict[str, Any]:
    """One shard's part of the report, from its ping's answer (None and `error`: no answer)."""
    if error is not None:
        return {"shard": index, "ready": False, "error": error}
    shard: dict[str, Any] = {"shard": index, "ready": True}
    if not isinstance(answer, dict):
        return shard
    stalled = answer.get("commit_stalled_s")
    if stalled is not None:
        # Its database has not committed for a while (a failover under way): not ready,
        # though it still answers.
        shard.update(ready=False, error=f"no commit for {stalled} s (database failing over?)")
    # What the shard's fraud filter enforces (a stored version that does not build is
    # reported, not fatal: the shard enforces the last version that builds).
    shard["fraud"] = answer.get("fraud")
    shard["relay"] = answer.get("relay")
    return shard


async def _probe(index: int, client: Any) -> dict[str, Any]:
    try:
        answer = await asyncio.wait_for(client.call("ping"), PING_TIMEOUT_S)
    except Exception as exc:
        return _shard(index, None, str(exc) or type(exc).__name__)
    return _shard(index, answer)


def _is_ha_member(name: str) -> bool:
    return name == "etcd" or name.startswith("patroni-")


async def assess(
    clients: list[Any], supervisor_status: str | None, markers_read: set[int] | None = None
) -> dict[str, Any]:
    """The full health report; `status` is READY, DEGRADED or NOT_READY. `markers_read`: the
    shards whose partner cut-off markers this gateway process has read (until it has, it
    would take a disabled partner's tokens: it serves, but is not ready)."""
    shards = list(await asyncio.gather(*(_probe(i, c) for i, c in enumerate(clients))))
    if markers_read is not None:
        for shard in shards:
            if shard["ready"] and shard["shard"] not in markers_read:
                shard.update(ready=False, error="partner cut-off markers not read yet")
    return evaluate(shards, supervisor_status)


def report_from(pings: list[tuple[int, Any]], supervisor_status: str | None) -> dict[str, Any]:
    """The report from pings already made ((shard, answer or None), as /metrics has them)."""
    return evaluate(
        [_shard(i, answer, None if answer is not None else "no answer") for i, answer in pings], supervisor_status
    )


def evaluate(shards: list[dict[str, Any]], supervisor_status: str | None) -> dict[str, Any]:
    not_ready: list[str] = []
    degraded: list[str] = []
    for shard in shards:
        if not shard["ready"]:
            not_ready.append(f"shard {shard['shard']}: {shard.get('error')}")
            continue
        fraud = shard.get("fraud")
        if isinstance(fraud, dict) and fraud.get("degraded"):
            degraded.append(
                f"shard {shard['shard']}: its fraud rule set is degraded (enforces "
                f"{fraud.get('enforced_version')}, not the active {fraud.get('active_version')})"
            )
        relay = shard.get("relay")
        if isinstance(relay, dict) and relay.get("crash_looping"):
            degraded.append(
                f"shard {shard['shard']}: its relay is crash-looping "
                f"({relay.get('failures_in_a_row')} deaths in a row; last {relay.get('last_error')})"
            )
    report: dict[str, Any] = {"shards": shards}
    services: dict[str, Any] = {f"relay-{s['shard']}": s.get("relay") for s in shards}
    if supervisor_status:
        status = read_status(supervisor_status)
        if status is None:
            degraded.append(f"the supervisor's status file {supervisor_status} cannot be read")
            children: list[dict[str, Any]] = []
        else:
            children = [c for c in status.get("children", []) if isinstance(c, dict)]
            report["supervisor"] = {"pid": status.get("supervisor_pid"), "updated_at_ms": status.get("updated_at_ms")}
        for child in children:
            name = str(child.get("name"))
            if child.get("needed") and child.get("state") != "running":
                not_ready.append(f"{name} is {child.get('state')} (needed)")
            elif child.get("crash_looping"):
                degraded.append(
                    f"{name} is crash-looping: {child.get('failures_in_a_row')} deaths in a row, "
                    f"last exit {child.get('last_exit')}"
                )
            elif child.get("state") == "stopped":
                degraded.append(f"{name} is stopped")
        report["children"] = children
        report["ha_members"] = [c for c in children if _is_ha_member(str(c.get("name")))]
        for child in children:
            if child.get("name") in BACKGROUND_SERVICES:
                services[str(child["name"])] = child
    report["services"] = services
    report["status"] = NOT_READY if not_ready else DEGRADED if degraded else READY
    report["reasons"] = not_ready + degraded
    return report


def service_restarts(report: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    """(restarts, crash-looping) per supervised service: every child of the supervisor,
    and each shard's relay."""
    out: dict[str, tuple[int, bool]] = {}
    for child in report.get("children", []):
        out[str(child.get("name"))] = (int(child.get("restarts") or 0), bool(child.get("crash_looping")))
    for name, relay in report.get("services", {}).items():
        if name.startswith("relay-") and isinstance(relay, dict):
            out[name] = (int(relay.get("restarts") or 0), bool(relay.get("crash_looping")))
    return out


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The supervisor's status file (quickpay/supervisor.py writes it), or None if there is
    none (no supervisor, or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
