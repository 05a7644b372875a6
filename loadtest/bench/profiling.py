"""py-spy profiles of the shard and gateway workers (`--profile`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from loadtest.bench.common import log
from loadtest.bench.stack import StackProcess


# ---- profiling ---------------------------------------------------------------------------
def _py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("py-spy")
    if found:
        return found
    log("installing py-spy into the venv for --profile")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, timeout=300)
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def summarise_raw_profile(raw_path: Path, top: int = 25) -> str:
    """Top frames (self samples and inclusive samples) of a py-spy `-f raw` collapsed-stack file."""
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples", "", "top frames by own samples:"]
    for frame, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / max(total, 1):6.2f}%  {frame}")
    lines += ["", "top frames by inclusive samples:"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / max(total, 1):6.2f}%  {frame}")
    return "\n".join(lines) + "\n"


def start_profilers(
    stack: StackProcess, out: Path, seconds: int, prefix: str = ""
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """py-spy on shard 0 and a gateway worker for `seconds`: profile-{prefix}{name}.svg/.raw.txt."""
    spy = _py_spy()
    if spy is None:
        log("py-spy is not available; skipping the profile")
        return []
    targets = {
        f"{prefix}shard0": stack.child_pid("shard-worker", shard=0),
        f"{prefix}gateway0": stack.child_pid("gateway-worker"),
    }
    procs = []
    for name, pid in targets.items():
        if pid is None:
            log(f"profile: no {name} process found")
            continue
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "raw.txt")):
            command = [
                spy,
                "record",
                "--nonblocking",
                "-d",
                str(seconds),
                "-r",
                "100",
                "-f",
                fmt,
                "-o",
                str(out / f"profile-{name}.{suffix}"),
                "--pid",
                str(pid),
            ]
            procs.append(
                (f"{name}:{fmt}", subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            )
    return procs


def finish_profilers(procs: list[tuple[str, subprocess.Popen[bytes]]], out: Path, timeout_s: float) -> list[str]:
    files = []
    for name, proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            log(f"py-spy {name} failed: {(err or b'').decode(errors='replace')[-300:]}")
    for raw in sorted(out.glob("profile-*.raw.txt")):
        summary = out / raw.name.replace(".raw.txt", ".txt")
        summary.write_text(summarise_raw_profile(raw))
        files.append(summary.name)
    files += sorted(p.name for p in out.glob("profile-*.svg"))
    return files
