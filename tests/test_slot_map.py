"""The slot map stored and held (issue 21): version 1 written once per database, on the
first start of a shard whose ledger has none (a ledger made before the map existed
included), a stored map the ledger cannot serve refused; every shard of a running stack
holds version 1 and shard 0 serves the control map; the gateway's router routes every id
exactly as kernel.ids.shard_of while it holds version 1, and holds only newer maps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from conftest import Stack, http
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_api import assert_error

from gateway.shards import ShardRouter
from kernel.ids import new_account_id, new_agreement_id, shard_of
from kernel.slots import SLOT_COUNT, SlotMap, SlotMapError, slot_of
from ledger import pg
from ledger.client import ShardClient
from ledger.slot_map_store import ensure_slot_map, moves_in_progress, read_control_map
from quickpay.cli.parser import build_parser
from quickpay.cli.shards import render_status
from quickpay.cli.up import _validate_common
from quickpay.embedded_pg import EmbeddedPostgres

NOW_MS = 1_900_000_000_000


# ---- the router (no I/O: its clients connect only when called) ------------------------
def _router(shard_count: int) -> ShardRouter:
    return ShardRouter([f"unix:/nonexistent/shard-{i}.sock" for i in range(shard_count)])


_ROUTERS = {n: _router(n) for n in range(1, 11)}


@settings(max_examples=500, deadline=None)
@given(
    shard_count=st.integers(1, 10),
    entity_id=st.one_of(
        st.text(max_size=40),
        st.builds(lambda h: "acc_" + h, st.text("0123456789abcdef", min_size=20, max_size=20)),
    ),
)
def test_version_1_routes_every_id_as_shard_of(shard_count: int, entity_id: str) -> None:
    router = _ROUTERS[shard_count]
    assert router.slot_map is not None and router.slot_map.version == 1
    expected = shard_of(entity_id, shard_count)
    assert router.shard_of_account(entity_id) == expected
    assert router.shard_of(entity_id) == expected
    assert router.client_for_account(entity_id) is router.clients[expected]


def test_agreements_stay_on_their_debtors_shard_under_version_1() -> None:
    for shard_count in range(1, 11):
        router = _ROUTERS[shard_count]
        for _ in range(20):
            debtor = new_account_id()
            assert router.shard_of(new_agreement_id(debtor, shard_count)) == router.shard_of_account(debtor)


def test_the_router_routes_accounts_by_the_map_it_holds_and_only_newer_maps() -> None:
    router = _router(2)
    account = new_account_id()
    slot = slot_of(account)
    moved = SlotMap.initial(2).moved(slot, 1 - router.shard_of_account(account))
    assert router.hold(moved) is True
    assert router.slot_map is not None and router.slot_map.version == 2 and router.slot_map_fetched
    assert router.shard_of_account(account) == moved.shard_for_slot(slot) != shard_of(account, 2)
    # Agreements, partners and payments keep their home shard.
    assert router.shard_of(account) == shard_of(account, 2)
    assert router.hold(SlotMap.initial(2)) is False  # older: ignored
    assert router.shard_of_account(account) == moved.shard_for_slot(slot)
    with pytest.raises(SlotMapError, match="beyond 2"):
        router.hold(SlotMap.initial(2).moved(slot, 5).moved((slot + 1) % SLOT_COUNT, 5))


def test_quickpay_up_takes_every_shard_count_from_1_to_64() -> None:
    """A count that does not divide 5,040 makes a ledger without a slot map
    (tests/test_no_slot_map.py), not a refusal: `up` allowed 1-64 before the map existed."""
    parser = build_parser()
    for shards in (1, 10, 11, 13, 64):
        _validate_common(parser.parse_args(["up", "--shards", str(shards)]))
    for shards in (0, 65):
        with pytest.raises(SystemExit, match="--shards must be between 1 and 64"):
            _validate_common(parser.parse_args(["up", "--shards", str(shards)]))


# ---- the stored map, in a database of the shared stack's PostgreSQL --------------------
@contextlib.asynccontextmanager
async def scratch_database(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A new, empty database on the stack's server, dropped afterwards."""
    name = "slotmap_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(stack.dsn(0))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        conn = await asyncpg.connect(EmbeddedPostgres(stack.state_dir).dsn(name))
        try:
            yield conn
        finally:
            await conn.close()
            await admin.execute(f"DROP DATABASE {name}")
    finally:
        await admin.close()


async def test_version_1_is_written_once_and_an_old_ledger_gets_it(stack: Stack) -> None:
    async with scratch_database(stack) as conn:
        await pg.ensure_schema(conn, 0, 3)
        # A ledger made before the slot map: its tables hold no map.
        assert await conn.fetchval("SELECT count(*) FROM slot_maps") == 0
        held = await ensure_slot_map(conn, 0, 3, NOW_MS)
        assert held == SlotMap.initial(3)
        control, written_at_ms = await read_control_map(conn)
        assert (control, written_at_ms) == (SlotMap.initial(3), NOW_MS)
        assert await moves_in_progress(conn) == []
        # Idempotent: a restart writes nothing and reads the same map.
        assert await ensure_slot_map(conn, 0, 3, NOW_MS + 1) == held
        assert await conn.fetchval("SELECT count(*) FROM slot_maps") == 1
        assert await conn.fetchval("SELECT adopted_at_ms FROM slot_map_held") == NOW_MS
        # A later version is never shadowed by a restart.
        v2 = SlotMap.initial(3).moved(7, 0)
        await conn.execute("INSERT INTO slot_maps VALUES (2, $1::jsonb, $2)", json.dumps(v2.to_wire()), NOW_MS + 2)
        await conn.execute("UPDATE slot_map_held SET version = 2, map = $1::jsonb", json.dumps(v2.to_wire()))
        assert await ensure_slot_map(conn, 0, 3, NOW_MS + 3) == v2
        assert (await read_control_map(conn))[0] == v2


async def test_a_map_the_ledger_cannot_serve_is_refused(stack: Stack) -> None:
    async with scratch_database(stack) as conn:
        await pg.ensure_schema(conn, 1, 2)
        # A shard count that does not divide SLOT_COUNT: no map, and nothing written.
        assert await ensure_slot_map(conn, 1, 11, NOW_MS) is None
        assert await conn.fetchval("SELECT count(*) FROM slot_map_held") == 0
        assert await ensure_slot_map(conn, 1, 2, NOW_MS) == SlotMap.initial(2)
        with pytest.raises(LookupError, match="shard 0's"):  # only shard 0's database is the control one
            await read_control_map(conn)
        beyond = SlotMap.initial(2).moved(3, 4)
        await conn.execute("UPDATE slot_map_held SET version = 2, map = $1::jsonb", json.dumps(beyond.to_wire()))
        with pytest.raises(SystemExit, match=r"names shard\(s\) \[4\] of a 2-shard ledger"):
            await ensure_slot_map(conn, 1, 2, NOW_MS)
        await conn.execute("UPDATE slot_map_held SET map = '{\"version\": 2}'::jsonb")
        with pytest.raises(SystemExit, match="held slot map cannot be read"):
            await ensure_slot_map(conn, 1, 2, NOW_MS)


# ---- every process of a running stack holds it -----------------------------------------
async def test_every_shard_holds_version_1_and_shard_0_serves_the_control_map(stack: Stack) -> None:
    clients = [ShardClient(stack.shard_socket(s), call_timeout_s=10.0) for s in range(stack.shards)]
    try:
        held = [await client.call("slot_map", {}) for client in clients]
        assert [(h["shard"], h["version"]) for h in held] == [(s, 1) for s in range(stack.shards)]
        assert sum(h["slots"] for h in held) == SLOT_COUNT
        assert [h["slots"] for h in held] == [SLOT_COUNT // stack.shards] * stack.shards
        pings = [await client.call("ping") for client in clients]
        assert [p["slot_map_version"] for p in pings] == [1] * stack.shards
        control = await clients[0].call("slot_map", {"control": True})
        assert SlotMap.from_wire(control["control"]["map"]) == SlotMap.initial(stack.shards)
        assert control["control"]["moves"] == []
        with pytest.raises(Exception, match="the control slot map is on shard 0"):
            await clients[1].call("slot_map", {"control": True})
        # The gateway's fetch (what each gateway worker does at start) holds what shard 0 gave.
        router = ShardRouter([stack.shard_socket(s) for s in range(stack.shards)])
        try:
            assert router.slot_map_fetched is False
            await asyncio.wait_for(router.fetch_slot_map_until_held(), 30)
            assert router.slot_map_fetched and router.slot_map == SlotMap.initial(stack.shards)
        finally:
            await router.close()
    finally:
        for client in clients:
            await client.close()


# ---- shown: the admin API, the CLI, the metrics ------------------------------------------
def test_admin_shards_shows_the_map_the_held_versions_and_no_moves(stack: Stack, partner: dict[str, Any]) -> None:
    assert_error(http("GET", stack.url("/admin/v1/shards")), 401, "QP.Auth.Admin")
    assert_error(http("GET", stack.url("/admin/v1/shards"), token=partner["token"]), 401, "QP.Auth.Admin")
    reply = stack.admin("GET", "/admin/v1/shards")
    assert reply.status == 200, reply.body
    view = reply.body
    assert (view["version"], view["slot_count"], view["gateway_held_version"]) == (1, SLOT_COUNT, 1)
    assert view["shards"] == [
        {"shard": s, "slots": SLOT_COUNT // stack.shards, "held_version": 1, "error": None} for s in range(stack.shards)
    ]
    assert view["moves"] == []
    assert view["written_at"].endswith("Z")


def test_cli_shards_status_as_a_table_and_as_json(stack: Stack) -> None:
    common = ["--url", stack.base_url, "--state-dir", str(stack.state_dir)]

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quickpay.cli", *argv], capture_output=True, text=True, timeout=60, check=False
        )

    as_json = cli("shards", "status", "--json", *common)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == stack.admin("GET", "/admin/v1/shards").body
    table = cli("shards", "status", *common)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("slot map version 1 (written ") and f"{SLOT_COUNT} slots" in lines[0]
    assert [line.split() for line in lines[3 : 3 + stack.shards]] == [
        [str(s), str(SLOT_COUNT // stack.shards), "1"] for s in range(stack.shards)
    ]
    assert lines[-1] == "moves in progress: none"
    refused = cli("shards", "status", "--url", stack.base_url, "--state-dir", str(stack.state_dir / "nowhere"))
    assert refused.returncode != 0 and "no admin token" in refused.stderr


def test_a_move_record_in_progress_is_shown() -> None:
    view = {
        "version": 2,
        "written_at": "2030-03-17T17:46:40.000Z",
        "slot_count": SLOT_COUNT,
        "gateway_held_version": 2,
        "shards": [
            {"shard": 0, "slots": 2519, "held_version": 2, "error": None},
            {"shard": 1, "slots": 2521, "held_version": None, "error": "ShardUnavailable"},
        ],
        "moves": [
            {
                "slot": 7,
                "source_shard": 0,
                "target_shard": 1,
                "from_version": 2,
                "to_version": 3,
                "phase": "tail",
                "started_at": "2030-03-17T17:46:41.000Z",
                "updated_at": "2030-03-17T17:46:42.000Z",
            }
        ],
    }
    shown = render_status(view)
    assert "? (ShardUnavailable)" in shown
    assert "slot 7: shard 0 -> 1, version 2 -> 3, tail" in shown


def test_metrics_show_each_shards_held_map_version(stack: Stack) -> None:
    reply = http("GET", stack.url("/metrics"), token=stack.admin_token)
    assert reply.status == 200
    families = {f.name: f.samples for f in text_string_to_metric_families(reply.raw.decode())}
    versions = {s.labels["shard"]: s.value for s in families["quickpay_shard_slot_map_version"]}
    assert versions == {str(s): 1.0 for s in range(stack.shards)}
