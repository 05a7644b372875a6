"""`quickpay up` says ready only when every gateway process is: the workers share the port
(SO_REUSEPORT), one probe reaches one of them, and one 200 used to be taken for all.
CI saw it: `up` printed "quickpay ready", and the next /readyz (another worker, still
reading its partner cut-off markers) answered 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from quickpay.httpclient import READY_CONSECUTIVE_MIN, ready_consecutive, wait_ready


class Flapping:
    """/readyz as two workers answer it while the second is still starting: 200, then 503
    for `not_ready` probes, then 200 for good."""

    def __init__(self, not_ready: int) -> None:
        self.not_ready = not_ready
        self.probes = 0
        self.lock = threading.Lock()

    def status(self) -> int:
        with self.lock:
            self.probes += 1
            return 200 if self.probes == 1 or self.probes > 1 + self.not_ready else 503


@pytest.fixture
def flapping() -> Iterator[tuple[str, Flapping]]:
    state = Flapping(not_ready=3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = state.status()
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_one_200_is_not_taken_for_every_worker(flapping: tuple[str, Flapping]) -> None:
    url, state = flapping
    wait_ready(url, timeout_s=10, consecutive=5)
    # The first 200, three 503s (the count starts again), then five 200s in a row.
    assert state.probes == 1 + 3 + 5


def test_a_single_probe_is_what_consecutive_one_means(flapping: tuple[str, Flapping]) -> None:
    url, state = flapping
    wait_ready(url, timeout_s=10, consecutive=1)
    assert state.probes == 1


def test_never_ready_ends_in_a_clear_exit(flapping: tuple[str, Flapping]) -> None:
    url, state = flapping
    state.not_ready = 10**9
    with pytest.raises(SystemExit, match="did not become ready"):
        wait_ready(url, timeout_s=0.5, consecutive=2)


def test_the_probes_asked_grow_with_the_workers() -> None:
    assert ready_consecutive(1) >= READY_CONSECUTIVE_MIN
    assert ready_consecutive(2) < ready_consecutive(4)
    # Chance that every probe reached the one worker that is ready, with w workers.
    for workers in (2, 4, 8):
        k = ready_consecutive(workers)
        assert workers * (1 / workers) ** k < 1e-6
