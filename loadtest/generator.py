"""Open-loop HTTP/1.1 load generator (wrk2's method, in Python, cheap per request).

Why open loop: a closed-loop client waits for each answer before sending the next request,
so while the server stalls the client stops asking and the stall shows up in only a handful
of samples ("coordinated omission"). Here request ``i`` of a worker has an intended send time
``t0 + i / rate``; it is dispatched at that time whether or not earlier requests have
returned, and its latency is measured from the intended time, even when it had to wait for a
free connection because ``connections_max`` was reached.

Why raw protocols: the machine has two cores shared with the system under test, so the
generator must spend as little CPU as possible per request. Request bytes are built once per
template before the run; per request only the idempotency key is formatted and spliced in
with ``bytes.join``. Responses are parsed by a minimal HTTP/1.1 parser that only looks for
the status code, ``Content-Length``, chunked encoding and ``Connection: close``.

Layout: ``RequestTemplate`` / ``LoadSpec`` / ``LoadResult`` are the public types;
``run_load`` spawns worker processes, each runs ``_Driver`` on uvloop, and the parent merges
the workers' HdrHistograms and counters.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import os
import pickle
import resource
import select
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "IDEMPOTENCY_KEY",
    "LoadResult",
    "LoadSpec",
    "RequestTemplate",
    "main",
    "merge_histograms",
    "new_histogram",
    "run_load",
    "run_worker_async",
]

# Placeholder that may appear in a template's path, header values or body; every occurrence
# is replaced by the request's idempotency key. Keys have a fixed length (see ``_KEY_LENGTH``)
# so Content-Length can be computed once per template.
IDEMPOTENCY_KEY = "{{idempotency_key}}"
_IDEMPOTENCY_KEY_BYTES = IDEMPOTENCY_KEY.encode()

# Key = run id (8 hex) + worker index (3 digits) + counter (11 digits) = 22 characters,
# below the 40-character cap of the Open Banking standard.
_RUN_ID_LENGTH = 8
_KEY_LENGTH = _RUN_ID_LENGTH + 3 + 11

HISTOGRAM_LOWEST_US = 1
HISTOGRAM_HIGHEST_US = 60_000_000
HISTOGRAM_SIGNIFICANT_DIGITS = 3

# Limits that keep a misbehaving server from making the generator use unbounded memory.
_RESPONSE_HEAD_BYTES_MAX = 64 * 1024
_RESPONSE_BODY_BYTES_MAX = 16 * 1024 * 1024
# uvloop timers have millisecond resolution; sleeping less would spin.
_SCHEDULER_TICK_S = 0.001
_POLL_PAUSE_MAX_S = 0.01
_SWEEP_INTERVAL_S = 0.05
_RECENT_KEYS_MAX = 4096
_WORKER_READY_TIMEOUT_S = 60.0
_START_DELAY_S = 0.2


@dataclasses.dataclass(frozen=True)
class RequestTemplate:
    """One kind of request. ``IDEMPOTENCY_KEY`` in path, header values or body is replaced.

    When ``idempotency_key_header`` is set, that header is added with the key as its value.
    """

    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    idempotency_key_header: str | None = None

    def build(self, host_header: str) -> list[bytes]:
        """Return the request bytes split at the key placeholder (one part if no key)."""
        if "\r" in self.path or "\n" in self.path or " " in self.path:
            raise ValueError(f"request path must not contain spaces or newlines: {self.path!r}")
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host_header}"]
        names = {name.lower() for name, _ in self.headers}
        for name, value in self.headers:
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} value must not contain newlines")
            lines.append(f"{name}: {value}")
        if self.idempotency_key_header is not None:
            lines.append(f"{self.idempotency_key_header}: {IDEMPOTENCY_KEY}")
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            if "content-length" not in names:
                key_count = self.body.count(_IDEMPOTENCY_KEY_BYTES)
                length = len(self.body) + key_count * (_KEY_LENGTH - len(_IDEMPOTENCY_KEY_BYTES))
                lines.append(f"Content-Length: {length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return (head + self.body).split(_IDEMPOTENCY_KEY_BYTES)


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What to offer. ``rate_per_s`` is the total across all ``processes``.

    ``requests_max`` (if set) caps the total number of requests; otherwise the run sends
    ``rate_per_s * duration_s`` requests. ``retry_fraction`` of the requests resend an
    earlier, already answered request with the same idempotency key and the same bytes, to
    exercise idempotent replays. Requests whose intended send time falls in the first
    ``warmup_s`` are sent but not recorded.

    ``poll_interval_s`` > 0 switches a worker to polling: between timetable ticks it sleeps
    instead of waking for every response, which cuts its CPU per request by about 40% at
    3,000 req/s but makes response timestamps up to one interval (about 1 ms) late.
    """

    host: str
    port: int
    rate_per_s: float
    duration_s: float
    requests: list[RequestTemplate]
    processes: int = 1
    connections_max: int = 64
    timeout_s: float = 5.0
    warmup_s: float = 0.0
    requests_max: int | None = None
    retry_fraction: float = 0.0
    run_id: str | None = None
    poll_interval_s: float = 0.0

    def validate(self) -> None:
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        if self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if not 1 <= self.processes <= 64:
            raise ValueError("processes must be between 1 and 64")
        if not 1 <= self.connections_max <= 100_000:
            raise ValueError("connections_max must be between 1 and 100000")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("warmup_s must be >= 0 and < duration_s")
        if not self.requests:
            raise ValueError("requests must hold at least one RequestTemplate")
        if not 0.0 <= self.retry_fraction <= 0.5:
            raise ValueError("retry_fraction must be between 0 and 0.5")
        if not 0.0 <= self.poll_interval_s <= 0.005:
            raise ValueError("poll_interval_s must be between 0 (event driven) and 0.005")
        if self.requests_max is not None and self.requests_max < 1:
            raise ValueError("requests_max must be >= 1")
        if self.run_id is not None and (len(self.run_id) != _RUN_ID_LENGTH or not self.run_id.isalnum()):
            raise ValueError(f"run_id must be {_RUN_ID_LENGTH} alphanumeric characters")


@dataclasses.dataclass
class LoadResult:
    """Merged outcome of a run. Latencies are measured from the intended send time.

    ``sent`` counts requests whose intended time was reached; ``completed`` counts responses
    of any status; ``errors`` = non-2xx responses + connection errors + timeouts. The
    histogram holds every response and every timeout (at its elapsed time), in microseconds.
    ``achieved_per_s`` is responses (any status) completed inside the measured window
    [warmup_s, duration_s] divided by its length. ``per_second[k]`` counts completions during
    second ``k`` of the run (warmup included).
    """

    offered_per_s: float
    sent: int
    completed: int
    ok: int
    errors: int
    status_counts: dict[str, int]
    timeouts: int
    connection_errors: int
    retries: int
    histogram_encoded: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    achieved_per_s: float
    generator_cpu_s: float
    generator_cpu_total_s: float
    wall_s: float
    per_second: list[int]

    @property
    def error_ratio(self) -> float:
        return self.errors / self.sent if self.sent else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.generator_cpu_s * 1e6 / self.sent if self.sent else 0.0

    def to_dict(self, include_histogram: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not include_histogram:
            del data["histogram_encoded"]
        data["error_ratio"] = self.error_ratio
        data["cpu_us_per_request"] = self.cpu_us_per_request
        return data


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HISTOGRAM_LOWEST_US, HISTOGRAM_HIGHEST_US, HISTOGRAM_SIGNIFICANT_DIGITS)


def merge_histograms(encoded: list[str]) -> HdrHistogram:
    merged = new_histogram()
    for item in encoded:
        if item:
            merged.decode_and_add(item)
    return merged


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

    def __init__(self, driver: _Driver) -> None:
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


class _Driver:
    """Schedules requests on the open-loop timetable and keeps the connection pool."""

    def __init__(self, plan: _WorkerPlan) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        host_header = plan.host if plan.port in (80, 443) else f"{plan.host}:{plan.port}"
        self.templates = [template.build(host_header) for template in plan.requests]
        self.key_prefix = f"{plan.run_id}{plan.worker_index:03d}".encode()
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.connecting = 0
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self.answered: collections.deque[bytes] = collections.deque(maxlen=_RECENT_KEYS_MAX)
        self.histogram = new_histogram()
        self.status_counts: dict[int, int] = {}  # by exact status code
        self.sent = 0
        self.completed = 0
        self.timeouts = 0
        self.connection_errors = 0
        self.retries = 0
        self.in_window = 0
        self.t0 = 0.0
        self.window_start = 0.0
        self.window_end = 0.0
        seconds = math.ceil(plan.start_offset_s + plan.duration_s + plan.timeout_s) + 2
        self.per_second = [0] * seconds
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.start = 0.0
        self.sequence = 0
        self.scheduled: asyncio.Future[None] | None = None

    # request construction ----------------------------------------------------------------
    def _payload(self, sequence: int) -> bytes:
        plan = self.plan
        if plan.retry_every and sequence % plan.retry_every == plan.retry_every - 1 and self.answered:
            # Resend an answered request: same key and template means byte-identical body.
            self.retries += 1
            return self.answered[sequence % len(self.answered)]
        parts = self.templates[sequence % len(self.templates)]
        if len(parts) == 1:
            return parts[0]
        key = b"%s%011d" % (self.key_prefix, sequence)
        return key.join(parts)

    # scheduling --------------------------------------------------------------------------
    async def run(self, t0: float) -> None:
        plan = self.plan
        loop = self.loop
        self.t0 = t0
        self.start = t0 + plan.start_offset_s
        self.window_start = t0 + plan.warmup_s
        self.window_end = t0 + plan.duration_s
        self.scheduled = loop.create_future()
        sweeper = loop.create_task(self._sweep())
        try:
            loop.call_at(self.start, self._tick)
            await self.scheduled
            deadline = self.window_end + plan.timeout_s
            if self.in_flight:
                self.drained.clear()
                try:
                    await asyncio.wait_for(self.drained.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    pass
        finally:
            sweeper.cancel()
            self._expire(float("inf"))
            for connection in list(self.connections):
                connection._abort()

    def _tick(self) -> None:
        """Dispatch every request whose intended time has come, then re-arm the timer.

        A plain timer callback (not a coroutine with ``asyncio.sleep``) because it is the
        cheapest way to wake up about once per millisecond.
        """
        plan = self.plan
        now = self.loop.time()
        start = self.start
        rate = plan.rate_per_s
        count = plan.count
        sequence = self.sequence
        due = min(count, int((now - start) * rate) + 1)
        record_from = self.window_start
        while sequence < due:
            intended = start + sequence / rate
            self.dispatch((intended, intended >= record_from, self._payload(sequence)))
            sequence += 1
        self.sequence = sequence
        if sequence >= count:
            if self.scheduled is not None and not self.scheduled.done():
                self.scheduled.set_result(None)
            return
        next_time = start + sequence / rate
        poll_interval_s = plan.poll_interval_s
        if poll_interval_s > 0:
            # Polling mode: block instead of waiting in epoll, so responses that arrive in
            # the meantime are all handled in one wake-up; the loop then polls sockets
            # without blocking and calls us again. Costs one wake-up per interval instead
            # of one per response, and makes response timestamps up to one interval late.
            pause_s = min(max(next_time - now, poll_interval_s), _POLL_PAUSE_MAX_S)
            time.sleep(pause_s)
            self.loop.call_soon(self._tick)
        else:
            self.loop.call_at(max(next_time, now + _SCHEDULER_TICK_S), self._tick)

    def dispatch(self, item: tuple[Any, ...]) -> None:
        self.sent += item[1]
        self.in_flight += 1
        if self.idle:
            self.idle.pop().send(item)
            return
        self.pending.append(item)
        if len(self.connections) + self.connecting < self.plan.connections_max:
            self._open()

    def _open(self) -> None:
        self.connecting += 1
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.plan.host, self.plan.port),
                self.plan.timeout_s,
            )
        except OSError:  # includes TimeoutError
            self.connecting -= 1
            # Fail the oldest waiting request so a dead server costs one error per request
            # instead of a reconnect storm.
            if self.pending:
                item = self.pending.popleft()
                self.on_request_failed(item[0], item[1], timeout=False)
            if self.pending and len(self.connections) + self.connecting < self.plan.connections_max:
                self._open()

    # callbacks from connections ----------------------------------------------------------
    def on_connected(self, connection: _Connection) -> None:
        self.connecting -= 1
        self.connections.add(connection)
        self._next(connection)

    def on_connection_lost(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if self.pending and len(self.connections) + self.connecting < self.plan.connections_max:
            self._open()

    def _next(self, connection: _Connection) -> None:
        if connection.closed:
            return
        if self.pending:
            connection.send(self.pending.popleft())
        else:
            self.idle.append(connection)

    def on_response(self, connection: _Connection, item: tuple[Any, ...], status: int) -> None:
        now = self.loop.time()
        intended = item[0]
        self.in_flight -= 1
        index = int(now - self.t0)
        if 0 <= index < len(self.per_second):
            self.per_second[index] += 1
        if item[1]:
            self.completed += 1
            if self.window_start <= now <= self.window_end:
                self.in_window += 1
            microseconds = int((now - intended) * 1e6)
            self.histogram.record_value(1 if microseconds < 1 else min(microseconds, HISTOGRAM_HIGHEST_US))
            status_counts = self.status_counts
            status_counts[status] = status_counts.get(status, 0) + 1
        if 200 <= status < 300 and self.plan.retry_every and len(item[2]) < 8192:
            self.answered.append(item[2])
        self._next(connection)
        if not self.in_flight:
            self.drained.set()

    def on_request_failed(self, intended: float, record: bool, *, timeout: bool) -> None:
        self.in_flight -= 1
        if record:
            if timeout:
                self.timeouts += 1
                elapsed_us = int((self.loop.time() - intended) * 1e6)
                self.histogram.record_value(max(1, min(elapsed_us, HISTOGRAM_HIGHEST_US)))
            else:
                self.connection_errors += 1
        if not self.in_flight:
            self.drained.set()

    # timeouts ----------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            self._expire(self.loop.time() - self.plan.timeout_s)

    def _expire(self, intended_before: float) -> None:
        """Time out every waiting or in-flight request intended before the given time."""
        pending = self.pending
        while pending and pending[0][0] < intended_before:
            item = pending.popleft()
            self.on_request_failed(item[0], item[1], timeout=True)
        for connection in list(self.connections):
            if connection.item is not None and connection.intended < intended_before:
                connection.timed_out()

    def result(self) -> dict[str, Any]:
        status_classes: dict[str, int] = {}
        for status, count in self.status_counts.items():
            name = f"{status // 100}xx"
            status_classes[name] = status_classes.get(name, 0) + count
        return {
            "sent": self.sent,
            "completed": self.completed,
            "ok": sum(n for status, n in self.status_counts.items() if 200 <= status < 300),
            "status_counts": status_classes,
            "timeouts": self.timeouts,
            "connection_errors": self.connection_errors,
            "retries": self.retries,
            "in_window": self.in_window,
            "histogram_encoded": self.histogram.encode().decode("ascii"),
            "per_second": self.per_second,
        }


async def run_worker_async(plan: _WorkerPlan, t0: float) -> dict[str, Any]:
    """Drive one worker's share in the running loop, starting at loop time ``t0``."""
    driver = _Driver(plan)
    await driver.run(t0)
    return driver.result()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker_stdio() -> None:
    """Entry point of a worker process: messages are pickles over stdin/stdout.

    The parent sends the plan, the worker answers ("ready", None), the parent sends the
    shared start time (wall clock), the worker answers ("result", dict) or ("error", text).
    A plain subprocess, not multiprocessing, so callers need no ``if __name__ == "__main__"``
    guard and nothing of the caller's main module is re-imported.
    """
    import uvloop

    inbox = sys.stdin.buffer
    outbox = sys.stdout.buffer
    # Nothing else may write to the message channel.
    sys.stdout = sys.stderr

    def send(kind: str, payload: Any) -> None:
        pickle.dump((kind, payload), outbox, protocol=pickle.HIGHEST_PROTOCOL)
        outbox.flush()

    async def main(plan: _WorkerPlan) -> dict[str, Any]:
        send("ready", None)
        start_wall = pickle.load(inbox)
        loop = asyncio.get_running_loop()
        t0 = loop.time() + (start_wall - time.time())
        cpu_start = _cpu_seconds()
        result = await run_worker_async(plan, t0)
        result["cpu_s"] = _cpu_seconds() - cpu_start
        return result

    try:
        result = uvloop.run(main(pickle.load(inbox)))
        result["cpu_total_s"] = _cpu_seconds()
        send("result", result)
    except BaseException as error:  # report to the parent instead of dying silently
        send("error", f"{type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------------
# Parent side.


def _plans(spec: LoadSpec, run_id: str) -> list[_WorkerPlan]:
    total = int(spec.rate_per_s * spec.duration_s)
    if spec.requests_max is not None:
        total = min(total, spec.requests_max)
    total = max(total, 1)
    worker_rate = spec.rate_per_s / spec.processes
    retry_every = round(1.0 / spec.retry_fraction) if spec.retry_fraction > 0 else 0
    plans = []
    for index in range(spec.processes):
        # Interleave the workers' timetables so the merged arrivals stay evenly spaced.
        count = total // spec.processes + (1 if index < total % spec.processes else 0)
        plans.append(
            _WorkerPlan(
                host=spec.host,
                port=spec.port,
                worker_index=index,
                rate_per_s=worker_rate,
                count=count,
                start_offset_s=index / spec.rate_per_s,
                duration_s=spec.duration_s,
                warmup_s=spec.warmup_s,
                timeout_s=spec.timeout_s,
                connections_max=max(1, spec.connections_max // spec.processes),
                retry_every=retry_every,
                run_id=run_id,
                requests=spec.requests,
                poll_interval_s=spec.poll_interval_s,
            )
        )
    return plans


def _percentile_ms(histogram: HdrHistogram, percentile: float) -> float:
    if histogram.get_total_count() == 0:
        return 0.0
    return histogram.get_value_at_percentile(percentile) / 1000.0


def _merge(spec: LoadSpec, results: list[dict[str, Any]], wall_s: float, cpu_total_s: float) -> LoadResult:
    histogram = merge_histograms([result["histogram_encoded"] for result in results])
    status_counts: collections.Counter[str] = collections.Counter()
    per_second = [0] * max(len(result["per_second"]) for result in results)
    for result in results:
        status_counts.update(result["status_counts"])
        for index, value in enumerate(result["per_second"]):
            per_second[index] += value
    last = len(per_second)
    while last > 0 and per_second[last - 1] == 0:
        last -= 1
    per_second = per_second[:last]
    summed = {
        name: sum(result[name] for result in results)
        for name in (
            "sent",
            "completed",
            "ok",
            "timeouts",
            "connection_errors",
            "retries",
            "in_window",
            "cpu_s",
        )
    }
    if summed["timeouts"]:
        status_counts["timeout"] = summed["timeouts"]
    if summed["connection_errors"]:
        status_counts["connection_error"] = summed["connection_errors"]
    window_s = spec.duration_s - spec.warmup_s
    errors = (summed["completed"] - summed["ok"]) + summed["timeouts"] + summed["connection_errors"]
    return LoadResult(
        offered_per_s=spec.rate_per_s,
        sent=summed["sent"],
        completed=summed["completed"],
        ok=summed["ok"],
        errors=errors,
        status_counts=dict(sorted(status_counts.items())),
        timeouts=summed["timeouts"],
        connection_errors=summed["connection_errors"],
        retries=summed["retries"],
        histogram_encoded=histogram.encode().decode("ascii"),
        p50_ms=_percentile_ms(histogram, 50.0),
        p90_ms=_percentile_ms(histogram, 90.0),
        p99_ms=_percentile_ms(histogram, 99.0),
        p999_ms=_percentile_ms(histogram, 99.9),
        max_ms=histogram.get_max_value() / 1000.0 if histogram.get_total_count() else 0.0,
        achieved_per_s=summed["in_window"] / window_s,
        generator_cpu_s=summed["cpu_s"],
        generator_cpu_total_s=cpu_total_s,
        wall_s=wall_s,
        per_second=per_second,
    )


def run_load(spec: LoadSpec) -> LoadResult:
    """Offer ``spec.rate_per_s`` for ``spec.duration_s`` from ``spec.processes`` processes.

    Blocks until done (at most about duration + timeout + process start-up). Safe to call
    from a thread while an event loop runs elsewhere in the process.
    """
    spec.validate()
    run_id = spec.run_id or os.urandom(_RUN_ID_LENGTH // 2).hex()
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", "from loadtest.generator import _worker_stdio; _worker_stdio()"]
    workers: list[subprocess.Popen[bytes]] = []
    cpu_children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        for plan in _plans(spec, run_id):
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            workers.append(process)
            _send(process, plan)
        for process in workers:
            _expect(process, "ready", _WORKER_READY_TIMEOUT_S)
        start_wall = time.time() + _START_DELAY_S
        for process in workers:
            _send(process, start_wall)
        result_timeout_s = _START_DELAY_S + spec.duration_s + spec.timeout_s + 30.0
        results = [_expect(process, "result", result_timeout_s) for process in workers]
        wall_s = time.time() - start_wall
    finally:
        for process in workers:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
    cpu_children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total_s = (cpu_children_after.ru_utime + cpu_children_after.ru_stime) - (
        cpu_children_before.ru_utime + cpu_children_before.ru_stime
    )
    return _merge(spec, results, wall_s, cpu_total_s)


def _send(process: subprocess.Popen[bytes], message: Any) -> None:
    assert process.stdin is not None
    pickle.dump(message, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    process.stdin.flush()


def _expect(process: subprocess.Popen[bytes], kind: str, timeout_s: float) -> Any:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"load worker sent no {kind!r} within {timeout_s:.0f} s")
    try:
        message_kind, payload = pickle.load(process.stdout)
    except EOFError:
        raise RuntimeError(
            f"load worker exited (code {process.poll()}) before sending {kind!r}; see its stderr"
        ) from None
    if message_kind == "error":
        raise RuntimeError(f"load worker failed: {payload}")
    if message_kind != kind:
        raise RuntimeError(f"load worker sent {message_kind!r}, expected {kind!r}")
    return payload


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.generator",
        description="Open-loop HTTP/1.1 load at a constant rate; prints JSON results.",
    )
    parser.add_argument("--url", required=True, help="http://host:port/path (no TLS)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second (total)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of offered load")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="connections_max (total)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s")
    parser.add_argument("--warmup", type=float, default=0.0, help="unrecorded seconds at start")
    parser.add_argument("--requests-max", type=int, default=None)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeat)")
    parser.add_argument("--body", default="", help="request body; may contain " + IDEMPOTENCY_KEY)
    parser.add_argument("--idempotency-header", default=None, help="e.g. x-idempotency-key")
    parser.add_argument("--histogram", action="store_true", help="include the encoded histogram")
    args = parser.parse_args(argv)

    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        parser.error("--url must look like http://host:port/path")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = []
    for header in args.header:
        name, separator, value = header.partition(":")
        if not separator:
            parser.error(f"--header must be 'Name: value', got {header!r}")
        headers.append((name.strip(), value.strip()))
    template = RequestTemplate(
        method=args.method.upper(),
        path=path,
        headers=tuple(headers),
        body=args.body.encode(),
        idempotency_key_header=args.idempotency_header,
    )
    spec = LoadSpec(
        host=url.hostname,
        port=url.port or 80,
        rate_per_s=args.rate,
        duration_s=args.duration,
        processes=args.processes,
        connections_max=args.connections,
        timeout_s=args.timeout,
        warmup_s=args.warmup,
        requests_max=args.requests_max,
        requests=[template],
    )
    try:
        spec.validate()
    except ValueError as error:
        parser.error(str(error))
    result = run_load(spec)
    json.dump(result.to_dict(include_histogram=args.histogram), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    # Run the imported module's main so pickled types are named loadtest.generator.*, not
    # __main__.*, which the worker processes could not resolve.
    from loadtest.generator import main as package_main

    sys.exit(package_main())
