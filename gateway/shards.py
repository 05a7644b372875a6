"""The gateway's view of the shards: routing, clients, the slot map it holds, and the
creditor cache.

Routing (issue 21): an ACCOUNT id goes to the shard the held slot map names for its slot
(`shard_of_account`); agreements, partners and payments keep their home shard, the one
their id names (`shard_of`: crc32 mod the ledger's shard count; a payment id carries its
shard). Until the first fetch the router holds version 1 (`SlotMap.initial`), which is
what shard 0 writes for a new ledger, so both route every id exactly as kernel.ids.shard_of.
A ledger whose shard count does not divide SLOT_COUNT has no slot map (ledger/slot_map_store.py):
its router holds none (`slot_map` is None) and routes accounts by `shard_of` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import OrderedDict
from typing import Any

from kernel.ids import is_striped, shard_of
from kernel.slots import SLOT_COUNT, SlotMap, SlotMapError, compatible_shard_count
from ledger.client import ShardClient, ShardError

log = logging.getLogger("quickpay.gateway")

__all__ = ["ShardRouter", "SlotMoved", "retargeted"]

_ACCOUNT_CACHE_MAX = 200_000
# The slot map fetch at start-up: each try's bound, and the wait before the next try while
# shard 0 is not up (the router holds version 1 meanwhile).
SLOT_MAP_FETCH_TIMEOUT_S = 3.0
SLOT_MAP_RETRY_S = 1.0


class SlotMoved(Exception):
    """A write refused as MOVED twice: the slot is moving (or this gateway's map lags); a
    retryable 503, never the partner's error."""


def retargeted(op: str, args: Any, shard: int, moved: dict[str, Any]) -> Any:
    """A command prepared for one shard, as sent to `shard` after `moved` (a MOVED answer). A
    payment carries the slot the answer named, so a shard that does not hold the agreement
    still guards it by its map (ledger/dispatch.py); a payment to a striped account (a
    settlement) credits the deciding shard's own stripe, so its creditor_shard is the new one's
    (a shard refuses a striped credit across shards)."""
    if op != "pay" or type(args) is not dict:
        return args
    retried = {**args, "slot": moved.get("slot")}
    if is_striped(str(args.get("creditor_account"))):
        retried["creditor_shard"] = shard
    return retried


class ShardRouter:
    def __init__(
        self, addresses: list[str], *, call_timeout_s: float = 10.0, local_clients: dict[int, Any] | None = None
    ) -> None:
        """`local_clients`: shards this process owns (the node topology), by shard number;
        each has ShardClient's call/close (ledger.local_client.LocalShardClient)."""
        self.addresses = addresses
        self.count = len(addresses)
        local = local_clients or {}
        self.clients: list[Any] = [
            local[i] if i in local else ShardClient(a, call_timeout_s=call_timeout_s) for i, a in enumerate(addresses)
        ]
        # Account existence and currency never change once opened, so a positive
        # answer can be cached for good; misses are not cached.
        self._accounts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # None: a ledger without a slot map (its shard count does not divide SLOT_COUNT).
        self.slot_map: SlotMap | None = SlotMap.initial(self.count) if compatible_shard_count(self.count) else None
        # slot -> shard, read on every account route; None: route accounts by shard_of.
        self._slot_owner: tuple[int, ...] | None = self.slot_map.assignment if self.slot_map is not None else None
        self.slot_map_fetched = self.slot_map is None  # True once shard 0 gave its map (else version 1, assumed)
        self._refetch: asyncio.Future[dict[str, Any]] | None = None  # the map fetch a MOVED started

    def shard_of(self, entity_id: str) -> int:
        """The home shard of an agreement or partner id (never moves)."""
        return shard_of(entity_id, self.count)

    def client_for(self, entity_id: str) -> Any:
        return self.clients[shard_of(entity_id, self.count)]

    def shard_of_account(self, account_id: str) -> int:
        """The shard that owns a (customer) account under the held slot map."""
        owner = self._slot_owner
        if owner is None:
            return shard_of(account_id, self.count)
        return owner[zlib.crc32(account_id.encode()) % SLOT_COUNT]

    def client_for_account(self, account_id: str) -> Any:
        return self.clients[self.shard_of_account(account_id)]

    def hold(self, slot_map: SlotMap) -> bool:
        """Hold `slot_map` if it is newer than the one held; True if it was taken."""
        if self.slot_map is None:
            raise SlotMapError(f"a {self.count}-shard ledger has no slot map (its shard count does not divide it)")
        if any(owner >= self.count for owner in slot_map.assignment):
            raise SlotMapError(f"slot map version {slot_map.version} names a shard beyond {self.count}")
        self.slot_map_fetched = True
        if slot_map.version <= self.slot_map.version:
            return False  # the same, or older than what this process already holds
        self.slot_map = slot_map
        self._slot_owner = slot_map.assignment
        return True

    async def fetch_slot_map(self) -> dict[str, Any]:
        """Ask shard 0 (the control database) for the current map and hold it; the answer
        (the shard's held version and slots, the control map and the moves in progress)."""
        answer: dict[str, Any] = await self.clients[0].call("slot_map", {"control": True})
        if self.slot_map is not None:
            self.hold(SlotMap.from_wire(answer["control"]["map"]))
        return answer

    async def call(self, shard: int, op: str, args: Any = None) -> Any:
        """Call `op` on `shard`. A write the shard refuses as MOVED (its slot is elsewhere under
        the shard's map, ledger/dispatch.py) is retried once at the shard it names, after this
        process refetched the map; MOVED again raises SlotMoved (a retryable 503)."""
        try:
            return await self.clients[shard].call(op, args)
        except ShardError as exc:
            if exc.code != "MOVED":
                raise
            moved = exc.args[0]
            target = await self.follow_moved(moved)
        try:
            return await self.clients[target].call(op, retargeted(op, args, target, moved))
        except ShardError as again:
            if again.code == "MOVED":
                raise SlotMoved(again.message) from None
            raise

    async def follow_moved(self, moved: dict[str, Any]) -> int:
        """The shard a MOVED answer names, once this process holds a map at least as new as
        the one it was given under (refetched from shard 0; one fetch at a time)."""
        target = moved.get("shard")
        if type(target) is not int or not 0 <= target < self.count:
            raise SlotMoved(f"a shard answered MOVED naming no shard of this ledger: {moved!r}")
        version = moved.get("version")
        if type(version) is int and self.slot_map is not None and version > self.slot_map.version:
            if self._refetch is None or self._refetch.done():
                self._refetch = asyncio.ensure_future(self.fetch_slot_map())
            with contextlib.suppress(Exception):  # the retry below still goes where the shard said
                await asyncio.wait_for(asyncio.shield(self._refetch), SLOT_MAP_FETCH_TIMEOUT_S)
        return target

    async def broadcast(self, op: str, args: Any = None) -> list[Any]:
        return list(await asyncio.gather(*(c.call(op, args) for c in self.clients)))

    async def fetch_slot_map_until_held(self) -> None:
        """Fetch the map from shard 0, trying again until it answers (start-up: shard 0 may
        start after this gateway worker)."""
        while not self.slot_map_fetched:
            try:
                await asyncio.wait_for(self.fetch_slot_map(), SLOT_MAP_FETCH_TIMEOUT_S)
            except Exception as exc:  # shard 0 not up yet, or its answer unreadable: try again
                held = self.slot_map.version if self.slot_map is not None else None
                log.warning("could not fetch the slot map from shard 0 (holding version %s): %r", held, exc)
                await asyncio.sleep(SLOT_MAP_RETRY_S)

    def known_account(self, account_id: str) -> dict[str, Any] | None:
        """The cached facts of an account, without asking its shard (None: not cached)."""
        return self._accounts.get(account_id)

    async def lookup_account(self, account_id: str) -> dict[str, Any] | None:
        cached = self._accounts.get(account_id)
        if cached is not None:
            return cached
        shard = 0 if is_striped(account_id) else self.shard_of_account(account_id)
        found: dict[str, Any] | None = await self.clients[shard].call("lookup_account", {"id": account_id})
        if found is not None:
            self._accounts[account_id] = found
            if len(self._accounts) > _ACCOUNT_CACHE_MAX:
                self._accounts.popitem(last=False)
        return found

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
