"""The open-loop generator sends on schedule and times from the intended send time.

Proves, against small aiohttp servers on 127.0.0.1 started here: requests keep arriving
while the server stalls (open loop), latencies include the stall even when the connection
pool is exhausted (coordinated omission corrected), counts match rate x duration, non-2xx
and connection failures are errors, idempotency keys are unique (and retries replay the
same key with the same body), histograms merge across processes, and the CLI prints JSON.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from loadtest.generator import (
    IDEMPOTENCY_KEY,
    LoadResult,
    LoadSpec,
    RequestTemplate,
    merge_histograms,
    run_load,
)

ROOT = Path(__file__).resolve().parent.parent


class FakeServer:
    """Records arrivals; can freeze for a window, fail every n-th request, or be slow."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.first_arrival = 0.0
        self.freeze_after_s: float | None = None
        self.freeze_for_s = 0.0
        self.fail_every = 0
        self.delay_s = 0.0
        self.keys: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self.body_mismatches = 0
        self.failures_sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        if not self.arrivals:
            self.first_arrival = now
        self.arrivals.append(now)
        number = len(self.arrivals)
        if self.freeze_after_s is not None:
            freeze_start = self.first_arrival + self.freeze_after_s
            freeze_end = freeze_start + self.freeze_for_s
            if freeze_start <= now < freeze_end:
                await asyncio.sleep(freeze_end - now)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        key = request.headers.get("x-idempotency-key")
        if key is not None:
            body = await request.read()
            self.keys.append(key)
            if self.bodies.setdefault(key, body) != body:
                self.body_mismatches += 1
        if self.fail_every and number % self.fail_every == 0:
            self.failures_sent += 1
            return web.json_response({"Code": "boom"}, status=500)
        return web.json_response({"ok": True}, status=201 if key else 200)

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"hello ")
        await response.write(b"world")
        await response.write_eof()
        return response


# The server must run in the same loop as the test that awaits the load run.
@pytest_asyncio.fixture(loop_scope="function")
async def server():
    fake = FakeServer()
    app = web.Application()
    app.router.add_get("/chunked", fake.chunked)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield fake, port
    await runner.cleanup()


async def load(spec: LoadSpec) -> LoadResult:
    # run_load blocks while its worker processes run; the server lives in this loop.
    return await asyncio.to_thread(run_load, spec)


def spec_for(port: int, **overrides) -> LoadSpec:
    values = dict(
        host="127.0.0.1",
        port=port,
        rate_per_s=400,
        duration_s=1.0,
        processes=1,
        connections_max=32,
        timeout_s=2.0,
        requests=[RequestTemplate(path="/ping")],
    )
    values.update(overrides)
    return LoadSpec(**values)


def count_above(result: LoadResult, threshold_ms: float) -> int:
    histogram = merge_histograms([result.histogram_encoded])
    return sum(
        item.count_at_value_iterated_to
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to > threshold_ms * 1000
    )


async def test_requests_keep_arriving_while_the_server_stalls(server):
    fake, port = server
    # A 0.6 s stall: long enough that a generator slowed by a loaded 2-core machine (the whole
    # suite runs around it) still shows the open loop; 0.3 s was too short for that (CI saw 32).
    fake.freeze_after_s, fake.freeze_for_s = 0.5, 0.6
    result = await load(spec_for(port, rate_per_s=400, duration_s=1.4, connections_max=200))
    start = fake.first_arrival + fake.freeze_after_s
    during = [t for t in fake.arrivals if start <= t < start + fake.freeze_for_s]
    # Open loop: ~400/s x 0.6 s = 240 sends during the stall, up to the 200 connections (a
    # closed loop with a small pool would send only one request per connection and then wait).
    assert len(during) >= 90, len(during)
    assert result.sent == 560 and result.ok == 560 and result.errors == 0
    # Each request sent during the stall waits for its end: most of them exceed 150 ms.
    assert count_above(result, 150) >= 40


async def test_latency_counts_waiting_for_a_connection(server):
    """With only 2 connections the backlog waits client-side; it is still measured."""
    fake, port = server
    fake.freeze_after_s, fake.freeze_for_s = 0.4, 0.2
    result = await load(spec_for(port, rate_per_s=400, duration_s=1.0, connections_max=2))
    assert result.sent == 400 and result.ok == 400
    # Requests intended in the first half of the stall are > 100 ms late: ~40 of them.
    # A closed-loop tool with 2 connections would record just 2 slow requests.
    assert count_above(result, 100) >= 30
    assert result.p99_ms >= 100
    assert result.max_ms >= 180


async def test_counts_errors_keys_and_merges_two_processes(server):
    fake, port = server
    fake.fail_every = 10
    template = RequestTemplate(
        method="POST",
        path="/v1/quick-payments",
        headers=(("authorization", "Bearer t"), ("content-type", "application/json")),
        body=b'{"amount":"1.00","reference":"' + IDEMPOTENCY_KEY.encode() + b'"}',
        idempotency_key_header="x-idempotency-key",
    )
    result = await load(spec_for(port, rate_per_s=300, duration_s=1.0, processes=2, requests=[template]))
    assert result.sent == 300 == len(fake.keys)
    assert len(set(fake.keys)) == 300, "every request has its own key"
    assert all(json.loads(fake.bodies[key])["reference"] == key for key in fake.keys)
    assert result.status_counts == {"2xx": 300 - fake.failures_sent, "5xx": fake.failures_sent}
    assert result.errors == fake.failures_sent == 30
    assert result.completed == 300
    histogram = merge_histograms([result.histogram_encoded])
    assert histogram.get_total_count() == 300
    assert sum(result.per_second) == 300
    assert 270 <= result.achieved_per_s <= 310
    assert result.generator_cpu_s > 0 and result.generator_cpu_total_s >= result.generator_cpu_s


async def test_retries_reuse_a_key_with_the_same_body(server):
    fake, port = server
    template = RequestTemplate(
        method="POST",
        path="/pay",
        body=b'{"ref":"' + IDEMPOTENCY_KEY.encode() + b'"}',
        idempotency_key_header="x-idempotency-key",
    )
    result = await load(spec_for(port, rate_per_s=300, duration_s=1.0, requests=[template], retry_fraction=0.1))
    counts = collections.Counter(fake.keys)
    replays = sum(n - 1 for n in counts.values())
    assert result.retries == replays and 20 <= replays <= 30
    assert fake.body_mismatches == 0
    assert result.errors == 0


async def test_connection_refused_and_timeouts_are_errors(server):
    fake, port = server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = await load(spec_for(closed_port, rate_per_s=100, duration_s=0.5, timeout_s=0.5))
    assert refused.sent == 50 and refused.ok == 0
    assert refused.errors == refused.connection_errors == 50

    fake.delay_s = 3.0
    started = time.monotonic()
    slow = await load(spec_for(port, rate_per_s=100, duration_s=0.5, timeout_s=0.3))
    assert time.monotonic() - started < 6.0, "the hard deadline bounds the run"
    assert slow.sent == 50 and slow.timeouts == 50 and slow.errors == 50
    assert slow.p50_ms >= 300, "timeouts are recorded at their elapsed time"


async def test_chunked_responses_are_parsed(server):
    _, port = server
    result = await load(spec_for(port, rate_per_s=200, duration_s=0.5, requests=[RequestTemplate(path="/chunked")]))
    assert result.ok == 100 and result.errors == 0


async def test_cli_prints_json(server):
    _, port = server
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.generator",
        "--url",
        f"http://127.0.0.1:{port}/ping",
        "--rate",
        "200",
        "--duration",
        "0.5",
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    answer = json.loads(stdout)
    assert answer["sent"] == 100 and answer["ok"] == 100
    assert "histogram_encoded" not in answer


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="rate_per_s"):
        LoadSpec("127.0.0.1", 1, 0, 1, [RequestTemplate()]).validate()
    with pytest.raises(ValueError, match="requests"):
        LoadSpec("127.0.0.1", 1, 10, 1, []).validate()
    with pytest.raises(ValueError, match="newlines"):
        RequestTemplate(headers=(("x", "a\r\nb"),)).build("h")
