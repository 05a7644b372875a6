"""The shard protocol encodes each call on its own: one unencodable or oversized call
fails alone, the others that left in the same flush are answered (issue 7 §1)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ledger.protocol as protocol
from ledger.client import ShardClient, ShardError
from ledger.handshake import CLIENT_PROOF_BYTES, ServerHandshake
from ledger.protocol import FrameDecoder, FrameError, encode_frames, encode_message, join_frames


def test_joined_frame_decodes_like_one_array() -> None:
    for count in (0, 1, 15, 16, 300, 70_000):
        messages = [[i, "op", {"n": i}] for i in range(count)]
        frames = join_frames([encode_message(m) for m in messages])
        decoded = FrameDecoder().feed(b"".join(frames))
        assert decoded == messages
        if count:
            assert frames == encode_frames(messages)[0]


def test_unencodable_message_fails_alone() -> None:
    messages: list[Any] = [[1, "a", 1], [2, "b", 2**64], [3, "c", "x\ud800"], [4, "d", None]]
    frames, failures = encode_frames(messages)
    assert [i for i, _ in failures] == [1, 2]
    assert FrameDecoder().feed(b"".join(frames)) == [[1, "a", 1], [4, "d", None]]


def test_frames_split_at_the_frame_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "FRAME_MAX_BYTES", 1000)
    monkeypatch.setattr(protocol, "MESSAGE_MAX_BYTES", 995)
    messages = [[i, "x" * 300] for i in range(10)] + [[99, "y" * 2000]]
    frames, failures = encode_frames(messages)
    assert [i for i, _ in failures] == [10]
    assert len(frames) > 1 and all(len(f) - 4 <= 1000 for f in frames)
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(frames)) == [[i, "x" * 300] for i in range(10)]


def test_malformed_frame_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x00\x00\x00\x01\x01")  # a frame must hold an array


def test_client_fails_only_the_unencodable_call(tmp_path: Path) -> None:
    """Regression: an int beyond 64 bits in one call made the client's whole flush fail to
    encode; the other calls of that tick never left and hung until their deadline."""

    async def main() -> None:
        seen: list[Any] = []

        secret = b"k" * 64

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The shard side of the connect handshake (ledger/handshake.py), then frames.
            handshake = ServerHandshake(secret)
            writer.write(handshake.hello())
            step = handshake.feed(await reader.readexactly(CLIENT_PROOF_BYTES))
            assert step.done
            writer.write(step.send)
            decoder = FrameDecoder()
            while data := await reader.read(65536):
                for request_id, op, args in decoder.feed(data):
                    seen.append(op)
                    writer.write(encode_frames([(request_id, True, args)])[0][0])

        path = str(tmp_path / "s.sock")
        server = await asyncio.start_unix_server(serve, path)
        client = ShardClient("unix:" + path, call_timeout_s=30.0, secret=secret)
        try:
            await client.connect()
            calls = [
                client.call("good", 1),
                client.call("bad", {"before_seq": 2**70}),
                client.call("good", 2),
                client.call("bad", "\udc80"),
            ]
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
            assert results[0] == 1 and results[2] == 2
            for failed in (results[1], results[3]):
                assert isinstance(failed, ShardError) and failed.code == "BAD_REQUEST"
            assert seen == ["good", "good"]
            assert not client._pending
        finally:
            await client.close()
            server.close()

    asyncio.run(main())


def test_shard_error_code_and_message() -> None:
    assert ShardError({"code": "OVERLOADED", "message": "full"}).code == "OVERLOADED"
    assert ShardError("text").code == "" and ShardError("text").message == "text"
    assert msgspec.msgpack.decode(encode_message([1, 2])) == [1, 2]
