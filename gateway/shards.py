"""The gateway's view of the shards: routing, clients, and the creditor cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from kernel.ids import is_striped, shard_of
from ledger.client import ShardClient

__all__ = ["ShardRouter"]

_ACCOUNT_CACHE_MAX = 200_000


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

    def shard_of(self, entity_id: str) -> int:
        return shard_of(entity_id, self.count)

    def client_for(self, entity_id: str) -> Any:
        return self.clients[shard_of(entity_id, self.count)]

    async def call(self, shard: int, op: str, args: Any = None) -> Any:
        return await self.clients[shard].call(op, args)

    async def broadcast(self, op: str, args: Any = None) -> list[Any]:
        return list(await asyncio.gather(*(c.call(op, args) for c in self.clients)))

    def known_account(self, account_id: str) -> dict[str, Any] | None:
        """The cached facts of an account, without asking its shard (None: not cached)."""
        return self._accounts.get(account_id)

    async def lookup_account(self, account_id: str) -> dict[str, Any] | None:
        cached = self._accounts.get(account_id)
        if cached is not None:
            return cached
        shard = 0 if is_striped(account_id) else self.shard_of(account_id)
        found: dict[str, Any] | None = await self.clients[shard].call("lookup_account", {"id": account_id})
        if found is not None:
            self._accounts[account_id] = found
            if len(self._accounts) > _ACCOUNT_CACHE_MAX:
                self._accounts.popitem(last=False)
        return found

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
