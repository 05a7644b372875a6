"""The bench's cross-check tools (issue 19, measurement honesty): the null server that gives
a generator's ceiling, aiohttp's low-level server, and wrk driven by our own request
templates. wrk itself runs here (scripts/install-bench-deps installs it as root), against
a capture server that keeps every request, so the test sees the bytes wrk sent: every
request a template's, each with a new key of the generator's length, Content-Length right."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.bench.crosscheck import agreement, wrk_ratios
from loadtest.generator import IDEMPOTENCY_KEY, RequestTemplate
from loadtest.hello import NULL_HEAD_BYTES_MAX, NullHttp, _content_length, null_answer
from loadtest.wrk import lua_script, lua_string, parse_wrk_output, run_wrk


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _protocol() -> tuple[NullHttp, FakeTransport]:
    proto = NullHttp(b"A")
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


def test_the_null_server_answers_each_request_once_pipelined_and_split() -> None:
    proto, transport = _protocol()
    one = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    get = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    stream = one + get + one
    for at in range(0, len(stream), 7):  # split anywhere, heads and bodies included
        proto.data_received(stream[at : at + 7])
    assert transport.written == b"AAA" and not transport.closed
    proto.data_received(one[:-1])
    assert transport.written == b"AAA"  # a body one byte short is not a request yet
    proto.data_received(b"o")
    assert transport.written == b"AAAA"


def test_the_null_server_closes_on_an_unbounded_or_broken_head() -> None:
    proto, transport = _protocol()
    proto.data_received(b"x" * (NULL_HEAD_BYTES_MAX + 1))
    assert transport.closed and transport.written == b""
    proto, transport = _protocol()
    proto.data_received(b"POST / HTTP/1.1\r\nContent-Length: nine\r\n\r\n")
    assert transport.closed
    assert _content_length(b"GET / HTTP/1.1\r\nHost: h") == 0
    assert _content_length(b"POST / HTTP/1.1\r\ncontent-LENGTH:  12 ") == 12


def test_the_null_answer_is_a_well_formed_response() -> None:
    answer = null_answer(b'{"a":1}')
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 ") and b"Content-Length: 7" in head and body == b'{"a":1}'


def test_lua_strings_escape_every_byte_that_is_not_plain() -> None:
    assert lua_string(b'a"b\\c\r\n\x00\xff') == '"a\\"b\\\\c\\013\\010\\000\\255"'


@pytest.fixture
def capture() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback server that answers 201 to each request and keeps its raw bytes."""
    kept: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(0.5)
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = _content_length(head) or 0
                if len(rest) < length:
                    break
                kept.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port, kept
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def _body(n: int, key: str) -> str:
    return '{"n":' + str(n) + ',"ref":"r ' + key + '","items":["' + key + 'i0001"]}'


def test_wrk_sends_our_templates_with_a_new_key_each_time(capture: tuple[int, list[bytes]], tmp_path: Path) -> None:
    port, kept = capture
    templates = [
        RequestTemplate(
            method="POST",
            path=f"/v1/quick-payments/{n}",
            headers=(("Authorization", "Bearer t"), ("Content-Type", "application/json")),
            body=_body(n, IDEMPOTENCY_KEY).encode(),
            idempotency_key_header="x-idempotency-key",
        )
        for n in range(3)
    ]
    result = run_wrk(
        f"http://127.0.0.1:{port}/",
        lua_script(templates, f"127.0.0.1:{port}", run_id="0badcafe"),
        tmp_path / "t.lua",
        connections=2,
        duration_s=1,
        threads=2,
    )
    assert result.requests >= 3 and result.errors == 0
    assert len(kept) >= result.requests  # wrk counts the answered; a last one may be in flight
    keys = []
    for raw in kept:
        head, _, body = raw.partition(b"\r\n\r\n")
        found = re.search(rb"\r\nx-idempotency-key: (\S+)", head)
        assert found is not None, head
        key = found.group(1).decode()
        assert re.fullmatch(r"0badcafe\d{3}\d{11}", key), key  # the generator's 22-character shape
        assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)  # type: ignore[union-attr]
        n = int(re.search(rb"/v1/quick-payments/(\d)", head).group(1))  # type: ignore[union-attr]
        assert body.decode() == _body(n, key)
        keys.append(key)
    assert len(set(keys)) == len(keys)  # never the same key twice, across both threads
    assert {k[8:11] for k in keys} == {"000", "001"}  # each thread its own tag


def test_the_low_level_and_null_servers_serve_wrk(tmp_path: Path) -> None:
    templates = [
        RequestTemplate(method="POST", path="/v1/quick-payments", body=b'{"k":"%s"}' % IDEMPOTENCY_KEY.encode())
    ]
    for server in ("low-level", "null"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.hello", "--port", str(port), "--server", server],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, f"{server} did not listen"
                    time.sleep(0.05)
            result = run_wrk(
                f"http://127.0.0.1:{port}/",
                lua_script(templates, f"127.0.0.1:{port}"),
                tmp_path / f"{server}.lua",
                connections=4,
                duration_s=1,
            )
            assert result.requests > 10 and result.errors == 0, (server, result)
        finally:
            proc.terminate()
            proc.wait(10)
        assert proc.returncode in (0, -15), (server, proc.returncode)


def test_a_run_without_our_result_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no result line"):
        parse_wrk_output("Running 1s test @ http://x\n  1 threads and 1 connections\n")


def test_ratios_and_agreement() -> None:
    stack = {"single": {"requests_per_s": 300.0}, "batch": {"payments_per_s": 1200.0}}
    servers = {
        "app": {"requests_per_s": 1000.0},
        "low-level": {"requests_per_s": 1500.0},
        "null": {"requests_per_s": 6000.0},
    }
    ratios = wrk_ratios(stack, servers, {"ratio_vs_hello": 0.33, "batch_ratio_vs_hello": 1.0})
    assert ratios["single_vs_app"] == 0.3 and ratios["single_vs_low_level"] == 0.2
    assert ratios["batch_vs_app"] == 1.2 and ratios["batch_vs_low_level"] == 0.8
    assert ratios["low_level_vs_null"] == 0.25 and ratios["wrk_ceiling_requests_per_s"] == 6000.0
    assert ratios["agreement"]["single"] == pytest.approx(0.091, abs=0.001)
    assert ratios["agreement"]["batch"] == 0.2
    assert agreement(None, 1.0) is None and agreement(1.0, None) is None
    # A part that failed has no figures: its ratios are None, not an exception.
    assert wrk_ratios({"error": "x"}, {"error": "y"}, {})["single_vs_app"] is None
