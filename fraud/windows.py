"""Sliding-window state for count / sum / distinct aggregates, bounded in memory.

One WindowStore per key (e.g. `debtor`, or the pair `(debtor, ip)`) holds the recent
events of every key value, retained for the longest window any active rule uses over
that key; shorter windows over the same key read the same events. So
`count(by debtor, 10m)`, `sum(amount, by debtor, 1h)` and `count(by debtor, 1h)` cost
one dict lookup per payment together.

Window semantics: a window of W seconds evaluated at time t (ms) holds the recorded
events with `at_ms > t - W * 1000`; an event exactly W seconds old is out.

Per key value we keep event times and *cumulative* amounts (lists of ints), so the
count and sum of any window are one bisect away: count = events after the cut, sum =
last cumulative - cumulative just before the cut. Distinct counts keep, per (field,
window), an ordered map value -> last seen time, oldest first.

Memory bounds:
  * each WindowStore keeps at most `keys_max` key values; recording one moves it to the
    most-recently-updated end and, when full, the least-recently-updated one is evicted
    (its history is forgotten, so its next aggregates start from zero);
  * each key value keeps at most `events_per_key_max` events; the oldest is dropped
    first. Each distinct tracker keeps at most `events_per_key_max` values, dropping
    the value seen longest ago.

Refunds (`WindowStore.refund`): each event keeps the id of its payment (`ids`, parallel
to `times_ms`), so a refund finds the event it reverses. A partial refund lowers the
event's amount (every cumulative sum from that event on drops by the refunded amount,
so sum() windows drop, count() windows do not); once the event's amount reaches zero
(the payment is refunded in full) the event is deleted, and count() windows drop too.
Distinct trackers are not changed by refunds (a refund does not undo that the debtor
used that device or paid that creditor). A refund for an event no longer held (expired,
trimmed, evicted key, or never recorded) changes nothing. Cost: a bisect plus a scan of
the ids recorded at or after the payment's time, and a rewrite of the cumulative sums
after the event: O(events after it) <= events_per_key_max, on the refund path only.

Recording never goes back in time within a key value: an event older than the newest
one already recorded is recorded at that newest time. Lists stay sorted (bisect and
prefix expiry stay valid) and a late event can only stay slightly longer, never leave
early.

Lists of ints rather than lists of tuples: ints are not tracked by the cyclic garbage
collector, so recording an event for a known key allocates no tracked objects and
triggers fewer collections (which show up as p99 spikes).

Rough footprint: ~0.4 KB per key value holding one event, +~70 bytes per extra event,
+~0.3 KB per distinct tracker. With the defaults (100,000 key values per store, 1,000
events per key) size max_keys_per_window to the memory the shard worker can spare.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from fraud.syntax import ATTRIBUTES

__all__ = ["KeyState", "WindowStore", "distinct_in_window", "key_function", "window_count_sum"]

KeyFunction = Callable[[Any], Any]


def key_function(key: tuple[str, ...]) -> KeyFunction:
    """Facts -> key value, or None when any key attribute is missing (e.g. no device_id)."""
    getters = [attrgetter(ATTRIBUTES[name][0]) for name in key]  # type: ignore[arg-type]
    if len(getters) == 1:
        return getters[0]
    first, second = getters

    def pair(facts: Any) -> tuple[Any, Any] | None:
        a = first(facts)
        b = second(facts)
        if a is None or b is None:
            return None
        return (a, b)

    return pair


class KeyState:
    """One key value's events. Plain lists, not deques: a deque allocates a 64-slot
    block (~0.5 KB) up front, and most key values hold a handful of events; lists keep
    the per-key footprint (and the cache misses per lookup) small. Expiry deletes a
    prefix with one slice deletion found by bisect."""

    __slots__ = ("cumulative_minor", "distinct", "dropped_cumulative_minor", "ids", "newest_ms", "times_ms")

    def __init__(self) -> None:
        self.times_ms: list[int] = []
        # ids[i] = the transfer id of event i (what a refund looks up); same length as times_ms.
        self.ids: list[str] = []
        # cumulative_minor[i] = sum of amounts of every event recorded up to event i.
        self.cumulative_minor: list[int] = []
        # The cumulative sum just before times_ms[0] (i.e. of all dropped events).
        self.dropped_cumulative_minor = 0
        # (field, window_ms) -> value -> last seen at_ms, in insertion order, which is
        # oldest-first because an updated value is deleted and re-inserted at the end.
        self.distinct: dict[tuple[str, int], dict[Any, int]] = {}
        self.newest_ms = -(2**62)


def window_count_sum(state: KeyState | None, cutoff_ms: int) -> tuple[int, int]:
    """(count, sum) of recorded events with at_ms > cutoff_ms (current payment excluded)."""
    if state is None:
        return 0, 0
    times = state.times_ms
    if not times:
        return 0, 0
    cumulative = state.cumulative_minor
    if times[0] > cutoff_ms:
        return len(times), cumulative[-1] - state.dropped_cumulative_minor
    index = bisect_right(times, cutoff_ms)
    return len(times) - index, cumulative[-1] - cumulative[index - 1]


def distinct_in_window(state: KeyState | None, tracker: tuple[str, int], current: Any, cutoff_ms: int) -> int:
    """Distinct values seen after cutoff_ms, counting the current payment's value too."""
    seen = state.distinct.get(tracker) if state is not None else None
    distinct = 0
    if seen:
        distinct = len(seen)
        # Values are ordered from seen-longest-ago, so the expired ones form a prefix;
        # record() trims it, so here it is only what expired since the last recording.
        for last_seen_ms in seen.values():
            if last_seen_ms > cutoff_ms:
                break
            distinct -= 1
        if current is not None and seen.get(current, cutoff_ms) > cutoff_ms:
            return distinct
    return distinct + (current is not None)


class WindowStore:
    """All key values of one key, shared by every aggregate over that key."""

    __slots__ = ("events_per_key_max", "evicted_keys", "key", "keys_max", "states")

    def __init__(self, key: tuple[str, ...], keys_max: int, events_per_key_max: int) -> None:
        self.key = key
        self.keys_max = keys_max
        self.events_per_key_max = events_per_key_max
        self.states: OrderedDict[Any, KeyState] = OrderedDict()
        self.evicted_keys = 0  # for metrics: non-zero means keys_max is too small

    def record(
        self,
        key: Any,
        at_ms: int,
        amount_minor: int,
        retention_ms: int,
        distinct_trackers: tuple[tuple[str, int, Callable[[Any], Any]], ...],
        facts: Any,
    ) -> None:
        """Add one accepted payment. distinct_trackers: (field, window_ms, getter)."""
        states = self.states
        state = states.get(key)
        if state is None:
            state = KeyState()
            states[key] = state
            if len(states) > self.keys_max:
                states.popitem(last=False)
                self.evicted_keys += 1
        else:
            states.move_to_end(key)
        if at_ms < state.newest_ms:
            at_ms = state.newest_ms
        state.newest_ms = at_ms
        times = state.times_ms
        cumulative = state.cumulative_minor
        if times:
            expired = bisect_right(times, at_ms - retention_ms)
            # Make room for the new event if the key is at its event limit.
            expired = max(expired, len(times) + 1 - self.events_per_key_max)
            if expired > 0:
                state.dropped_cumulative_minor = cumulative[expired - 1]
                del times[:expired]
                del cumulative[:expired]
                del state.ids[:expired]
        times.append(at_ms)
        state.ids.append(facts.transfer_id)
        cumulative.append((cumulative[-1] if cumulative else state.dropped_cumulative_minor) + amount_minor)
        for field_name, window_ms, getter in distinct_trackers:
            tracker = (field_name, window_ms)
            seen = state.distinct.get(tracker)
            if seen is None:
                seen = {}
                state.distinct[tracker] = seen
            tracker_cutoff_ms = at_ms - window_ms
            expired_values = []
            for seen_value, last_seen_ms in seen.items():
                if last_seen_ms > tracker_cutoff_ms:
                    break
                expired_values.append(seen_value)
            for seen_value in expired_values:
                del seen[seen_value]
            value = getter(facts)
            if value is None:
                continue
            if value in seen:
                del seen[value]  # re-insert at the end: the map stays oldest-first
            seen[value] = at_ms
            if len(seen) > self.events_per_key_max:
                del seen[next(iter(seen))]

    def refund(self, key: Any, transfer_id: str, at_ms: int, amount_minor: int) -> bool:
        """Take `amount_minor` of payment `transfer_id` (recorded at `at_ms`) out of the
        count/sum windows of key value `key`; True if its event was found.

        The event's amount drops by the refunded amount (never below zero); at zero the
        event is deleted. Does not touch the key's LRU position: a refund is not activity.
        """
        state = self.states.get(key)
        if state is None or amount_minor <= 0:
            return False
        times = state.times_ms
        # record() only ever moves an event later (late events take the newest time), so
        # the event sits at or after the first one recorded at its payment's time.
        start = bisect_left(times, at_ms)
        try:
            index = state.ids.index(transfer_id, start)
        except ValueError:
            return False
        cumulative = state.cumulative_minor
        before = cumulative[index - 1] if index > 0 else state.dropped_cumulative_minor
        left_minor = cumulative[index] - before
        taken_minor = min(amount_minor, left_minor)
        if taken_minor >= left_minor:
            del times[index]
            del state.ids[index]
            del cumulative[index]
        if taken_minor:
            cumulative[index:] = [total - taken_minor for total in cumulative[index:]]
        return True

    def drop_trackers_except(self, keep: frozenset[tuple[str, int]]) -> None:
        """Free distinct trackers no active rule reads any more (after a rule-set swap)."""
        for state in self.states.values():
            for tracker in [tracker for tracker in state.distinct if tracker not in keep]:
                del state.distinct[tracker]
