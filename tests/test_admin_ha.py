"""GET /admin/v1/ha, the shards' PostgreSQL members as Patroni sees them (gateway/patroni.py):
a /cluster answer parsed (roles, states, lag in bytes or "unknown", timelines), garbled ones
refused; a shard's view taken from its leader's answer, members no one lists "unreachable";
the HA layout file read or refused; against stand-in Patroni REST APIs on loopback (one
answering, one garbled, one that never answers, one port closed) the whole read is over
within PATRONI_TIMEOUT_S plus a little and says "unreachable" for each bad one, never an
error; one read is shared for HA_VIEW_REUSE_S; and on the shared stack (no --ha) the route
needs the admin token and shows every shard as a single server; without a layout, the
supervisor's children tell single servers from databases it does not run (--dsn), and a gateway
without a supervisor says it cannot tell."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Stack

from gateway.patroni import (
    HA_VIEW_REUSE_S,
    PATRONI_TIMEOUT_S,
    HaView,
    LayoutError,
    layout_path,
    parse_cluster,
    parse_members,
    read_layout,
    read_view,
    shard_view,
)

# Shard 0's GET /cluster, recorded from the real Patroni (4.1.5) of `quickpay up --ha` (two shards,
# three members each, strict synchronous mode) by tests/test_ha.py's slow status test, which
# writes it to test-artefacts/patroni-cluster-shard0.json; ports as they were in that run.
CLUSTER_ANSWER: dict[str, Any] = {
    "members": [
        {
            "name": "shard0-a",
            "role": "replica",
            "state": "streaming",
            "api_url": "http://127.0.0.1:52003/patroni",
            "host": "127.0.0.1",
            "port": 51991,
            "timeline": 1,
            "receive_lag": 3344,
            "receive_lsn": "0/54AC360",
            "replay_lag": 3344,
            "replay_lsn": "0/54AC360",
            "lag": 3344,
            "lsn": "0/54AC360",
        },
        {
            "name": "shard0-b",
            "role": "sync_standby",
            "state": "streaming",
            "api_url": "http://127.0.0.1:55435/patroni",
            "host": "127.0.0.1",
            "port": 42979,
            "timeline": 1,
            "receive_lag": 3344,
            "receive_lsn": "0/54AC360",
            "replay_lag": 3344,
            "replay_lsn": "0/54AC360",
            "lag": 3344,
            "lsn": "0/54AC360",
        },
        {
            "name": "shard0-c",
            "role": "leader",
            "state": "running",
            "api_url": "http://127.0.0.1:55769/patroni",
            "host": "127.0.0.1",
            "port": 37741,
            "timeline": 1,
        },
    ],
    "scope": "quickpay-shard-0",
}
MEMBERS = [("shard0-a", "127.0.0.1", 52003), ("shard0-b", "127.0.0.1", 55435), ("shard0-c", "127.0.0.1", 55769)]


# ---- pure ------------------------------------------------------------------------------------
def test_a_cluster_answer_gives_roles_states_lag_and_timelines() -> None:
    parsed = parse_cluster(CLUSTER_ANSWER)
    assert parsed == {
        "shard0-a": {"role": "replica", "state": "streaming", "lag_bytes": 3344, "lag_unknown": False, "timeline": 1},
        "shard0-b": {
            "role": "sync_standby",
            "state": "streaming",
            "lag_bytes": 3344,
            "lag_unknown": False,
            "timeline": 1,
        },
        "shard0-c": {"role": "leader", "state": "running", "lag_bytes": None, "lag_unknown": False, "timeline": 1},
    }
    # A standby that has no position yet: Patroni says "unknown" (its lsn and lag).
    starting = copy.deepcopy(CLUSTER_ANSWER)
    starting["members"][0].update(lag="unknown", lsn="unknown", state="starting")
    del starting["members"][0]["timeline"]
    assert parse_cluster(starting)["shard0-a"] == {
        "role": "replica",
        "state": "starting",
        "lag_bytes": None,
        "lag_unknown": True,
        "timeline": None,
    }


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "members",
        {},
        {"members": {}},
        {"members": [{"role": "leader"}]},
        {"members": [{"name": "", "role": "leader"}]},
        {"members": [{"name": "a"}]},
        {"members": [{"name": "a", "role": "leader"}, {"name": "a", "role": "replica"}]},
        {"members": [{"name": f"m{i}", "role": "replica"} for i in range(17)]},
    ],
)
def test_a_garbled_cluster_answer_is_refused(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_cluster(body)


def test_the_view_is_the_leaders_and_unlisted_members_are_unreachable() -> None:
    leader_view = parse_cluster(CLUSTER_ANSWER)
    # a standby cut off from the DCS, listing only itself, with an old figure
    stale = parse_cluster({"members": [{"name": "shard0-a", "role": "replica", "state": "running", "lag": 99}]})
    view = shard_view(0, MEMBERS, {"shard0-a": stale, "shard0-c": leader_view, "shard0-b": "connection refused"})
    assert view["view_from"] == "shard0-c" and view["leader"] == "shard0-c" and view["mode"] == "patroni"
    by_name = {m["name"]: m for m in view["members"]}
    assert by_name["shard0-a"]["lag_bytes"] == 3344  # the leader's figure, not the stale one
    assert by_name["shard0-b"]["role"] == "sync_standby"  # listed by the leader...
    assert by_name["shard0-b"]["api"] == "unreachable: connection refused"  # ...though its own API is down
    assert by_name["shard0-c"]["api"] == "answered" and by_name["shard0-c"]["rest_port"] == 55769

    # only a member that lists itself alone answers: its view, the others unknown and unreachable
    alone = shard_view(0, MEMBERS, {"shard0-a": stale, "shard0-b": "timeout", "shard0-c": "timeout"})
    assert alone["view_from"] == "shard0-a" and alone["leader"] is None
    assert [(m["role"], m["state"]) for m in alone["members"]] == [
        ("replica", "running"),
        ("unknown", "unreachable"),
        ("unknown", "unreachable"),
    ]
    nobody = shard_view(1, MEMBERS, {name: "timeout" for name, _, _ in MEMBERS})
    assert nobody["view_from"] is None and {m["state"] for m in nobody["members"]} == {"unreachable"}


def test_the_layout_is_read_next_to_the_supervisor_status(tmp_path: Path) -> None:
    assert layout_path(None) is None
    path = layout_path(str(tmp_path / "supervisor.json"))
    assert path == tmp_path / "ha" / "layout.json"
    assert read_layout(path) is None  # no --ha
    path.parent.mkdir()
    members = [{"shard": s, "name": f"shard{s}-{x}", "pg_port": 1, "rest_port": 2 + s} for s in (0, 1) for x in "ab"]
    path.write_text(json.dumps({"shards": 2, "members_per_shard": 2, "members": members}))
    local = "127.0.0.1"
    assert read_layout(path) == {
        0: [("shard0-a", local, 2), ("shard0-b", local, 2)],
        1: [("shard1-a", local, 3), ("shard1-b", local, 3)],
    }
    for garbled in ("{", "[]", '{"members": [{"shard": 0, "name": "x", "rest_port": 70000}]}', '{"members": 3}'):
        path.write_text(garbled)
        with pytest.raises(LayoutError):
            read_layout(path)


# ---- stand-in Patroni REST APIs on loopback ---------------------------------------------------
async def _stand_ins(hits: list[str]) -> tuple[list[Any], dict[str, int]]:
    """A Patroni that answers CLUSTER_ANSWER, one that answers garbage, one that accepts and
    never answers, and a closed port."""

    async def good(request: web.Request) -> web.Response:
        hits.append("good")
        return web.json_response(CLUSTER_ANSWER)

    async def garbled(request: web.Request) -> web.Response:
        hits.append("garbled")
        return web.Response(text="<html>not patroni</html>", content_type="application/json")

    runners: list[Any] = []
    ports: dict[str, int] = {}
    for name, handler in (("good", good), ("garbled", garbled)):
        app = web.Application()
        app.router.add_get("/cluster", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports[name] = runner.addresses[0][1]

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append("silent")
        await asyncio.sleep(3600)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    runners.append(server)
    ports["silent"] = server.sockets[0].getsockname()[1]
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        ports["closed"] = s.getsockname()[1]
    return runners, ports


async def _close(runners: list[Any]) -> None:
    for runner in runners:
        if isinstance(runner, asyncio.Server):
            runner.close()
        else:
            await runner.cleanup()


def _write_layout(path: Path, ports: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = [
        {"shard": 0, "name": "shard0-a", "pg_port": 1, "rest_port": ports["good"]},
        {"shard": 0, "name": "shard0-b", "pg_port": 1, "rest_port": ports["silent"]},
        {"shard": 0, "name": "shard0-c", "pg_port": 1, "rest_port": ports["garbled"]},
        {"shard": 1, "name": "shard1-a", "pg_port": 1, "rest_port": ports["silent"]},
        {"shard": 1, "name": "shard1-b", "pg_port": 1, "rest_port": ports["closed"]},
        {"shard": 1, "name": "shard1-c", "pg_port": 1, "rest_port": ports["garbled"]},
    ]
    path.write_text(json.dumps({"shards": 2, "members_per_shard": 3, "members": members}))


def test_unreachable_and_garbled_members_are_said_fast(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        hits: list[str] = []
        runners, ports = await _stand_ins(hits)
        try:
            _write_layout(tmp_path / "ha" / "layout.json", ports)
            started = time.monotonic()
            view = await read_view(str(tmp_path / "supervisor.json"), 2)
            took = time.monotonic() - started
            assert took < PATRONI_TIMEOUT_S + 0.5, took  # every member at once, none waited past the bound
            assert sorted(hits) == ["garbled", "garbled", "good", "silent", "silent"]
            return view
        finally:
            await _close(runners)

    view = asyncio.run(scenario())
    assert view["mode"] == "patroni" and view["error"] is None
    zero, one = view["shards"]
    # shard0-a answered (a replica: no leader answered, so its view), listing every member
    assert zero["view_from"] == "shard0-a" and zero["leader"] == "shard0-c"
    assert [(m["name"], m["role"], m["lag_bytes"]) for m in zero["members"]] == [
        ("shard0-a", "replica", 3344),
        ("shard0-b", "sync_standby", 3344),
        ("shard0-c", "leader", None),
    ]
    apis = [m["api"] for m in zero["members"]]
    assert apis[0] == "answered"
    assert apis[1] == f"unreachable: no answer within {PATRONI_TIMEOUT_S} s", apis
    assert apis[2].startswith("unreachable: not a /cluster answer"), apis
    # no member of shard 1 answers a /cluster document: all of them unreachable, no leader
    assert one["leader"] is None and one["view_from"] is None
    assert [(m["role"], m["state"]) for m in one["members"]] == [("unknown", "unreachable")] * 3
    assert all(m["api"].startswith("unreachable: ") for m in one["members"])


def test_members_named_by_the_operator_are_parsed_strictly() -> None:
    """QUICKPAY_PATRONI_MEMBERS: the compose HA gateway's members, each SHARD:NAME@HOST:PORT."""
    assert parse_members("0:pg0a@pg0a:8008, 0:pg0b@pg0b:8008,1:pg1a@10.0.0.7:8008", 2) == {
        0: [("pg0a", "pg0a", 8008), ("pg0b", "pg0b", 8008)],
        1: [("pg1a", "10.0.0.7", 8008)],
    }
    for bad in (
        "",
        "0:pg0a@pg0a",  # no port
        "2:pg2a@pg2a:8008",  # no shard 2 of 2
        "0:pg0a@pg0a:0",
        "0:pg0a@pg0a:65536",
        "x:pg0a@pg0a:8008",
        "0:@pg0a:8008",
        "0:pg 0a@pg0a:8008",
        "0:pg0a@http://evil/:8008",
        "0:pg0a@pg0a:8008,0:pg0a@pg0b:8008",  # a member twice
    ):
        with pytest.raises(ValueError, match="QUICKPAY_PATRONI_MEMBERS"):
            parse_members(bad, 2)


def test_named_members_are_read_without_a_supervisor() -> None:
    """Regression: a gateway that `quickpay up` does not run (docker-compose.ha.yml's) answered
    mode "unknown" with no members, even with Patroni one hostname away."""

    async def scenario() -> dict[str, Any]:
        hits: list[str] = []
        runners, ports = await _stand_ins(hits)
        try:
            named = {0: [("shard0-c", "localhost", ports["good"]), ("shard0-a", "127.0.0.1", ports["closed"])]}
            return await HaView(None, 1, members_named=named).view()
        finally:
            await _close(runners)

    view = asyncio.run(scenario())
    assert view["mode"] == "patroni" and view["error"] is None
    (zero,) = view["shards"]
    assert zero["view_from"] == "shard0-c" and zero["leader"] == "shard0-c"
    by_name = {m["name"]: m for m in zero["members"]}
    assert by_name["shard0-c"]["rest_host"] == "localhost" and by_name["shard0-c"]["api"] == "answered"
    assert by_name["shard0-a"]["role"] == "replica" and by_name["shard0-a"]["api"].startswith("unreachable: ")


def test_one_read_is_shared_for_a_moment(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        hits: list[str] = []
        runners, ports = await _stand_ins(hits)
        try:
            layout = tmp_path / "ha" / "layout.json"
            layout.parent.mkdir(parents=True)
            member = {"shard": 0, "name": "shard0-a", "pg_port": 1, "rest_port": ports["good"]}
            layout.write_text(json.dumps({"members": [member]}))
            clock = {"s": 10.0}
            source = HaView(str(tmp_path / "supervisor.json"), 1, monotonic_s=lambda: clock["s"])
            views = await asyncio.gather(*(source.view() for _ in range(5)))
            assert all(v is views[0] for v in views)
            clock["s"] += HA_VIEW_REUSE_S / 2
            await source.view()
            assert hits == ["good"]
            clock["s"] += HA_VIEW_REUSE_S
            await source.view()
            return hits
        finally:
            await _close(runners)

    assert asyncio.run(scenario()) == ["good", "good"]


def test_without_a_layout_the_supervisors_children_tell_single_from_external(tmp_path: Path) -> None:
    status = tmp_path / "supervisor.json"

    def view_with(children: list[dict[str, Any]] | None) -> dict[str, Any]:
        if children is None:
            status.unlink(missing_ok=True)
        else:
            status.write_text(json.dumps({"supervisor_pid": 1, "children": children}))
        return asyncio.run(read_view(str(status), 2))

    single = view_with([{"name": "postgres", "state": "running"}, {"name": "shard-0"}])
    assert single["mode"] == "single" and [s["members"][0]["role"] for s in single["shards"]] == ["single"] * 2
    external = view_with([{"name": "shard-0"}, {"name": "shard-1"}])  # `up --dsn`: no embedded PostgreSQL
    assert external["mode"] == "external" and external["shards"] == [] and "--dsn" in external["error"]
    unreadable = view_with(None)
    assert unreadable["mode"] == "unknown" and "cannot be read" in unreadable["error"]
    # a gateway without a supervisor (docker-compose): nothing to read, said so
    alone = asyncio.run(read_view(None, 2))
    assert alone["mode"] == "unknown" and "quickpay up" in alone["error"] and alone["shards"] == []


def test_a_garbled_layout_is_said_not_raised(tmp_path: Path) -> None:
    layout = tmp_path / "ha" / "layout.json"
    layout.parent.mkdir(parents=True)
    layout.write_text("{garbled")
    view = asyncio.run(read_view(str(tmp_path / "supervisor.json"), 2))
    assert view["mode"] == "unknown" and "not an HA layout" in view["error"] and view["shards"] == []


# ---- on the shared stack (no --ha) ----------------------------------------------------------
def test_ha_members_need_the_admin_token_and_show_single_servers(stack: Stack) -> None:
    assert stack.call("GET", "/admin/v1/ha").status == 401
    partner = stack.new_partner("HA Auth Partner")
    assert stack.call("GET", "/admin/v1/ha", token=partner["token"]).status == 401
    reply = stack.admin("GET", "/admin/v1/ha")
    assert reply.status == 200, reply.body
    assert reply.body["mode"] == "single" and reply.body["error"] is None
    assert [s["shard"] for s in reply.body["shards"]] == list(range(stack.shards))
    assert all([m["role"] for m in s["members"]] == ["single"] for s in reply.body["shards"]), reply.body


def test_every_kind_of_answer_matches_the_document(tmp_path: Path) -> None:
    """Schemathesis sees only the shared stack's "single"; the other modes and the unreachable
    members are checked against the documented HaMembers schema here."""
    import jsonschema

    from gateway.openapi import openapi_document

    schema = {"$ref": "#/components/schemas/HaMembers", "components": openapi_document()["components"]}
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())

    async def views() -> list[dict[str, Any]]:
        hits: list[str] = []
        runners, ports = await _stand_ins(hits)
        try:
            _write_layout(tmp_path / "ha" / "layout.json", ports)
            patroni = await HaView(str(tmp_path / "supervisor.json"), 2).view()
            (tmp_path / "ha" / "layout.json").write_text("{")
            garbled = await HaView(str(tmp_path / "supervisor.json"), 2).view()
            (tmp_path / "ha" / "layout.json").unlink()
            (tmp_path / "supervisor.json").write_text(json.dumps({"children": [{"name": "postgres"}]}))
            single = await HaView(str(tmp_path / "supervisor.json"), 2).view()
            (tmp_path / "supervisor.json").write_text(json.dumps({"children": []}))
            external = await HaView(str(tmp_path / "supervisor.json"), 2).view()
            alone = await HaView(None, 2).view()
            return [patroni, garbled, single, external, alone]
        finally:
            await _close(runners)

    seen = asyncio.run(views())
    assert [v["mode"] for v in seen] == ["patroni", "unknown", "single", "external", "unknown"]
    for view in seen:
        validator.validate(view)


def test_the_gateway_command_refuses_a_bad_member_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from quickpay.cli.processes import _patroni_members

    monkeypatch.delenv("QUICKPAY_PATRONI_MEMBERS", raising=False)
    assert _patroni_members("gateway-worker", 2) is None
    monkeypatch.setenv("QUICKPAY_PATRONI_MEMBERS", "1:pg1a@pg1a:8008")
    assert _patroni_members("gateway-worker", 2) == {1: [("pg1a", "pg1a", 8008)]}
    monkeypatch.setenv("QUICKPAY_PATRONI_MEMBERS", "1:pg1a@pg1a")
    with pytest.raises(SystemExit, match="gateway-worker: QUICKPAY_PATRONI_MEMBERS"):
        _patroni_members("gateway-worker", 2)
