"""Each shard's PostgreSQL members as Patroni sees them (GET /admin/v1/ha, the console's HA
table): role (leader, sync_standby, replica...), state (running, streaming...), replication
lag in bytes and timeline, from Patroni's REST API `GET /cluster` (patroni/api.py
do_GET_cluster, patroni/utils.py cluster_as_json; unauthenticated: only Patroni's write
endpoints take its REST user).

Where the members are: `quickpay up --ha` records every member's REST port once, in
STATE/ha/layout.json (quickpay/ha/layout.py), next to the supervisor's status file the
gateway is given (STATE/supervisor.json, GatewayConfig.supervisor_status). No layout file and
the embedded PostgreSQL among the supervisor's children: the shards are single servers (role
"single"); databases `quickpay up` does not run (--dsn), or a gateway without a supervisor
(docker-compose), are "external" or "unknown", said, not guessed, unless the operator names the
members (QUICKPAY_PATRONI_MEMBERS, `parse_members`: docker-compose.ha.yml's gateway does). Off the payment path: only the admin route
reads it, every member of every shard at once, each GET bounded by PATRONI_TIMEOUT_S and
PATRONI_BODY_MAX_BYTES, and one read is shared by every caller for HA_VIEW_REUSE_S. A member
that does not answer, or answers something that is not a /cluster document, is
"unreachable" in the answer, never an error of the route.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from kernel.resources import _iso

from .health import read_status

__all__ = [
    "HA_VIEW_REUSE_S",
    "PATRONI_BODY_MAX_BYTES",
    "PATRONI_TIMEOUT_S",
    "HaView",
    "layout_path",
    "parse_cluster",
    "parse_members",
    "read_layout",
    "shard_view",
    "single_view",
]

PATRONI_TIMEOUT_S = 0.5  # one GET /cluster, connect to last byte (loopback: a live member answers in ms)
PATRONI_BODY_MAX_BYTES = 256 * 1024  # a /cluster answer of 5 members is ~2 kB
PATRONI_MEMBERS_MAX = 16  # members one answer may list (quickpay runs at most 5 per shard)
LAYOUT_MAX_BYTES = 1024 * 1024
HA_VIEW_REUSE_S = 1.0  # the console refreshes every 2 s; callers within this share one read
ROLES = ("leader", "standby_leader", "sync_standby", "quorum_standby", "replica")

Member = tuple[str, str, int]  # (name, REST host, REST port)
LOOPBACK = "127.0.0.1"  # where `quickpay up --ha` runs every member


class LayoutError(ValueError):
    """STATE/ha/layout.json exists but is not a layout."""


def layout_path(supervisor_status: str | None) -> Path | None:
    """STATE/ha/layout.json, STATE being the supervisor status file's directory (None: no supervisor)."""
    return Path(supervisor_status).parent / "ha" / "layout.json" if supervisor_status else None


def read_layout(path: Path | None) -> dict[int, list[Member]] | None:
    """Every shard's members (name, REST port) from an HA layout file; None when there is none."""
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            raw = file.read(LAYOUT_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LayoutError(f"{path}: {exc}") from None
    try:
        layout = json.loads(raw) if len(raw) <= LAYOUT_MAX_BYTES else None
        shards: dict[int, list[Member]] = {}
        for member in layout["members"]:  # type: ignore[index]
            shard, name, port = member["shard"], member["name"], member["rest_port"]
            if type(shard) is not int or not isinstance(name, str) or type(port) is not int or not 0 < port < 65536:
                raise ValueError(member)
            shards.setdefault(shard, []).append((name, LOOPBACK, port))
    except (ValueError, TypeError, KeyError) as exc:
        raise LayoutError(f"{path} is not an HA layout ({type(exc).__name__})") from None
    return shards


def _lag(value: Any) -> int | None:
    """Patroni's lag: bytes behind the leader, or "unknown" (no position yet); None for the leader."""
    return value if type(value) is int and value >= 0 else None


def parse_cluster(body: Any) -> dict[str, dict[str, Any]]:
    """The members of one /cluster answer, by name: role, state, lag in bytes (None: the leader's
    own, or "unknown" to Patroni, then `lag_unknown`), timeline. ValueError if `body` is not a
    /cluster document (a member listed twice, no members list, a member without a name or role)."""
    if not isinstance(body, dict) or not isinstance(body.get("members"), list):
        raise ValueError("not a /cluster answer: no members list")
    members = body["members"]
    if len(members) > PATRONI_MEMBERS_MAX:
        raise ValueError(f"more than {PATRONI_MEMBERS_MAX} members")
    found: dict[str, dict[str, Any]] = {}
    for member in members:
        if not isinstance(member, dict) or not isinstance(member.get("name"), str) or not member["name"]:
            raise ValueError("a member without a name")
        name, role = member["name"], member.get("role")
        if not isinstance(role, str) or name in found:
            raise ValueError(f"member {name[:64]!r}: no role, or listed twice")
        timeline = member.get("timeline")
        found[name] = {
            "role": role,
            "state": str(member.get("state") or "unknown"),
            "lag_bytes": _lag(member.get("lag")),
            "lag_unknown": member.get("lag") == "unknown",
            "timeline": timeline if type(timeline) is int else None,
        }
    return found


def shard_view(shard: int, members: list[Member], answers: dict[str, dict[str, Any] | str]) -> dict[str, Any]:
    """One shard's members from its members' answers (name -> parse_cluster's members, or why
    the member did not answer). The view is the leader's own answer when it gave one (it holds
    the leader key), else the first member's that answered; a member it does not list is
    "unreachable"."""
    answered = {name: a for name, a in answers.items() if isinstance(a, dict)}
    source = next((n for n, a in answered.items() if a.get(n, {}).get("role") == "leader"), None)
    if source is None:
        source = next((name for name, _, _ in members if name in answered), None)
    view = answered.get(source, {}) if source is not None else {}
    rows = []
    for name, host, port in members:
        seen = view.get(name)
        answer = answers.get(name)
        rows.append(
            {
                "name": name,
                "role": seen["role"] if seen else "unknown",
                "state": seen["state"] if seen else "unreachable",
                "lag_bytes": seen["lag_bytes"] if seen else None,
                "lag_unknown": seen["lag_unknown"] if seen else False,
                "timeline": seen["timeline"] if seen else None,
                "rest_host": host,
                "rest_port": port,
                # its own REST API: "answered", or why not (its row may still come from another member's view)
                "api": "answered" if isinstance(answer, dict) else f"unreachable: {answer or 'not asked'}",
            }
        )
    leader = next((r["name"] for r in rows if r["role"] in ("leader", "standby_leader")), None)
    return {"shard": shard, "mode": "patroni", "view_from": source, "leader": leader, "members": rows}


def single_view(shard: int) -> dict[str, Any]:
    """A shard whose database is one server (no Patroni)."""
    member = {
        "name": None,
        "role": "single",
        "state": None,
        "lag_bytes": None,
        "lag_unknown": False,
        "timeline": None,
        "rest_host": None,
        "rest_port": None,
        "api": None,
    }
    return {"shard": shard, "mode": "single", "view_from": None, "leader": None, "members": [member]}


async def _get_cluster(http: aiohttp.ClientSession, host: str, port: int) -> dict[str, dict[str, Any]] | str:
    try:
        async with http.get(f"http://{host}:{port}/cluster", allow_redirects=False) as response:
            body = await response.content.read(PATRONI_BODY_MAX_BYTES + 1)
            if response.status != 200:
                return f"answered {response.status}"
            if len(body) > PATRONI_BODY_MAX_BYTES:
                return f"answer larger than {PATRONI_BODY_MAX_BYTES} bytes"
            return parse_cluster(json.loads(body))
    except TimeoutError:
        return f"no answer within {PATRONI_TIMEOUT_S} s"
    except (aiohttp.ClientError, OSError) as exc:
        return str(exc) or type(exc).__name__
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not a /cluster answer ({str(exc)[:120] or type(exc).__name__})"


NOT_SUPERVISED = "this gateway was not started by `quickpay up` (no supervisor status): no HA layout to read"
EXTERNAL = "the shards' databases are not run by `quickpay up` (--dsn): their roles are their own tooling's to tell"


def _without_layout(supervisor_status: str, shards: int) -> dict[str, Any]:
    """No HA layout: single servers if `quickpay up` runs the embedded PostgreSQL (its child
    `postgres`), else databases it does not run (--dsn), whose roles it cannot tell."""
    status = read_status(supervisor_status)
    if status is None:
        return {
            "mode": "unknown",
            "error": f"the supervisor's status file {supervisor_status} cannot be read",
            "shards": [],
        }
    children = status.get("children")
    names = {c.get("name") for c in children if isinstance(c, dict)} if isinstance(children, list) else set()
    if "postgres" in names:
        return {"mode": "single", "error": None, "shards": [single_view(s) for s in range(shards)]}
    return {"mode": "external", "error": EXTERNAL, "shards": []}


_MEMBER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")


def parse_members(text: str, shards: int) -> dict[int, list[Member]]:
    """Members named by the operator (QUICKPAY_PATRONI_MEMBERS, for a gateway that `quickpay up`
    does not run, such as docker-compose.ha.yml's): comma-separated `SHARD:NAME@HOST:PORT`, e.g.
    `0:pg0a@pg0a:8008,0:pg0b@pg0b:8008`. ValueError names the first entry that is not one."""
    found: dict[int, list[Member]] = {}
    for entry in (e.strip() for e in text.split(",")):
        shard_text, _, rest = entry.partition(":")
        name, _, address = rest.partition("@")
        host, _, port_text = address.rpartition(":")
        if not (
            shard_text.isdigit()
            and int(shard_text) < shards
            and _MEMBER_NAME.fullmatch(name)
            and _HOST.fullmatch(host)
            and port_text.isdigit()
            and 0 < int(port_text) < 65536
        ):
            raise ValueError(
                f"QUICKPAY_PATRONI_MEMBERS: {entry[:80]!r} is not SHARD:NAME@HOST:PORT with SHARD < {shards}"
            )
        members = found.setdefault(int(shard_text), [])
        if any(m[0] == name for m in members) or len(members) >= PATRONI_MEMBERS_MAX:
            raise ValueError(f"QUICKPAY_PATRONI_MEMBERS: shard {shard_text} lists {name!r} twice, or too many members")
        members.append((name, host, int(port_text)))
    return found


async def read_view(
    supervisor_status: str | None, shards: int, members_named: dict[int, list[Member]] | None = None
) -> dict[str, Any]:
    """Every shard's members now (one bounded GET /cluster per member, all at once): the members
    the operator named, else those of the HA layout `quickpay up --ha` wrote."""
    if members_named is not None:
        layout: dict[int, list[Member]] | None = members_named
    elif not supervisor_status:
        return {"mode": "unknown", "error": NOT_SUPERVISED, "shards": []}
    else:
        try:
            layout = read_layout(layout_path(supervisor_status))
        except LayoutError as exc:
            return {"mode": "unknown", "error": str(exc), "shards": []}
        if layout is None:
            return _without_layout(supervisor_status, shards)
    assert layout is not None
    timeout = aiohttp.ClientTimeout(total=PATRONI_TIMEOUT_S)
    members = [(s, name, host, port) for s in range(shards) for name, host, port in layout.get(s, [])]
    async with aiohttp.ClientSession(timeout=timeout) as http:
        got = await asyncio.gather(*(_get_cluster(http, host, port) for _, _, host, port in members))
    answers: dict[int, dict[str, dict[str, Any] | str]] = {}
    for (s, name, _, _), answer in zip(members, got, strict=True):
        answers.setdefault(s, {})[name] = answer
    return {
        "mode": "patroni",
        "error": None,
        "shards": [shard_view(s, layout.get(s, []), answers.get(s, {})) for s in range(shards)],
    }


class HaView:
    """The members' view, read at most once per HA_VIEW_REUSE_S and shared by concurrent callers."""

    def __init__(
        self,
        supervisor_status: str | None,
        shards: int,
        *,
        members_named: dict[int, list[Member]] | None = None,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._supervisor_status = supervisor_status
        self._members_named = members_named
        self._shards = shards
        self._monotonic_s = monotonic_s
        self._last: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def view(self) -> dict[str, Any]:
        async with self._lock:
            now = self._monotonic_s()
            if self._last is not None and now - self._last[0] < HA_VIEW_REUSE_S:
                return self._last[1]
            view = {
                "generated_at": _iso(time.time_ns() // 1_000_000),
                **await read_view(self._supervisor_status, self._shards, self._members_named),
            }
            self._last = (now, view)
            return view
