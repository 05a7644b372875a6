"""Baselines measured in the same run: pgbench TPC-B on the same PostgreSQL, and the hello
calibration server (loadtest.hello) with the same generator and gates."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest.bench.common import _free_port, answered_in_step, log, merge_steps


# ---- pgbench -------------------------------------------------------------------------------
def parse_pgbench_tps(output: str) -> float | None:
    match = re.search(r"tps = ([0-9.]+)", output)
    return float(match.group(1)) if match else None


def run_pgbench(state_dir: Path, seconds: float, scale: int, out: Path) -> dict[str, Any]:
    from quickpay.embedded_pg import BIN_PATH, EmbeddedPostgres

    pg = EmbeddedPostgres(state_dir)
    conn = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres"]
    env = {**os.environ, **pg.client_env()}  # the password file, not the password, on no command line
    psql = str(BIN_PATH / "psql")
    exists = subprocess.run(
        [psql, *conn, "-d", "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'pgbench'"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(
            [psql, *conn, "-d", "postgres", "-qc", "CREATE DATABASE pgbench"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    pgbench = str(BIN_PATH / "pgbench")
    started = time.monotonic()
    init = subprocess.run(
        [pgbench, *conn, "-i", "-q", "-s", str(scale), "pgbench"], capture_output=True, text=True, timeout=600, env=env
    )
    init_s = time.monotonic() - started
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr[-2000:]}")
    command = [pgbench, *conn, "-c", "8", "-j", "2", "-T", str(max(1, round(seconds))), "-n", "pgbench"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    (out / "pgbench.txt").write_text(result.stdout + result.stderr)
    tps = parse_pgbench_tps(result.stdout)
    if result.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed: {result.stderr[-2000:]}")
    return {
        "tps": tps,
        "scale": scale,
        "seconds": seconds,
        "clients": 8,
        "threads": 2,
        "init_s": round(init_s, 1),
        "command": f"pgbench -c 8 -j 2 -T {max(1, round(seconds))} -n (TPC-B, scale {scale}, same embedded PostgreSQL, fsync on)",
    }


# ---- hello: the calibration server -------------------------------------------------------
HELLO_READY_TIMEOUT_S = 30.0


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the hello server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the hello server did not listen on port {port} within {timeout_s:.0f}s")


@contextlib.contextmanager
def hello_server(out: Path, server: str = "app") -> Iterator[tuple[int, subprocess.Popen[bytes], list[str]]]:
    """`loadtest.hello --server SERVER` on a free loopback port, until the block ends:
    (port, process, argv)."""
    port = _free_port()
    argv = [sys.executable, "-m", "loadtest.hello", "--port", str(port), "--server", server]
    with open(out / f"hello-{server}.log", "wb") as handle:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
    try:
        _wait_for_port(port, proc, HELLO_READY_TIMEOUT_S)
        yield port, proc, argv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def run_hello_phase(
    args: argparse.Namespace,
    out: Path,
    templates: list[Any],
    *,
    start_rate: float,
    step_factor: float,
    steps_max: int,
    step_s: float,
    server: str = "app",
) -> dict[str, Any]:
    """The same generator, request bytes and gates as the main phase, against `loadtest.hello`
    (one aiohttp+uvloop process, no auth, no I/O). H = its max sustained rate; h = its CPU
    per request at that step. With server="null" (loadtest.hello's null protocol, almost
    free per request) the max sustained rate is the generator's own ceiling."""
    import psutil

    from loadtest.generator import LoadSpec, run_load
    from loadtest.hello import response_body
    from loadtest.stepper import find_max_sustained, knee

    body_bytes = len(response_body())
    result: dict[str, Any] = {
        "server": server,
        "response_bytes": body_bytes,
        "request_body_bytes_mean": round(sum(len(t.body) for t in templates) / max(1, len(templates))),
    }
    name = "hello" if server == "app" else f"hello-{server}"
    with hello_server(out, server) as (port, proc, argv):
        result["command"] = " ".join(argv[1:])
        server_proc = psutil.Process(proc.pid)
        extras: list[dict[str, Any]] = []

        def cpu_s() -> float:
            t = server_proc.cpu_times()
            return float(t.user + t.system)

        def run_at_rate(rate: float) -> Any:
            spec = LoadSpec(
                host="127.0.0.1",
                port=port,
                rate_per_s=rate,
                duration_s=step_s,
                requests=templates,
                processes=args.generator_processes,
                connections_max=args.connections,
                timeout_s=2.0,
                warmup_s=min(1.0, step_s * 0.2),
                run_id=uuid.uuid4().hex[:8],
                poll_interval_s=getattr(args, "generator_poll_ms", 0.0) / 1000,
            )
            before = cpu_s()
            load = run_load(spec)
            used = cpu_s() - before
            total = max(1, int(rate * step_s))
            ok_all = answered_in_step(load, total)
            extras.append(
                {
                    "sut_cpu_s": used,
                    "sut_cores": used / max(load.wall_s, 1e-9),
                    "sut_cpu_us_per_payment": used / ok_all * 1e6 if ok_all else None,
                }
            )
            return load

        def on_step(step: Any) -> None:
            r, extra = step.result, extras[-1]
            us = extra["sut_cpu_us_per_payment"]
            log(
                f"{name}: offered {step.offered_per_s:8.0f}/s  achieved {r.achieved_per_s:8.0f}/s  "
                f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:8.2f} ms  errors {r.errors}/{r.sent}  "
                f"server CPU {extra['sut_cores']:.2f} cores = {us if us is not None else float('nan'):.0f}"
                f" us/request  {'PASS' if step.passed else 'MISS: ' + '; '.join(step.failed_gates)}"
            )

        best, steps = find_max_sustained(
            run_at_rate,
            start_rate,
            step_factor=step_factor,
            rate_max=args.max_rate * 4,
            steps_max=steps_max,
            p99_ms_max=args.p99_ms,
            error_rate_max=args.error_rate_max,
            confirm_miss=not getattr(args, "quick", False),
            on_step=on_step,
        )
        step_dicts, best_step = merge_steps(steps, extras, best)
        result.update(
            {
                "steps": step_dicts,
                "max_sustained_offered_per_s": best,
                "knee": knee(best, steps),
                "hello_max_sustained_tps": best_step["achieved_per_s"] if best_step else None,
                "hello_cpu_us_per_request": best_step["sut_cpu_us_per_payment"] if best_step else None,
                "p99_ms": best_step["p99_ms"] if best_step else None,
                "search_capped": bool(steps) and all(s.passed for s in steps),
            }
        )
        if result["search_capped"]:
            log(f"{name}: every step passed: its figure is a lower bound (raise --max-rate or --steps-max)")
    return result


def rate_limiter_cost_us(calls: int = 200_000) -> float:
    """What the per-partner rate limiter (gateway/ratelimit.py) costs a request in this
    process: a check and the response's two header values, µs per request, best of 5. It
    runs in the gateway on every partner request, so it is part of the gateway's share of
    the SUT CPU per payment; this isolates it."""
    from gateway.ratelimit import RateLimit, RateLimiter

    limiter = RateLimiter(RateLimit(10_000.0, 20_000.0), worker=0, workers=2)
    partners = [f"ptn_{i:04d}" for i in range(100)]
    for partner in partners:
        limiter.check(partner, time.monotonic())
    best_s = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for i in range(calls):
            limiter.check(partners[i % 100], time.monotonic()).headers()
        best_s = min(best_s, time.perf_counter() - started)
    return best_s / calls * 1e6
