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
the workers' HdrHistograms and counters. Modules: ``spec`` (the public types), ``connection``
and ``worker`` (a worker process), ``parent`` (``run_load``), ``cli``.
"""

from loadtest.generator.cli import main
from loadtest.generator.parent import run_load
from loadtest.generator.spec import (
    IDEMPOTENCY_KEY,
    LoadResult,
    LoadSpec,
    RequestTemplate,
    merge_histograms,
    new_histogram,
)
from loadtest.generator.worker import run_worker_async

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
