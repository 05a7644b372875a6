"""Slots and the versioned slot map (issue 21): the pure core of elastic shards.

Every routable entity belongs to one of SLOT_COUNT slots; a SlotMap (versioned) assigns
each slot to a shard. Nothing in the running processes uses this yet (see ARCHITECTURE.md,
"Elastic shards"): today's routing is still kernel.ids.shard_of.

The slot function is `zlib.crc32(id) % SLOT_COUNT`, the same hash as today's
`shard_of(id, n) = crc32(id) % n`. The initial map of an n-shard ledger assigns slot s to
shard `s % n`. That reproduces today's routing for every existing id exactly when n divides
SLOT_COUNT: then `(crc32 % SLOT_COUNT) % n == crc32 % n` for every crc32. If n does not
divide SLOT_COUNT it fails for some ids (two crc32 values in one slot fall in different
residues mod n), and no slot->shard map can fix that, because a slot is all an id's route
keeps. So SLOT_COUNT is chosen with many divisors: 5,040 = 2^4*3^2*5*7 is divisible by every
shard count 1..10, 12, 14, 15, 16, 18, 20, 21, 24, 28, 30, ... (`compatible_shard_count`).
A ledger whose shard count does not divide it cannot adopt slots in place (it would first
need every id's rows re-homed); `initial` refuses it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "SLOT_COUNT",
    "SLOT_MAP_SHARDS_MAX",
    "SlotMap",
    "SlotMapError",
    "compatible_shard_count",
    "slot_of",
]

SLOT_COUNT: Final = 5_040  # slots of every ledger; never changes once data exists
SLOT_MAP_SHARDS_MAX: Final = 1_024  # shards a slot map may name


class SlotMapError(ValueError):
    """A slot map (or its wire form) that is not valid."""


def slot_of(entity_id: str) -> int:
    """The slot of an account or agreement id: crc32 of its UTF-8 bytes, mod SLOT_COUNT.
    Stable across processes and versions (zlib.crc32 is not salted, unlike hash())."""
    return zlib.crc32(entity_id.encode()) % SLOT_COUNT


def compatible_shard_count(shard_count: int) -> bool:
    """True if the initial map of a `shard_count`-shard ledger routes every id as
    kernel.ids.shard_of does today."""
    return 0 < shard_count <= SLOT_MAP_SHARDS_MAX and SLOT_COUNT % shard_count == 0


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which shard owns each slot, at a version. Frozen: a change is a new map (`moved`)."""

    version: int
    assignment: tuple[int, ...]  # slot -> shard, SLOT_COUNT entries

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise SlotMapError("version must be an int >= 1")
        if len(self.assignment) != SLOT_COUNT:
            raise SlotMapError(f"assignment must have {SLOT_COUNT} entries, has {len(self.assignment)}")
        for shard in self.assignment:
            if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < SLOT_MAP_SHARDS_MAX:
                raise SlotMapError(f"shard {shard!r} out of range [0, {SLOT_MAP_SHARDS_MAX})")

    @classmethod
    def initial(cls, shard_count: int) -> SlotMap:
        """Version 1 of an n-shard ledger: slot s on shard s % n (today's routing, see above)."""
        if not compatible_shard_count(shard_count):
            raise SlotMapError(f"{shard_count} shards do not divide {SLOT_COUNT} slots")
        return cls(1, tuple(slot % shard_count for slot in range(SLOT_COUNT)))

    def shard_for_slot(self, slot: int) -> int:
        if not 0 <= slot < SLOT_COUNT:
            raise SlotMapError(f"slot {slot} out of range")
        return self.assignment[slot]

    def shard_for(self, entity_id: str) -> int:
        return self.assignment[slot_of(entity_id)]

    def slots_of(self, shard: int) -> list[int]:
        return [slot for slot, owner in enumerate(self.assignment) if owner == shard]

    def moved(self, slot: int, to_shard: int) -> SlotMap:
        """The map after `slot` moved to `to_shard`: version + 1."""
        if self.shard_for_slot(slot) == to_shard:
            raise SlotMapError(f"slot {slot} is already on shard {to_shard}")
        assignment = list(self.assignment)
        assignment[slot] = to_shard
        return SlotMap(self.version + 1, tuple(assignment))

    # ---- wire form: {"version": v, "runs": [[first_slot, shard], ...]} ----------------
    # Run-length: a slot's shard is that of the last run starting at or before it, so the
    # initial map of n shards is SLOT_COUNT runs at worst, and a few moves add two each.
    def to_wire(self) -> dict[str, Any]:
        runs: list[list[int]] = []
        for slot, shard in enumerate(self.assignment):
            if not runs or runs[-1][1] != shard:
                runs.append([slot, shard])
        return {"version": self.version, "slot_count": SLOT_COUNT, "runs": runs}

    @classmethod
    def from_wire(cls, wire: Any) -> SlotMap:
        if not isinstance(wire, dict) or set(wire) != {"version", "slot_count", "runs"}:
            raise SlotMapError("a slot map is {version, slot_count, runs}")
        if wire["slot_count"] != SLOT_COUNT:
            raise SlotMapError(f"slot_count {wire['slot_count']!r} is not {SLOT_COUNT}")
        runs = wire["runs"]
        if not isinstance(runs, list) or not runs or len(runs) > SLOT_COUNT:
            raise SlotMapError("runs must be a non-empty list of at most SLOT_COUNT runs")
        assignment: list[int] = []
        for index, run in enumerate(runs):
            if not (isinstance(run, list) and len(run) == 2 and all(type(x) is int for x in run)):
                raise SlotMapError(f"run {index} is not [first_slot, shard]")
            first, shard = run
            if first != len(assignment) or (index == 0 and first != 0):
                raise SlotMapError(f"run {index} starts at {first}, expected {len(assignment)}")
            end = runs[index + 1][0] if index + 1 < len(runs) and isinstance(runs[index + 1], list) else SLOT_COUNT
            if not isinstance(end, int) or not first < end <= SLOT_COUNT:
                raise SlotMapError(f"run {index} is empty or out of range")
            assignment.extend([shard] * (end - first))
        return cls(wire["version"], tuple(assignment))
