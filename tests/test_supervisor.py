"""The supervisor on its own (no stack): a child that keeps dying backs off and is
reported as crash-looping (stderr and the status file), and `stop` stops the
`stop_last` child (PostgreSQL) only after every other child has exited, with its own
stop signal."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from pathlib import Path

from gateway.health import read_status
from quickpay.supervisor import CRASH_LOOP_AFTER, Child, Supervisor


def test_crash_loop_backs_off_and_is_reported(tmp_path: Path) -> None:
    out = io.StringIO()
    status_path = tmp_path / "supervisor.json"
    flaky = Child("flaky", [sys.executable, "-c", "raise SystemExit(3)"])
    steady = Child("steady", [sys.executable, "-c", "import time; time.sleep(60)"], needed=False)
    supervisor = Supervisor([flaky, steady], status_path=status_path, out=out)
    supervisor.start()
    try:
        deadline = time.monotonic() + 60
        while flaky.failures < CRASH_LOOP_AFTER + 1:
            assert time.monotonic() < deadline, out.getvalue()
            supervisor.poll_once()
            time.sleep(0.02)
        status = {c["name"]: c for c in read_status(status_path)["children"]}  # type: ignore[index]
        assert status["flaky"]["crash_looping"] and status["flaky"]["last_exit"] == 3
        assert status["flaky"]["state"] in ("restarting", "running")
        assert status["steady"]["state"] == "running" and not status["steady"]["crash_looping"]
        text = out.getvalue()
        assert "flaky is crash-looping" in text
        delays = [float(d) for d in re.findall(r"flaky .*restarting in ([\d.]+)s", text)]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        assert "steady" not in text
    finally:
        supervisor.stop()
    assert not status_path.exists()


STOPS_SLOWLY = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(0.5)
    open(sys.argv[1], "a").write(f"app {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[2], "w").write("up")
while True:
    time.sleep(0.05)
"""

DATABASE = """
import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], "a").write(f"db {signal.Signals(signum).name} {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[2], "w").write("up")
while True:
    time.sleep(0.05)
"""


def test_stop_last_child_stops_after_the_others(tmp_path: Path) -> None:
    import signal

    events = tmp_path / "events"
    db = Child(
        "postgres",
        [sys.executable, "-c", DATABASE, str(events), str(tmp_path / "db.up")],
        stop_signal=signal.SIGINT,
        stop_last=True,
    )
    app = Child("app", [sys.executable, "-c", STOPS_SLOWLY, str(events), str(tmp_path / "app.up")])
    supervisor = Supervisor([db, app])
    supervisor.start()
    deadline = time.monotonic() + 30
    while not ((tmp_path / "db.up").exists() and (tmp_path / "app.up").exists()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    supervisor.stop()
    lines = events.read_text().split("\n")
    assert lines[0].startswith("app ") and lines[1].startswith("db SIGINT "), lines
    assert float(lines[1].split()[2]) >= float(lines[0].split()[1])
    assert json.dumps(db.status(time.monotonic()))  # serialisable
