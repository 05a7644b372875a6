"""Starts the stack's processes and restarts any that die.

Each shard worker, gateway worker, the monitor and (with no --dsn) the embedded
PostgreSQL postmaster is its own OS process; a dead one is restarted with a
backoff that doubles while it keeps dying (0.2 s up to 5 s) and resets once it
has stayed up for HEALTHY_AFTER_S. A child that died CRASH_LOOP_AFTER times in a
row without staying up is *crash-looping*: the supervisor says so on stderr and
in a small JSON status file (`status_path`) that gateway workers read to answer
/readyz (503 while a needed child is down, naming it). The supervisor never
handles a payment itself.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CRASH_LOOP_AFTER", "Child", "Supervisor"]

log = logging.getLogger("quickpay.supervisor")

RESTART_BACKOFF_MIN_S = 0.2
RESTART_BACKOFF_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
STOP_TIMEOUT_S = 10.0
# Consecutive deaths (each before HEALTHY_AFTER_S of uptime) that make a child crash-looping.
CRASH_LOOP_AFTER = 3


def _die_with_parent(signum: int) -> Callable[[], None]:
    """In the child: ask Linux to send `signum` when the supervisor dies, even by SIGKILL,
    so no orphaned worker keeps the port, the shard's advisory lock or the data directory.

    subprocess runs preexec_fn after it has switched to `user=`, and only then is the
    setting kept (a credential change clears it). libc is loaded here, in the parent:
    the other user may not be allowed to read Python's extension modules."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum)

    return preexec


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Run as this user (the embedded PostgreSQL refuses to run as root).
    user: str | None = None
    # The signal that asks it to stop (PostgreSQL: SIGINT, a fast shutdown).
    stop_signal: int = signal.SIGTERM
    # Stopped after every other child (PostgreSQL: its clients go first).
    stop_last: bool = False
    # Finer order, when set: children stop by rank, lowest first (etcd after the Patroni
    # members that use it). Unset: 1 if stop_last, else 0.
    stop_rank: int | None = None
    # While a needed child is down the stack is not ready (/readyz 503).
    needed: bool = True
    # Called before every (re)start, e.g. to clear what a killed predecessor left.
    before_start: Callable[[], None] | None = None
    # Append its stdout and stderr to this file instead of the supervisor's.
    output: Path | None = None
    # Its own session: a Ctrl-C at the terminal (SIGINT to the whole foreground process
    # group) reaches only the supervisor, which then stops it in its turn (Patroni members:
    # standbys before leaders). It still dies with the supervisor (PR_SET_PDEATHSIG).
    new_session: bool = False
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = RESTART_BACKOFF_MIN_S
    restart_at: float | None = None
    # Deaths in a row, each before the child had stayed up HEALTHY_AFTER_S.
    failures: int = 0
    last_exit: int | None = None

    def start(self) -> None:
        if self.before_start is not None:
            self.before_start()
        env = {**os.environ, **self.env}
        out = open(self.output, "ab") if self.output is not None else None
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                user=self.user,
                stdout=out,
                stderr=out,
                start_new_session=self.new_session,
                preexec_fn=_die_with_parent(self.stop_signal),
            )
        finally:
            if out is not None:
                out.close()
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %s)", self.name, self.process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def crash_looping(self) -> bool:
        return self.failures >= CRASH_LOOP_AFTER

    def status(self, now: float) -> dict[str, Any]:
        if self.running:
            state = "running"
        elif self.restart_at is not None:
            state = "restarting"
        else:
            state = "stopped"
        return {
            "name": self.name,
            "state": state,
            "needed": self.needed,
            "pid": self.process.pid if self.running and self.process is not None else None,
            "restarts": self.restarts,
            "failures_in_a_row": self.failures,
            "crash_looping": self.crash_looping,
            "last_exit": self.last_exit,
            "next_restart_in_s": (round(max(0.0, self.restart_at - now), 2) if self.restart_at is not None else None),
        }


class Supervisor:
    def __init__(self, children: list[Child], *, status_path: Path | None = None, out: Any = None) -> None:
        self.children = children
        self.stopping = False
        self.status_path = status_path
        self.out = out if out is not None else sys.stderr

    def _say(self, message: str) -> None:
        print(f"quickpay: {message}", file=self.out, flush=True)

    def start(self, children: list[Child] | None = None) -> None:
        for child in self.children if children is None else children:
            child.start()
        self.write_status()

    def poll_once(self) -> None:
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_S and (
                    child.failures or child.backoff_s != RESTART_BACKOFF_MIN_S
                ):
                    if child.crash_looping:
                        self._say(f"{child.name} has stayed up {HEALTHY_AFTER_S:.0f}s: no longer crash-looping")
                    child.backoff_s = RESTART_BACKOFF_MIN_S
                    child.failures = 0
                    changed = True
                continue
            if self.stopping:
                continue
            if child.restart_at is None:
                child.last_exit = code
                if now - child.started_at > HEALTHY_AFTER_S:
                    child.failures = 0
                    child.backoff_s = RESTART_BACKOFF_MIN_S
                child.failures += 1
                log.info("%s exited with %s; restarting in %.1fs", child.name, code, child.backoff_s)
                if child.crash_looping:
                    self._say(
                        f"{child.name} is crash-looping: exited with {code}, {child.failures} deaths "
                        f"in a row; restarting in {child.backoff_s:.1f}s"
                    )
                else:
                    self._say(f"{child.name} exited with {code}; restarting in {child.backoff_s:.1f}s")
                child.restart_at = now + child.backoff_s
                child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
                changed = True
            elif now >= child.restart_at:
                child.restarts += 1
                try:
                    child.start()
                except OSError as exc:  # e.g. the executable vanished: count it as a death
                    self._say(f"{child.name} could not be started: {exc}")
                    child.process = None
                    child.failures += 1
                    child.restart_at = now + child.backoff_s
                    child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
                changed = True
        if changed:
            self.write_status()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "supervisor_pid": os.getpid(),
            "updated_at_ms": int(time.time() * 1000),
            "children": [child.status(now) for child in self.children],
        }

    def write_status(self) -> None:
        """Atomically replace the status file (write a temporary file, then rename)."""
        if self.status_path is None:
            return
        tmp = self.status_path.with_name(self.status_path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, self.status_path)
        except OSError as exc:  # a full disk must not stop the supervision itself
            log.warning("could not write %s: %s", self.status_path, exc)

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
        """Stop every child by rank (`stop_rank`; `stop_last` ones after the others), each rank
        in reverse start order: PostgreSQL after its clients, etcd after Patroni."""
        self.stopping = True
        ranks = sorted({_rank(c) for c in self.children})
        for rank in ranks:
            self._stop(
                [c for c in self.children if _rank(c) == rank],
                timeout_s=STOP_TIMEOUT_S if rank == 0 else 3 * STOP_TIMEOUT_S,
            )
        if self.status_path is not None:
            try:
                self.status_path.unlink()
            except OSError:
                pass

    @staticmethod
    def _stop(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
        for child in reversed(children):
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(child.stop_signal)
                # A stopped (SIGSTOP) child would never act on it: a frozen Patroni left by
                # an interrupted drill, say.
                child.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + timeout_s
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def _rank(child: Child) -> int:
    if child.stop_rank is not None:
        return child.stop_rank
    return 1 if child.stop_last else 0
