"""A byte-level TCP fault proxy for tests: listens on 127.0.0.1, relays every byte to a
target address unchanged (so any handshake or authentication on the connection passes
through), and on request breaks the connections it carries:

- `drop(refuse_s)`: reset every open connection, and refuse new ones for `refuse_s`
  (accept and close at once), as a crashed or partitioned peer would;
- `stall(seconds)`: hold every byte in both directions for `seconds`, connections stay
  open (a hung peer, a full network buffer), then deliver them in order.

It runs its own event loop in a daemon thread, so synchronous and asyncio tests can
use it alike. Loopback only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

__all__ = ["FaultProxy"]

_CHUNK = 65_536


class FaultProxy:
    def __init__(self, target: str) -> None:
        """`target`: "tcp:HOST:PORT", "HOST:PORT" or "unix:/path"."""
        self.target = target
        self.port = 0
        self.connections = 0  # accepted and relayed
        self.dropped = 0  # connections reset by drop()
        self.refused = 0  # connections closed at accept during a refusal window
        self.stalled_chunks = 0  # chunks that had to wait for a stall to end
        self._refuse_until = 0.0
        self._stall_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{target}", daemon=True)

    # ---- control (from any thread) ----------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def drop(self, refuse_s: float = 0.0) -> int:
        """Reset every open connection; refuse new ones for `refuse_s`. Returns how many were reset."""
        return int(self._run(self._drop(refuse_s)))

    def stall(self, seconds: float) -> None:
        """Hold all bytes, both ways, for `seconds` from now."""
        self._stall_until = time.monotonic() + seconds

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        try:
            self._run(self._drop(0.0))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ---- the relay (in the proxy's loop) ------------------------------------------------
    async def _drop(self, refuse_s: float) -> int:
        self._refuse_until = time.monotonic() + refuse_s
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.transport.abort()  # RST: the peer sees the connection die, not a clean close
        self.dropped += len(writers) // 2
        return len(writers) // 2

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("unix:"):
            return await asyncio.open_unix_connection(self.target[len("unix:") :])
        host, _, port = self.target.removeprefix("tcp:").rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await self._open_target()
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pump(reader, upstream_writer, writer), self._pump(upstream_reader, writer, upstream_writer)
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                wait_s = self._stall_until - time.monotonic()
                if wait_s > 0:
                    self.stalled_chunks += 1
                    while wait_s > 0:  # a later stall() may extend it
                        await asyncio.sleep(wait_s)
                        wait_s = self._stall_until - time.monotonic()
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, other):
                self._writers.discard(w)
                if not w.transport.is_closing():
                    w.transport.abort()
