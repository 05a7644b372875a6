"""kernel/slots.py: the slot function, the initial map's compatibility with today's routing,
moves, validation and the wire form."""

from __future__ import annotations

import secrets
import zlib

import pytest

from kernel.ids import new_account_id, new_agreement_id, payment_id_for, shard_of, shard_of_payment
from kernel.slots import SLOT_COUNT, SlotMap, SlotMapError, compatible_shard_count, slot_of


def test_slot_of_is_crc32_mod_slot_count_and_stable() -> None:
    assert slot_of("acc_0") == zlib.crc32(b"acc_0") % SLOT_COUNT
    assert slot_of("acc_0") == slot_of("acc_0")
    assert {slot_of(new_account_id()) for _ in range(2000)} <= set(range(SLOT_COUNT))


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_initial_map_reproduces_todays_routing(shard_count: int) -> None:
    slot_map = SlotMap.initial(shard_count)
    assert slot_map.version == 1
    for _ in range(500):
        account = new_account_id()
        assert slot_map.shard_for(account) == shard_of(account, shard_count)
        agreement = new_agreement_id(account, shard_count)
        assert slot_map.shard_for(agreement) == slot_map.shard_for(account)


def test_incompatible_shard_count_is_refused_and_really_would_misroute() -> None:
    assert not compatible_shard_count(11)
    with pytest.raises(SlotMapError):
        SlotMap.initial(11)
    # Why: some id's slot residue differs from its crc32 residue mod 11.
    ids = [new_account_id() for _ in range(200)]
    assert any(slot_of(i) % 11 != shard_of(i, 11) for i in ids)


def test_moved_bumps_version_and_changes_one_slot() -> None:
    base = SlotMap.initial(4)
    after = base.moved(5, 2)
    assert after.version == 2 and base.version == 1
    assert after.shard_for_slot(5) == 2 and base.shard_for_slot(5) == 1
    assert [s for s in range(SLOT_COUNT) if after.assignment[s] != base.assignment[s]] == [5]
    with pytest.raises(SlotMapError):
        after.moved(5, 2)


def test_validation() -> None:
    with pytest.raises(SlotMapError):
        SlotMap(0, (0,) * SLOT_COUNT)
    with pytest.raises(SlotMapError):
        SlotMap(1, (0,) * (SLOT_COUNT - 1))
    with pytest.raises(SlotMapError):
        SlotMap(1, (-1,) + (0,) * (SLOT_COUNT - 1))
    with pytest.raises(SlotMapError):
        SlotMap.initial(1).shard_for_slot(SLOT_COUNT)


def test_wire_round_trip_and_rejects() -> None:
    slot_map = SlotMap.initial(3).moved(7, 0).moved(SLOT_COUNT - 1, 1)
    wire = slot_map.to_wire()
    assert SlotMap.from_wire(wire) == slot_map
    single = SlotMap.initial(1).to_wire()
    assert single["runs"] == [[0, 0]]
    bad = [
        None,
        {"version": 1, "runs": [[0, 0]]},
        {"version": 1, "slot_count": 7, "runs": [[0, 0]]},
        {"version": 1, "slot_count": SLOT_COUNT, "runs": []},
        {"version": 1, "slot_count": SLOT_COUNT, "runs": [[1, 0]]},
        {"version": 1, "slot_count": SLOT_COUNT, "runs": [[0, 0], [0, 1]]},
        {"version": 1, "slot_count": SLOT_COUNT, "runs": [[0, "0"]]},
        {"version": 0, "slot_count": SLOT_COUNT, "runs": [[0, 0]]},
    ]
    for wire_form in bad:
        with pytest.raises(SlotMapError):
            SlotMap.from_wire(wire_form)


def test_payment_ids_still_carry_their_original_shard() -> None:
    # An id keeps naming the shard it was made for (its home); after its slot moves, the home
    # answers with a redirect to the slot (ledger/slot_move.py locate; ARCHITECTURE.md).
    pid = payment_id_for("ptn_x", secrets.token_hex(4), 3)
    assert shard_of_payment(pid, 4) == 3
