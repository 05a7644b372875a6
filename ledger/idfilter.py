"""Which transfer ids might this shard already hold? A Bloom filter over every id ever written.

The batcher used to ask PostgreSQL, once per batch, for every transfer id it did not hold in
its cache; for new payments (nearly all of them) the answer was always "none", so each batch
paid a round trip and an index probe for nothing. The filter answers "certainly new" without
I/O: a Bloom filter has no false negatives, so an id it does not contain was never written
and is decided as new. Ids it might contain (true retries of evicted transfers, and about
FALSE_POSITIVE_RATE of new ids) are looked up in PostgreSQL as before. Correctness does not
depend on the rate, only the number of lookups does.

Built at start-up from every id in `transfers` (measured in BENCHMARKS.md), extended with
each decided batch's new transfers. If a batch's write fails the worker exits, so the filter
holds no id that was not written (and an extra id would only cost a lookup).
Bounded: when the ids added reach the current filter's capacity, a new filter twice as big
is stacked on top (a scalable Bloom filter); the false-positive rates add up, which stays
below 2 x FALSE_POSITIVE_RATE. Memory: about 1.8 bytes per id at 0.1% (18 MB for 10M ids).

Backed by rbloom (Rust, its own hashing of Python's hash(): per-process, never persisted).
"""

from __future__ import annotations

from collections.abc import Iterable

from rbloom import Bloom

__all__ = ["CAPACITY_MIN", "FALSE_POSITIVE_RATE", "IdFilter"]

FALSE_POSITIVE_RATE = 0.001
CAPACITY_MIN = 1 << 20
# Each stacked filter gets half the previous one's rate, so the sum stays below 2 x the first.
_LAYERS_MAX = 24


class IdFilter:
    """A growable Bloom filter of transfer ids: `in` is False only for ids never added."""

    def __init__(
        self, expected_ids: int = 0, false_positive_rate: float = FALSE_POSITIVE_RATE, capacity_min: int = CAPACITY_MIN
    ) -> None:
        if not 0 < false_positive_rate < 0.5:
            raise ValueError("false_positive_rate must be in (0, 0.5)")
        if capacity_min < 1:
            raise ValueError("capacity_min must be >= 1")
        self._rate = false_positive_rate
        self._layers: list[Bloom] = []
        self._capacities: list[int] = []
        self._count = 0
        self._layer_count = 0
        self._grow(max(capacity_min, 2 * expected_ids))

    def _grow(self, capacity: int) -> None:
        if len(self._layers) >= _LAYERS_MAX:
            raise OverflowError("the transfer id filter cannot grow further")
        rate = self._rate / (2 ** len(self._layers))
        self._layers.append(Bloom(capacity, rate))
        self._capacities.append(capacity)
        self._layer_count = 0

    def add(self, transfer_id: str) -> None:
        if self._layer_count >= self._capacities[-1]:
            self._grow(2 * self._capacities[-1])
        self._layers[-1].add(transfer_id)
        self._layer_count += 1
        self._count += 1

    def update(self, transfer_ids: Iterable[str]) -> None:
        """Add many: in bulk into the top layer (rbloom's update, in Rust), growing as `add`
        does when the layer is full."""
        ids = transfer_ids if isinstance(transfer_ids, list) else list(transfer_ids)
        at = 0
        while at < len(ids):
            room = self._capacities[-1] - self._layer_count
            if room <= 0:
                self._grow(2 * self._capacities[-1])
                continue
            chunk = ids[at : at + room]
            self._layers[-1].update(chunk)
            self._layer_count += len(chunk)
            self._count += len(chunk)
            at += len(chunk)

    def __contains__(self, transfer_id: str) -> bool:
        for layer in self._layers:
            if transfer_id in layer:
                return True
        return False

    def __len__(self) -> int:
        """Ids added (with repeats)."""
        return self._count

    def stats(self) -> dict[str, int | float]:
        return {
            "ids": self._count,
            "layers": len(self._layers),
            "bytes": sum(layer.size_in_bits for layer in self._layers) // 8,
            "false_positive_rate_max": sum(self._rate / (2**i) for i in range(len(self._layers))),
        }
