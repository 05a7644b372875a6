"""Baselines measured in the same run: pgbench TPC-B on the same PostgreSQL."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

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
    exists = subprocess.run([psql, *conn, "-d", "postgres", "-tAc",
                             "SELECT 1 FROM pg_database WHERE datname = 'pgbench'"],
                            capture_output=True, text=True, timeout=60, env=env)
    if exists.stdout.strip() != "1":
        subprocess.run([psql, *conn, "-d", "postgres", "-qc", "CREATE DATABASE pgbench"],
                       check=True, capture_output=True, text=True, timeout=60, env=env)
    pgbench = str(BIN_PATH / "pgbench")
    started = time.monotonic()
    init = subprocess.run([pgbench, *conn, "-i", "-q", "-s", str(scale), "pgbench"],
                          capture_output=True, text=True, timeout=600, env=env)
    init_s = time.monotonic() - started
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr[-2000:]}")
    command = [pgbench, *conn, "-c", "8", "-j", "2", "-T", str(max(1, int(round(seconds)))), "-n", "pgbench"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    (out / "pgbench.txt").write_text(result.stdout + result.stderr)
    tps = parse_pgbench_tps(result.stdout)
    if result.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed: {result.stderr[-2000:]}")
    return {"tps": tps, "scale": scale, "seconds": seconds, "clients": 8, "threads": 2, "init_s": round(init_s, 1),
            "command": "pgbench -c 8 -j 2 -T %d -n (TPC-B, scale %d, same embedded PostgreSQL, fsync on)"
                       % (max(1, int(round(seconds))), scale)}


