"""A worker's plan and its connections: raw asyncio protocols that write prebuilt request bytes
(only the idempotency key spliced in) and parse just enough HTTP/1.1 of the answer."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Protocol

from loadtest.generator.spec import (
    _RESPONSE_BODY_BYTES_MAX,
    _RESPONSE_HEAD_BYTES_MAX,
    RequestTemplate,
)

# --------------------------------------------------------------------------------------------
# Worker side: one asyncio driver per process.


@dataclasses.dataclass(frozen=True)
class _WorkerPlan:
    host: str
    port: int
    worker_index: int
    rate_per_s: float
    count: int
    start_offset_s: float
    duration_s: float
    warmup_s: float
    timeout_s: float
    connections_max: int
    retry_every: int
    run_id: str
    requests: list[RequestTemplate]
    poll_interval_s: float


class ConnectionOwner(Protocol):
    """What a connection calls back on its worker's driver (loadtest.generator.worker._Driver)."""

    def on_connected(self, connection: _Connection) -> None: ...
    def on_connection_lost(self, connection: _Connection) -> None: ...
    def on_response(self, connection: _Connection, item: tuple[Any, ...], status: int) -> None: ...
    def on_request_failed(self, intended: float, record: bool, *, timeout: bool) -> None: ...


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying at most one request at a time (no pipelining)."""

    __slots__ = (
        "body_left",
        "buffer",
        "chunked",
        "close_after",
        "closed",
        "connected",
        "driver",
        "intended",
        "item",
        "record",
        "status",
        "transport",
    )

    def __init__(self, driver: ConnectionOwner) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.intended = 0.0
        self.record = False
        self.item: tuple[Any, ...] | None = None  # the in-flight request, None when idle
        self.body_left = -1  # -1: reading the head; -2: read until close; >= 0: body bytes
        self.chunked = False
        self.close_after = False
        self.status = 0
        self.closed = False
        self.connected = False

    # asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected = True
        self.driver.on_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.item is not None:
            if self.body_left == -2 and not self.chunked and self.status:
                # Body delimited by connection close: the response is complete.
                self._finish()
            else:
                self.item = None
                self.driver.on_request_failed(self.intended, self.record, timeout=False)
        self.driver.on_connection_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.item is None:
            # Bytes without a request in flight: the server is not speaking HTTP/1.1 to us.
            self._abort()
            return
        buffer = self.buffer
        if not buffer and self.body_left == -1:
            # Fast path: the whole response usually arrives in one segment.
            end = data.find(b"\r\n\r\n")
            if end > 0 and self._parse_head(data[:end].lower()):
                if not self.chunked and self.body_left >= 0 and len(data) == end + 4 + self.body_left:
                    self._finish()
                    return
                buffer += data[end + 4 :]
                self._continue(buffer)
                return
        buffer += data
        self._continue(buffer)

    def _continue(self, buffer: bytearray) -> None:
        while self.item is not None:
            if self.body_left == -1:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _RESPONSE_HEAD_BYTES_MAX:
                        self._fail()
                    return
                if not self._parse_head(bytes(buffer[:end]).lower()):
                    self._fail()
                    return
                del buffer[: end + 4]
            if self.chunked:
                if not self._consume_chunks(buffer):
                    return
            elif self.body_left == -2:
                if len(buffer) > _RESPONSE_BODY_BYTES_MAX:
                    self._fail()
                buffer.clear()
                return
            else:
                if len(buffer) < self.body_left:
                    return
                del buffer[: self.body_left]
            self._finish()
            return

    # parsing -----------------------------------------------------------------------------
    def _parse_head(self, head: bytes) -> bool:
        if not head.startswith(b"http/1."):
            return False
        try:
            self.status = int(head[9:12])
        except ValueError:
            return False
        self.close_after = head.startswith(b"http/1.0") or b"\r\nconnection: close" in head
        self.chunked = b"\r\ntransfer-encoding: chunked" in head
        if self.chunked:
            self.body_left = 0
            return True
        position = head.find(b"\r\ncontent-length:")
        if position >= 0:
            start = position + 17
            end = head.find(b"\r\n", start)
            try:
                self.body_left = int(head[start:] if end < 0 else head[start:end])
            except ValueError:
                return False
            return 0 <= self.body_left <= _RESPONSE_BODY_BYTES_MAX
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.body_left = 0
            return self.status >= 200  # 1xx interim responses are not supported
        self.body_left = -2
        self.close_after = True
        return True

    def _consume_chunks(self, buffer: bytearray) -> bool:
        """Consume complete chunks; True once the terminating chunk and trailers are read."""
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            try:
                size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail()
                return False
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", end)
                if buffer[end : end + 4] == b"\r\n\r\n":
                    del buffer[: end + 4]
                    return True
                if trailer_end < 0:
                    return False
                del buffer[: trailer_end + 4]
                return True
            if len(buffer) < end + 2 + size + 2:
                return False
            self.body_left += size
            if self.body_left > _RESPONSE_BODY_BYTES_MAX:
                self._fail()
                return False
            del buffer[: end + 2 + size + 2]

    # outcomes ----------------------------------------------------------------------------
    def send(self, item: tuple[Any, ...]) -> None:
        self.item = item
        self.intended = item[0]
        self.record = item[1]
        self.body_left = -1
        self.chunked = False
        self.transport.write(item[2])  # type: ignore[union-attr]

    def _finish(self) -> None:
        item = self.item
        self.item = None
        self.body_left = -1
        if self.close_after:
            self._abort()
        self.driver.on_response(self, item, self.status)  # type: ignore[arg-type]

    def _fail(self) -> None:
        self.item = None
        self.driver.on_request_failed(self.intended, self.record, timeout=False)
        self._abort()

    def _abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def timed_out(self) -> None:
        self.item = None
        self.driver.on_request_failed(self.intended, self.record, timeout=True)
        self._abort()
