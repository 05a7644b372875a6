"""LocalShardClient keeps ShardClient's contract without a socket (ledger/local_client.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ledger.client import ShardError, ShardOverloaded, ShardUnavailable
from ledger.local_client import LocalShardClient


class FakeWorker:
    """Answers at once, later (held replies), or never."""

    def __init__(self) -> None:
        self.held: list[tuple[str, Any, Callable[[bool, Any], None]]] = []
        self.mode = "answer"

    def dispatch(self, op: str, args: Any, reply: Callable[[bool, Any], None]) -> None:
        if self.mode == "answer":
            if op == "bad":
                reply(False, {"code": "BAD_REQUEST", "message": "no"})
            else:
                reply(True, {"op": op, "args": args})
        else:
            self.held.append((op, args, reply))


async def test_answers_and_error_answers() -> None:
    client = LocalShardClient(FakeWorker(), 0)
    assert await client.call("ping", {"x": 1}) == {"op": "ping", "args": {"x": 1}}
    with pytest.raises(ShardError) as caught:
        await client.call("bad")
    assert caught.value.code == "BAD_REQUEST"
    await client.close()
    with pytest.raises(ShardUnavailable):
        await client.call("ping")


async def test_in_flight_bound_and_deadline() -> None:
    import asyncio

    worker = FakeWorker()
    worker.mode = "hold"
    client = LocalShardClient(worker, 0, call_timeout_s=0.3, in_flight_max=2)
    first = asyncio.ensure_future(client.call("pay", 1))
    second = asyncio.ensure_future(client.call("pay", 2))
    await asyncio.sleep(0)
    with pytest.raises(ShardOverloaded):
        await client.call("pay", 3)
    with pytest.raises(ShardUnavailable):
        await first  # no answer within the deadline
    with pytest.raises(ShardUnavailable):
        await second
    # a late answer after the deadline is dropped, not an error
    worker.held[0][2](True, "late")
    worker.mode = "answer"
    assert await client.call("ping") == {"op": "ping", "args": None}  # the bound frees up
    await client.close()


async def test_close_fails_pending_calls() -> None:
    import asyncio

    worker = FakeWorker()
    worker.mode = "hold"
    client = LocalShardClient(worker, 1)
    pending = asyncio.ensure_future(client.call("pay", 1))
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(ShardUnavailable):
        await pending
    assert client.address == "local:shard-1" and not client.connected
