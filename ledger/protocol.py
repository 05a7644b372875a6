"""The local socket protocol between gateways, relays and shard workers.

A frame is a 4-byte big-endian length and a MessagePack array of messages.
Requests are [request_id, op, args]; responses are [request_id, ok, result].
Writers collect the messages of one event-loop tick into one frame, so a burst
of payments crosses the socket in one write and one read (batching and
pipelining, with no per-payment round trip of its own).

`encode_frames` encodes a tick's messages as one array (the fast path); if that
fails or is too big, it encodes each message on its own (`encode_message`) and
joins the good ones behind one array header (`join_frames`): a message that
cannot be encoded (an int beyond 64 bits, a lone surrogate) or is too big fails
alone, and never takes the other messages of its tick with it.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "FRAME_MAX_BYTES",
    "MESSAGE_MAX_BYTES",
    "FrameDecoder",
    "FrameError",
    "MessageError",
    "encode_frame",
    "encode_frames",
    "encode_message",
    "join_frames",
    "parse_address",
]

FRAME_MAX_BYTES = 64 * 1024 * 1024
# One request or answer: whatever fits in a frame with its array header.
MESSAGE_MAX_BYTES = FRAME_MAX_BYTES - 5

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class FrameError(Exception):
    pass


class MessageError(ValueError):
    """One message could not be encoded, or is larger than MESSAGE_MAX_BYTES."""


def encode_message(message: Any) -> bytes:
    try:
        encoded = _encoder.encode(message)
    except Exception as exc:  # TypeError, OverflowError, UnicodeEncodeError, RecursionError
        raise MessageError(f"message cannot be encoded: {exc}") from None
    if len(encoded) > MESSAGE_MAX_BYTES:
        raise MessageError(f"message of {len(encoded)} bytes exceeds {MESSAGE_MAX_BYTES}")
    return encoded


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def join_frames(encoded: list[bytes]) -> list[bytes]:
    """Frames (length prefix + MessagePack array) holding the already-encoded messages, in order."""
    frames: list[bytes] = []
    start = 0
    while start < len(encoded):
        end, size = start, 0
        # 5 bytes of array header at most; every message is <= MESSAGE_MAX_BYTES < FRAME_MAX_BYTES.
        while end < len(encoded) and (end == start or size + len(encoded[end]) + 5 <= FRAME_MAX_BYTES):
            size += len(encoded[end])
            end += 1
        header = _array_header(end - start)
        frames.append((size + len(header)).to_bytes(4, "big") + header + b"".join(encoded[start:end]))
        start = end
    return frames


def encode_frames(messages: list[Any]) -> tuple[list[bytes], list[tuple[int, MessageError]]]:
    """Frames holding every encodable message, and (index, error) for each one that is not.

    The common case encodes the whole list at once (as fast as before); only when
    that fails, or the frame would be too big, is each message encoded on its own.
    """
    try:
        payload = _encoder.encode(messages)
    except Exception:
        payload = None
    if payload is not None and len(payload) <= FRAME_MAX_BYTES:
        return [len(payload).to_bytes(4, "big") + payload], []
    encoded: list[bytes] = []
    failures: list[tuple[int, MessageError]] = []
    for index, message in enumerate(messages):
        try:
            encoded.append(encode_message(message))
        except MessageError as error:
            failures.append((index, error))
    return join_frames(encoded), failures


def encode_frame(messages: list[Any]) -> bytes:
    """All messages in one frame; raises MessageError if any one cannot be encoded."""
    frames = join_frames([encode_message(m) for m in messages])
    if len(frames) != 1:
        raise FrameError(f"{len(messages)} messages do not fit in one frame of {FRAME_MAX_BYTES} bytes")
    return frames[0]


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
            size = int.from_bytes(buffer[offset : offset + 4], "big")
            if size > FRAME_MAX_BYTES:
                raise FrameError(f"incoming frame of {size} bytes exceeds {FRAME_MAX_BYTES}")
            if len(buffer) - offset - 4 < size:
                break
            try:
                decoded = _decoder.decode(memoryview(buffer)[offset + 4 : offset + 4 + size])
            except msgspec.DecodeError as exc:
                raise FrameError(f"malformed frame: {exc}") from None
            if not isinstance(decoded, list):
                raise FrameError("malformed frame: not an array of messages")
            messages.extend(decoded)
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
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad shard address {address!r}: use unix:/path or tcp:host:port")
    return host, int(port)
