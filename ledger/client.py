"""Client side of the shard protocol: one connection, many requests in flight.

Requests issued in the same event-loop tick leave in one frame; answers come
back as the shard commits, matched by request id. Every call has a deadline and
the number in flight is bounded. A connection carries no request until both ends
have proven they hold the cluster secret (ledger.handshake).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, cast

from .handshake import HANDSHAKE_TIMEOUT_S, ClientHandshake, HandshakeError, cluster_secret
from .protocol import FrameDecoder, FrameError, encode_frames, parse_address

__all__ = ["ShardAuthenticationError", "ShardClient", "ShardError", "ShardOverloaded", "ShardUnavailable"]


class ShardUnavailable(ConnectionError):
    """The shard could not be reached, or the connection dropped with the call's outcome unknown."""


class ShardAuthenticationError(ShardUnavailable):
    """The handshake failed: no cluster secret here, or the server does not hold the same one."""


class ShardOverloaded(Exception):
    """Too many calls in flight to one shard."""


class ShardError(Exception):
    """The shard answered with an error: args[0] is {"code", "message"} (e.g. OVERLOADED,
    BAD_REQUEST, INTERNAL). A call this client could not encode fails with BAD_REQUEST."""

    @property
    def code(self) -> str:
        detail = self.args[0] if self.args else None
        return str(detail.get("code", "")) if isinstance(detail, dict) else ""

    @property
    def message(self) -> str:
        detail = self.args[0] if self.args else None
        return str(detail.get("message", "")) if isinstance(detail, dict) else str(detail)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: ShardClient, handshake: ClientHandshake) -> None:
        self.client = client
        self.decoder = FrameDecoder()
        self.handshake: ClientHandshake | None = handshake
        self.authenticated: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Its outcome is read by connect(), unless connect() gave up first.
        self.authenticated.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            assert self.transport is not None
            try:
                step = self.handshake.feed(data)
            except HandshakeError as exc:
                self.handshake = None
                self.authenticated.set_exception(
                    ShardAuthenticationError(f"shard at {self.client.address} refused: {exc}")
                )
                self.transport.close()
                return
            if step.send:
                self.transport.write(step.send)
            if not step.done:
                return
            self.handshake = None
            self.authenticated.set_result(None)
            data = step.leftover
            if not data:
                return
        try:
            messages = self.decoder.feed(data)
        except FrameError:
            # A shard never sends a malformed frame; if one arrives, the stream is lost:
            # drop the connection (in-flight calls get ShardUnavailable, retry with the key).
            if self.client._transport is not None:
                self.client._transport.abort()
            return
        for message in messages:
            self.client._on_response(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated.done():
            self.authenticated.set_exception(
                ShardAuthenticationError(
                    f"shard at {self.client.address} closed the connection during the handshake "
                    "(is QUICKPAY_CLUSTER_SECRET the same on both ends?)"
                )
            )
            return
        if self.authenticated.exception() is None and self.client._transport is self.transport:
            self.client._on_lost(exc)


class ShardClient:
    def __init__(
        self,
        address: str,
        *,
        call_timeout_s: float = 10.0,
        in_flight_max: int = 20_000,
        connect_timeout_s: float = 2.0,
        secret: bytes | str | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        """`secret`: the cluster secret; by default QUICKPAY_CLUSTER_SECRET, read at connect."""
        self.address = address
        self._secret = secret
        self.handshake_timeout_s = handshake_timeout_s
        self.call_timeout_s = call_timeout_s
        self.in_flight_max = in_flight_max
        self.connect_timeout_s = connect_timeout_s
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._outgoing: list[Any] = []
        self._flush_scheduled = False
        self._ids = itertools.count(1)
        self._connecting: asyncio.Future[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> None:
        if self.connected:
            return
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                secret = cluster_secret(self._secret)
            except HandshakeError as exc:
                raise ShardAuthenticationError(str(exc)) from None
            kind, where = parse_address(self.address)

            def factory() -> _Protocol:
                return _Protocol(self, ClientHandshake(secret))

            if kind == "unix":
                coro = loop.create_unix_connection(factory, str(where))
            else:
                coro = loop.create_connection(factory, kind, int(where))
            try:
                transport, protocol = cast(
                    "tuple[asyncio.Transport, _Protocol]", await asyncio.wait_for(coro, self.connect_timeout_s)
                )
            except (TimeoutError, OSError) as exc:
                raise ShardUnavailable(f"shard at {self.address} unreachable: {exc}") from exc
            try:
                await asyncio.wait_for(asyncio.shield(protocol.authenticated), self.handshake_timeout_s)
            except TimeoutError:
                transport.close()
                raise ShardAuthenticationError(
                    f"shard at {self.address}: no handshake within {self.handshake_timeout_s}s"
                ) from None
            except BaseException:
                transport.close()
                raise
            self._transport = transport
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = loop.create_task(self._sweep())
            self._connecting.set_result(None)
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # mark retrieved
            raise
        finally:
            self._connecting = None

    async def call(self, op: str, args: Any = None) -> Any:
        if not self.connected:
            await self.connect()
        if len(self._pending) >= self.in_flight_max:
            raise ShardOverloaded(f"{len(self._pending)} calls in flight to {self.address}")
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[request_id] = (future, time.monotonic() + self.call_timeout_s)
        self._outgoing.append((request_id, op, args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if not outgoing:
            return
        if self._transport is None or self._transport.is_closing():
            self._fail_all(ShardUnavailable(f"connection to {self.address} lost"))
            return
        # Each call is encoded on its own when the batch cannot be encoded as a whole:
        # one unencodable call (an int beyond 64 bits, a lone surrogate, too big) fails
        # alone, and the others in this flush still leave.
        frames, failures = encode_frames(outgoing)
        for index, error in failures:
            entry = self._pending.pop(outgoing[index][0], None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(ShardError({"code": "BAD_REQUEST", "message": str(error)}))
        for frame in frames:
            self._transport.write(frame)

    def _on_response(self, message: Any) -> None:
        try:
            request_id, ok, result = message
        except (TypeError, ValueError):
            return  # not an answer of ours
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return  # timed out earlier
        future = entry[0]
        if future.done():
            return
        if ok:
            future.set_result(result)
        else:
            future.set_exception(ShardError(result))

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_all(ShardUnavailable(f"connection to {self.address} lost: {exc}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)

    async def _sweep(self) -> None:
        # One timer for all calls: cheaper than a wait_for per payment.
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            expired = [rid for rid, (_, deadline) in self._pending.items() if deadline < now]
            for rid in expired:
                future, _ = self._pending.pop(rid)
                if not future.done():
                    future.set_exception(
                        ShardUnavailable(f"no answer from {self.address} within {self.call_timeout_s}s")
                    )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._transport is not None:
            self._transport.close()
        self._fail_all(ShardUnavailable("client closed"))
