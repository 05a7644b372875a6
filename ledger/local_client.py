"""The shard client of a node for the shard it owns: the ShardWorker in the same event loop.

In the node topology (quickpay.node) one process serves HTTP and owns one shard. Its
gateway calls that shard through this client instead of a socket: no framing, no encoding,
no system call and no second process to wake per payment. It keeps ShardClient's contract:
the same `call(op, args)`, the same errors (ShardError for an error answer, ShardOverloaded
beyond `in_flight_max`, ShardUnavailable past the call's deadline), so the gateway cannot
tell the difference. The worker validates every command at intake (ledger/validate.py)
whichever way it arrives; what a socket would have refused to encode (an int beyond 64 bits,
a lone surrogate) those checks refuse too.

Arguments are handed over, not copied: the gateway builds a fresh dict per call and never
touches it again. Answers are fresh dicts too (Transfer.to_wire, the read handlers).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Protocol

from .client import ShardError, ShardOverloaded, ShardUnavailable

__all__ = ["LocalShardClient"]

_SWEEP_INTERVAL_S = 0.25


class _Dispatcher(Protocol):
    def dispatch(self, op: str, args: Any, reply: Any) -> None: ...


class LocalShardClient:
    def __init__(
        self, worker: _Dispatcher, shard: int, *, call_timeout_s: float = 10.0, in_flight_max: int = 20_000
    ) -> None:
        self.worker = worker
        self.address = f"local:shard-{shard}"
        self.call_timeout_s = call_timeout_s
        self.in_flight_max = in_flight_max
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return not self._closed

    async def connect(self) -> None:
        if self._closed:
            raise ShardUnavailable(f"{self.address}: client closed")

    async def call(self, op: str, args: Any = None) -> Any:
        if self._closed:
            raise ShardUnavailable(f"{self.address}: client closed")
        pending = self._pending
        if len(pending) >= self.in_flight_max:
            raise ShardOverloaded(f"{len(pending)} calls in flight to {self.address}")
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        request_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        pending[request_id] = (future, time.monotonic() + self.call_timeout_s)

        def reply(ok: bool, result: Any) -> None:
            if pending.pop(request_id, None) is None or future.done():
                return  # timed out or closed meanwhile
            if ok:
                future.set_result(result)
            else:
                future.set_exception(ShardError(result))

        self.worker.dispatch(op, args, reply)
        return await future

    async def _sweep(self) -> None:
        # One timer for all calls, as ShardClient does: a stalled writer (PostgreSQL gone)
        # answers ShardUnavailable at the deadline instead of holding requests forever.
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            now = time.monotonic()
            for request_id in [rid for rid, (_, deadline) in self._pending.items() if deadline < now]:
                future, _ = self._pending.pop(request_id)
                if not future.done():
                    future.set_exception(
                        ShardUnavailable(f"no answer from {self.address} within {self.call_timeout_s}s")
                    )

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(ShardUnavailable(f"{self.address}: client closed"))
