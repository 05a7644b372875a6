"""Worker side: one uvloop driver per process that dispatches request i at t0 + i / rate and
times it from then; talks to the parent over pickled stdin/stdout."""

from __future__ import annotations

import asyncio
import collections
import math
import pickle
import resource
import sys
import time
from typing import Any

from loadtest.generator.connection import _Connection, _WorkerPlan
from loadtest.generator.spec import (
    _POLL_PAUSE_MAX_S,
    _RECENT_KEYS_MAX,
    _SCHEDULER_TICK_S,
    _SWEEP_INTERVAL_S,
    HISTOGRAM_HIGHEST_US,
    new_histogram,
)


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
