"""The local socket protocol between gateways, relays and shard workers.

A frame is a 4-byte big-endian length and a MessagePack array of messages.
Requests are [request_id, op, args]; responses are [request_id, ok, result].
Writers collect the messages of one event-loop tick into one frame, so a burst
of payments crosses the socket in one write and one read (batching and
pipelining, with no per-payment round trip of its own).
"""
from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["FRAME_MAX_BYTES", "FrameError", "encode_frame", "FrameDecoder", "parse_address"]

FRAME_MAX_BYTES = 64 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class FrameError(Exception):
    pass


def encode_frame(messages: list[Any]) -> bytes:
    payload = _encoder.encode(messages)
    if len(payload) > FRAME_MAX_BYTES:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {FRAME_MAX_BYTES}")
    return len(payload).to_bytes(4, "big") + payload


class FrameDecoder:
    """Incremental decoder: feed bytes, get the complete frames' messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages: list[Any] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 4:
            size = int.from_bytes(buffer[offset:offset + 4], "big")
            if size > FRAME_MAX_BYTES:
                raise FrameError(f"incoming frame of {size} bytes exceeds {FRAME_MAX_BYTES}")
            if len(buffer) - offset - 4 < size:
                break
            messages.extend(_decoder.decode(memoryview(buffer)[offset + 4:offset + 4 + size]))
            offset += 4 + size
        if offset:
            del buffer[:offset]
        return messages


def parse_address(address: str) -> tuple[str, str | int]:
    """'unix:/path' -> ('unix', path); 'tcp:host:port' or 'host:port' -> (host, port)."""
    if address.startswith("unix:"):
        return "unix", address[5:]
    if address.startswith("tcp:"):
        address = address[4:]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad shard address {address!r}: use unix:/path or tcp:host:port")
    return host, int(port)
