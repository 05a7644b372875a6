"""A ledger whose shard count does not divide the 5,040 slots (11, 13, 17, ... shards; `up`
has always allowed 1-64) has no slot map: it routes every id by kernel.ids.shard_of, its
shards guard nothing, and the shards view says there is no map. The slot map's first version
made such ledgers refuse to start; these tests failed then."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import Stack, start_stack, stop_stack
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.shards import ShardRouter
from kernel.ids import new_account_id, new_agreement_id, shard_of
from kernel.slots import SLOT_COUNT, SlotMap, SlotMapError
from quickpay.cli.shards import render_status

SHARDS = 11  # the smallest shard count that does not divide SLOT_COUNT
assert SLOT_COUNT % SHARDS != 0


def _router() -> ShardRouter:
    return ShardRouter([f"unix:/nonexistent/shard-{i}.sock" for i in range(SHARDS)])


_ROUTER = _router()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds(lambda: new_account_id())))
def test_the_router_routes_accounts_by_hash_without_a_map(entity_id: str) -> None:
    assert _ROUTER.slot_map is None and _ROUTER.slot_map_fetched
    expected = shard_of(entity_id, SHARDS)
    assert _ROUTER.shard_of_account(entity_id) == expected == _ROUTER.shard_of(entity_id)
    assert _ROUTER.client_for_account(entity_id) is _ROUTER.clients[expected]


def test_the_router_without_a_map_holds_none_and_keeps_agreements_with_their_debtors() -> None:
    router = _router()
    with pytest.raises(SlotMapError, match="has no slot map"):
        router.hold(SlotMap.initial(1))
    for _ in range(50):
        debtor = new_account_id()
        assert router.shard_of(new_agreement_id(debtor, SHARDS)) == router.shard_of_account(debtor)
    # A MOVED can only come from a shard with a map; the router still goes where it says.
    assert asyncio.run(router.follow_moved({"shard": 3, "version": 2, "slot": 1})) == 3


def test_status_says_there_is_no_map() -> None:
    view = {
        "version": None,
        "written_at": None,
        "slot_count": SLOT_COUNT,
        "gateway_held_version": None,
        "shards": [
            {"shard": 0, "slots": None, "held_version": None, "error": None},
            {"shard": 1, "slots": None, "held_version": None, "error": "ShardUnavailable"},
        ],
        "moves": [],
    }
    shown = render_status(view)
    assert shown.startswith("no slot map: 2 shards do not divide the 5040 slots")
    assert "shard 0: up" in shown and "shard 1: ? (ShardUnavailable)" in shown


@pytest.fixture(scope="module")
def stack11(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("noslots"), shards=SHARDS, workers=1)
    try:
        yield stack
    finally:
        stop_stack(stack)


def test_an_11_shard_ledger_starts_pays_and_shows_no_map(stack11: Stack) -> None:
    stack = stack11
    assert "note: 11 shards do not divide the 5040 slots" in stack.log()
    # Payments from and to several shards: accounts land where shard_of puts them, and pay.
    partner = stack.new_partner()
    for debtor_shard in (0, 5, 10):
        customer = stack.new_customer(partner, shard=debtor_shard, funding="50.00")
        creditor = stack.new_account(shard=(debtor_shard + 3) % SHARDS)
        paid = stack.pay(partner, customer["agreement_id"], creditor, "12.34")
        assert paid.status == 201, paid.body
        assert stack.balance(customer["account"]) == "37.66"
    # (a cross-shard credit lands once its leg is relayed)
    deadline = time.monotonic() + 30
    while stack.balance(creditor) != "12.34" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.balance(creditor) == "12.34"
    reply = stack.admin("GET", "/admin/v1/shards")
    assert reply.status == 200, reply.body
    view = reply.body
    assert (view["version"], view["written_at"], view["gateway_held_version"]) == (None, None, None)
    assert view["slot_count"] == SLOT_COUNT and view["moves"] == []
    assert view["shards"] == [{"shard": s, "slots": None, "held_version": None, "error": None} for s in range(SHARDS)]
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "quickpay.cli",
            "shards",
            "status",
            "--url",
            stack.base_url,
            "--state-dir",
            str(stack.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("no slot map: 11 shards")
