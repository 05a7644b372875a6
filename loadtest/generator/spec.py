"""The load generator's public types (RequestTemplate, LoadSpec, LoadResult), its bounds and
its HdrHistogram helpers."""

from __future__ import annotations

import dataclasses
from typing import Any

from hdrh.histogram import HdrHistogram

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
