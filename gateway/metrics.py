"""Prometheus metrics (prometheus-client), served at GET /metrics (admin token).

Per request, in every gateway process: requests by route, method and status, and latency
by route; rate-limit refusals. Gateway workers share one port, so a scrape reaches one of
them: under `quickpay up` they write to a shared directory (PROMETHEUS_MULTIPROC_DIR,
client's multiprocess mode) and any worker answers for all. At scrape time the answering
process adds what only the shards and the notifier know, asked then (one ping per shard,
one query on the control database): intake queue depth, batch sizes and commit latency
(the last 2,048 group commits), committed transfers, relay backlog and lag, webhook backlog,
failed deliveries and events produced, and the stored rows readers quarantined
(`quickpay_quarantined_rows_total{reader,table}`: this gateway's own rendering, each shard
worker's load and reads from its ping, the notifier's and the monitor's from the control
database; ledger/rows.py), and the restarts of every supervised service
(`quickpay_service_restarts_total{service}`, `quickpay_service_crash_looping{service}`:
the supervisor's status file and each shard's relay; gateway/health.py).

Because the workers share one port, a scrape cannot pick a worker; the summed counters say
what all of them did, and `quickpay_gateway_worker_start_time_seconds{pid}` (one series per
live worker, written by each at start; multiprocess mode "liveall") says which workers the
sums cover. Files of workers that died are dropped at scrape time (`_forget_dead_workers`),
so a restarted worker shows as a new pid and the dead one disappears.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "CONTENT_TYPE",
    "LATENCY",
    "QUARANTINED",
    "RATE_LIMITED",
    "REQUESTS",
    "WORKER_START",
    "record",
    "render",
    "worker_started",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUESTS = Counter("quickpay_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "quickpay_http_request_duration_seconds",
    "Time to answer, by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
RATE_LIMITED = Counter("quickpay_rate_limit_refusals_total", "Requests refused with 429")
# One family for every reader; the gateway's own (reader "gateway": resources it could not
# render) are counted here, the others' are added at scrape time (_Snapshot.quarantined).
QUARANTINED = Counter(
    "quickpay_quarantined_rows", "Stored rows a reader could not read and skipped", ["reader", "table"]
)
# One series per live gateway worker (label pid in multiprocess mode): which workers a
# scrape's sums cover. Set once, at start (worker_started).
WORKER_START = Gauge(
    "quickpay_gateway_worker_start_time_seconds",
    "When each live gateway worker started (Unix time; label pid under quickpay up)",
    multiprocess_mode="liveall",
)
# The label children of each (route, method, status), looked up once: .labels() costs as much
# as the increment (measured in BENCHMARKS.md). Routes are the app's (plus "unmatched"),
# statuses a few dozen: bounded, but capped anyway.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}
CHILDREN_MAX = 10_000


def record(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    key = (route, method, status)
    children = _CHILDREN.get(key)
    if children is None:
        if len(_CHILDREN) >= CHILDREN_MAX:
            _CHILDREN.clear()
        children = _CHILDREN[key] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
    children[0].inc()
    children[1].observe(seconds)


def worker_started(now_s: float) -> None:
    """Name this gateway worker in the scrape (its start time, Unix seconds)."""
    WORKER_START.set(now_s)


# Files of the live-gauge kind, one per process: gauge_liveall_<pid>.db.
_LIVE_FILE_PREFIX = "gauge_liveall_"
_LIVE_FILES_MAX = 1_024  # workers' files looked at per scrape (a few per stack; bounded anyway)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of gateway workers that have exited (their series would
    otherwise name a dead worker until the stack restarts). The workers share one host
    under `quickpay up`, so a pid is checked where it ran."""
    for path in sorted(Path(directory).glob(_LIVE_FILE_PREFIX + "*.db"))[:_LIVE_FILES_MAX]:
        try:
            pid = int(path.name[len(_LIVE_FILE_PREFIX) : -len(".db")])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            mark_process_dead(pid, directory)


class _Snapshot:
    """What the shards and the notifier reported for this scrape, as metric families."""

    def __init__(self, pings: list[tuple[int, Any]], deliveries: dict[str, Any] | None) -> None:
        self.pings = pings
        self.deliveries = deliveries

    def quarantined(self) -> CounterMetricFamily:
        """Quarantined rows reported by the shard workers (summed over shards) and by the
        notifier and the monitor (the control database), per (reader, table)."""
        totals: dict[tuple[str, str], int] = {}
        reported = [ping.get("quarantined") or [] for _, ping in self.pings if ping is not None]
        if self.deliveries is not None:
            reported.append(self.deliveries.get("quarantined") or [])
        for entries in reported:
            for reader, table, count in entries:
                totals[(str(reader), str(table))] = totals.get((str(reader), str(table)), 0) + int(count)
        family = CounterMetricFamily(
            "quickpay_quarantined_rows", "Stored rows a reader could not read and skipped", labels=["reader", "table"]
        )
        for (reader, table), count in sorted(totals.items()):
            family.add_metric([reader, table], count)
        return family

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "quickpay_shard_up", "1 when the shard worker answered the scrape's ping", labels=["shard"]
        )
        queue = GaugeMetricFamily(
            "quickpay_shard_intake_queue", "Commands waiting in the shard's intake queue", labels=["shard"]
        )
        batch = GaugeMetricFamily(
            "quickpay_shard_batch_commands", "Commands per group commit (last 2,048 batches)", labels=["shard", "stat"]
        )
        commit = GaugeMetricFamily(
            "quickpay_shard_commit_seconds",
            "Batch write (commit) latency, last 2,048 batches",
            labels=["shard", "quantile"],
        )
        cycle = GaugeMetricFamily(
            "quickpay_shard_batch_cycle_seconds",
            "Whole group-commit cycle, last 2,048 batches",
            labels=["shard", "quantile"],
        )
        committed = CounterMetricFamily(
            "quickpay_shard_committed_transfers", "Journal rows committed since start", labels=["shard"]
        )
        backlog = GaugeMetricFamily(
            "quickpay_relay_backlog", "Cross-shard credit legs not yet acknowledged", labels=["shard"]
        )
        lag = GaugeMetricFamily(
            "quickpay_relay_lag_seconds", "Age of the oldest credit leg not yet acknowledged", labels=["shard"]
        )
        slot_map = GaugeMetricFamily(
            "quickpay_shard_slot_map_version", "The slot map version the shard worker acts on", labels=["shard"]
        )
        for shard, ping in self.pings:
            label = str(shard)
            up.add_metric([label], 0 if ping is None else 1)
            if ping is None:
                continue
            if ping.get("slot_map_version") is not None:
                slot_map.add_metric([label], ping["slot_map_version"])
            queue.add_metric([label], ping.get("queue", 0))
            backlog.add_metric([label], ping.get("relay_pending", 0))
            lag.add_metric([label], ping.get("relay_lag_ms", 0) / 1000)
            committed.add_metric([label], ping.get("committed_transfers", 0))
            batches = ping.get("batches") or {}
            if batches.get("count"):
                batch.add_metric([label, "mean"], batches["commands_mean"])
                batch.add_metric([label, "max"], batches["commands_max"])
                for quantile in ("p50", "p99"):
                    q = "0.5" if quantile == "p50" else "0.99"
                    commit.add_metric([label, q], batches["write_ms"][quantile] / 1000)
                    cycle.add_metric([label, q], batches["cycle_ms"][quantile] / 1000)
        yield from (up, queue, batch, commit, cycle, committed, backlog, lag, slot_map)
        if self.deliveries is not None:
            yield GaugeMetricFamily(
                "quickpay_webhook_backlog",
                "Webhook deliveries waiting (due or backing off)",
                value=self.deliveries["pending"],
            )
            yield GaugeMetricFamily(
                "quickpay_webhook_failed",
                "Webhook deliveries given up (past their max age)",
                value=self.deliveries["failed"],
            )
            yield CounterMetricFamily(
                "quickpay_events_produced", "Events produced from the journals", value=self.deliveries["events"]
            )


class _Merged:
    """The process's own metrics, with the snapshot's quarantine counts added to the one
    quickpay_quarantined_rows family (two families of one name are not valid exposition)."""

    def __init__(self, inner: CollectorRegistry, extra: Metric) -> None:
        self.inner = inner
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        merged = False
        for family in self.inner.collect():
            if family.name == self.extra.name:
                family.samples.extend(self.extra.samples)
                merged = True
            yield family
        if not merged:
            yield self.extra


class _Services:
    """Restarts per supervised service (every child of the supervisor, from its status file,
    and each shard's in-process relay, from its ping), and which of them crash-loop."""

    def __init__(self, services: dict[str, tuple[int, bool]]) -> None:
        self.services = services

    def collect(self) -> Iterable[Metric]:
        restarts = CounterMetricFamily(
            "quickpay_service_restarts",
            "Restarts of a supervised service (process or relay) since the stack started",
            labels=["service"],
        )
        looping = GaugeMetricFamily(
            "quickpay_service_crash_looping", "1 while the service is crash-looping", labels=["service"]
        )
        for name, (count, crash_looping) in sorted(self.services.items()):
            restarts.add_metric([name], count)
            looping.add_metric([name], 1 if crash_looping else 0)
        yield from (restarts, looping)


def render(
    pings: list[tuple[int, Any]], deliveries: dict[str, Any] | None, services: dict[str, tuple[int, bool]] | None = None
) -> bytes:
    registry = CollectorRegistry()
    inner = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _forget_dead_workers(directory)
        MultiProcessCollector(inner)  # every gateway process's counters and histograms
    else:
        for metric in (REQUESTS, LATENCY, RATE_LIMITED, QUARANTINED, WORKER_START):
            inner.register(metric)
    snapshot = _Snapshot(pings, deliveries)
    registry.register(_Merged(inner, snapshot.quarantined()))
    registry.register(snapshot)
    registry.register(_Services(services or {}))
    return generate_latest(registry)
