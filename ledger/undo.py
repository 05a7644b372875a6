"""The undo log that makes every decision atomic. Pure: no I/O.

A shard decides a batch command by command, in memory, into one WriteSet. A command that
raises half-way (a bug, or a value that cannot be stored or encoded) must leave memory and
the WriteSet exactly as they were before it, or the batch would commit what the partner was
told failed. So the batcher wraps every command in `ShardState.begin` / `commit` /
`rollback`, and the decision code changes long-lived state only through this log:

- `setattr(obj, name, value)` and `setitem(mapping, key, value)` record the old value (or its
  absence) before writing;
- `on_undo(fn)` records a compensating action for what has no field to restore (the fraud
  registry's in-memory versions, say);
- `defer(fn, *args)` queues an effect that runs only once the command has succeeded, checks
  included (the fraud windows' `record`: a window that saw a payment that was then refused
  would count it).

WriteSet lists only grow during a batch, so they are rolled back by length
(`WriteSet.mark` / `truncate`), not entry by entry.

Outside begin/commit (code that calls the decisions directly: unit tests, the decision
microbenchmark) the log is inactive: writes just happen, compensations are not kept, and
deferred effects run at once.

`fault_at` is for tests: the n-th recorded step raises `InjectedFault`, so a property test
can fail a decision at each of its steps in turn and check that nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["InjectedFault", "UndoLog"]

_MISSING = object()
_ATTR, _ITEM, _CALL = 0, 1, 2


class InjectedFault(RuntimeError):
    """Raised by a step the test chose (UndoLog.fault_at)."""


class UndoLog:
    __slots__ = ("_deferred", "_entries", "active", "fault_at", "steps")

    def __init__(self) -> None:
        self._entries: list[tuple[int, Any, Any, Any]] = []
        self._deferred: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.fault_at: int | None = None  # tests only: fail the n-th step (0-based)
        self.steps = 0  # steps recorded since begin (counted only under fault_at)
        self.active = False  # between begin and commit/rollback

    def step(self) -> None:
        """One step of a decision; under a test's fault_at, the chosen one raises."""
        if self.fault_at is not None:
            index = self.steps
            self.steps += 1
            if index == self.fault_at:
                raise InjectedFault(f"injected fault at step {index}")

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        if self.fault_at is not None:
            self.step()
        if self.active:
            self._entries.append((_ATTR, obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def setitem(self, mapping: Any, key: Any, value: Any) -> None:
        if self.fault_at is not None:
            self.step()
        if self.active:
            self._entries.append((_ITEM, mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def on_undo(self, fn: Callable[[], None]) -> None:
        if self.fault_at is not None:
            self.step()
        if self.active:
            self._entries.append((_CALL, fn, None, None))

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        if self.fault_at is not None:
            self.step()
        if self.active:
            self._deferred.append((fn, args))
        else:
            fn(*args)

    def written_items(self) -> list[tuple[Any, Any]]:
        """(mapping, key) of every setitem since begin: what the command wrote into maps."""
        return [(target, key) for kind, target, key, _ in self._entries if kind == _ITEM]

    def begin(self) -> None:
        self._entries.clear()
        self._deferred.clear()
        self.steps = 0
        self.active = True

    def rollback(self) -> None:
        """Undo every recorded change, newest first, and drop the deferred effects."""
        entries = self._entries
        while entries:
            kind, target, key, old = entries.pop()
            if kind == _ATTR:
                setattr(target, key, old)
            elif kind == _ITEM:
                if old is _MISSING:
                    target.pop(key, None)
                else:
                    target[key] = old
            else:
                target()
        self._deferred.clear()
        self.active = False

    def commit(self) -> list[tuple[Callable[..., None], tuple[Any, ...]]]:
        """Forget the undo entries; return the deferred effects for the caller to run."""
        self._entries.clear()
        self.active = False
        deferred = self._deferred
        self._deferred = []
        return deferred
