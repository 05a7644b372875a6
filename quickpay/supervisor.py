"""Starts the stack's processes and restarts any that die.

Each shard worker, gateway worker and the monitor is its own OS process; a
crashed one is restarted with a bounded backoff. The supervisor never handles
a payment itself.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

__all__ = ["Child", "Supervisor"]

log = logging.getLogger("quickpay.supervisor")

RESTART_BACKOFF_MIN_S = 0.2
RESTART_BACKOFF_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
STOP_TIMEOUT_S = 10.0


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the supervisor dies, even by SIGKILL,
    so no orphaned worker keeps the port or the shard's advisory lock."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = RESTART_BACKOFF_MIN_S
    restart_at: float | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %s)", self.name, self.process.pid)


class Supervisor:
    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            child.start()

    def poll_once(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_S:
                    child.backoff_s = RESTART_BACKOFF_MIN_S
                continue
            if self.stopping:
                continue
            if child.restart_at is None:
                log.warning("%s exited with %s; restarting in %.1fs", child.name, code, child.backoff_s)
                print(f"quickpay: {child.name} exited with {code}; restarting", file=sys.stderr, flush=True)
                child.restart_at = now + child.backoff_s
                child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
            elif now >= child.restart_at:
                child.restarts += 1
                child.start()

    def run_until_signal(self) -> None:
        received: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            received.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not received:
            self.poll_once()
            time.sleep(0.1)

    def stop(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
