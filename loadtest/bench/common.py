"""Shared bits of the bench: constants, logging, ports, machine description."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

ZIPF_EXPONENT = 1.1
TEMPLATES_MAX = 4096
FUNDING = "1000000.00"  # per customer: enough for every 1.00 payment a long run puts on a hot debtor
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- machine ---------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_mb = None
    try:
        import psutil

        memory_mb = round(psutil.virtual_memory().total / 2**20)
    except Exception:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_mb": memory_mb,
        "hostname": platform.node(),
    }


def merge_steps(
    steps: list[Any], extras: list[dict[str, Any]], best: float
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each step's dict (stepper.StepResult.to_dict) with what the phase measured around it,
    and the best passing step's (None when no step passed)."""
    step_dicts = []
    for step, extra in zip(steps, extras):
        d = step.to_dict()
        d.update(extra)
        step_dicts.append(d)
    best_step = next((d for d in step_dicts if d["passed"] and d["offered_per_s"] == best), None)
    return step_dicts, best_step


def answered_in_step(load: Any, total: int) -> float:
    """2xx answers over the whole step, warm-up included (what CPU over the step pays for):
    the generator counts `ok` in the measured window only, so scale it by requests sent."""
    measured_fraction = load.sent / total if total else 1.0
    return float(load.ok / measured_fraction if measured_fraction > 0 else load.ok)
