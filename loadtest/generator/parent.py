"""Parent side: split a LoadSpec into worker plans, spawn the workers, merge their
histograms and counters into one LoadResult."""

from __future__ import annotations

import collections
import os
import pickle
import resource
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.generator.connection import _WorkerPlan
from loadtest.generator.spec import (
    _RUN_ID_LENGTH,
    _START_DELAY_S,
    _WORKER_READY_TIMEOUT_S,
    LoadResult,
    LoadSpec,
    merge_histograms,
)

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
    package_parent = str(Path(__file__).resolve().parents[2])  # the directory holding loadtest/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", "from loadtest.generator.worker import _worker_stdio; _worker_stdio()"]
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
