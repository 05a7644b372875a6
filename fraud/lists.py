"""Named string lists (block lists, allow lists) that rules test membership against."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["NamedLists"]

LIST_NAME_LENGTH_MAX = 64
LIST_VALUE_LENGTH_MAX = 256


class NamedLists:
    """Mutable named sets of strings, edited at runtime by operators.

    Rules hold no copy: they look the set up by name on every evaluation, so an `add`
    takes effect on the very next payment. Each list is capped at `entries_per_list_max`
    so an operator script gone wrong cannot exhaust the shard worker's memory.
    """

    __slots__ = ("_sets", "entries_per_list_max", "lists_max")

    def __init__(
        self,
        initial: Mapping[str, Iterable[str]] | None = None,
        *,
        entries_per_list_max: int = 1_000_000,
        lists_max: int = 1_000,
    ) -> None:
        if entries_per_list_max < 1 or lists_max < 1:
            raise ValueError("entries_per_list_max and lists_max must be at least 1")
        self.entries_per_list_max = entries_per_list_max
        self.lists_max = lists_max
        # The engine reads this dict directly on the hot path; the set objects are never
        # replaced, only mutated, so references taken by the engine stay valid.
        self._sets: dict[str, set[str]] = {}
        for name, values in (initial or {}).items():
            self.ensure(name)
            for value in values:
                self.add(name, value)

    def ensure(self, name: str) -> None:
        """Create an empty list called `name` if none exists."""
        if name in self._sets:
            return
        if not name or len(name) > LIST_NAME_LENGTH_MAX:
            raise ValueError(f"list name must be 1..{LIST_NAME_LENGTH_MAX} characters")
        if len(self._sets) >= self.lists_max:
            raise ValueError(f"too many lists (lists_max={self.lists_max})")
        self._sets[name] = set()

    def add(self, name: str, value: str) -> None:
        if not isinstance(value, str) or len(value) > LIST_VALUE_LENGTH_MAX:
            raise ValueError(f"list values must be strings of at most {LIST_VALUE_LENGTH_MAX} characters")
        self.ensure(name)
        values = self._sets[name]
        if value not in values and len(values) >= self.entries_per_list_max:
            raise ValueError(f"list {name!r} is full (entries_per_list_max={self.entries_per_list_max})")
        values.add(value)

    def remove(self, name: str, value: str) -> None:
        """Remove `value`; removing an absent value is a no-op so retries are safe."""
        values = self._sets.get(name)
        if values is not None:
            values.discard(value)

    def contains(self, name: str, value: str | None) -> bool:
        values = self._sets.get(name)
        return values is not None and value in values

    def names(self) -> list[str]:
        return sorted(self._sets)

    def snapshot(self) -> dict[str, list[str]]:
        """A sorted copy, suitable for JSON and for comparing in tests."""
        return {name: sorted(values) for name, values in sorted(self._sets.items())}

    def copy(self) -> NamedLists:
        return NamedLists(
            self.snapshot(),
            entries_per_list_max=self.entries_per_list_max,
            lists_max=self.lists_max,
        )

    def __repr__(self) -> str:
        sizes = {name: len(values) for name, values in self._sets.items()}
        return f"NamedLists({sizes})"
