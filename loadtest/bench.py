"""`quickpay bench`: the quick-pay path under open-loop load, with baselines and checks.

Phases (each on its own `quickpay up` subprocess and state directory):
  main    the stack as configured; max sustained rate with p99 <= --p99-ms and errors below
          --error-rate-max, SUT CPU per payment measured from the OS (psutil).
  naive   the same load against `quickpay up --ledger-mode naive` (one PostgreSQL
          transaction per payment with row locks), fewer customers.
  pgbench TPC-B on the main phase's embedded PostgreSQL (same server, same fsync settings).
  sweep   (--sweep) shards {1,2,4} x gateway workers {1,2}, a short search each.
After each load phase: exactly-once (every request of every step is looked up by its
payment id, which is derived from the idempotency key; plus a verification burst whose
acknowledged ids must each exist exactly once) and conservation (ledger.audit).
Writes OUT/bench-report.json, OUT/bench-summary.md and PNG plots.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import csv
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "run_bench", "resolve_settings", "verify_exactly_once", "check_conservation", "expected_payment_ids",
    "SutCpu", "StackProcess", "build_templates", "parse_pgbench_tps", "projection", "summary_markdown",
]

TARGETS = {"tps": 9000.0, "p99_ms": 25.0, "cpu_us_per_payment": 100.0, "ratio_vs_naive": 3.0,
           "ratio_vs_pgbench": 3.0}
ZIPF_EXPONENT = 1.1
TEMPLATES_MAX = 4096
FUNDING = "1000000.00"  # per customer: enough for every 1.00 payment a long run puts on a hot debtor
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- settings --------------------------------------------------------------------------
def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left at None with the full or the --quick default."""
    quick = bool(getattr(args, "quick", False))
    defaults: dict[str, Any] = {
        "customers": 20_000 if quick else 1_000_000,
        "partners": 2 if quick else 10,
        "step_s": 5.0 if quick else 10.0,
        "start_rate": 250.0 if quick else 500.0,
        "step_factor": 2.0 if quick else 1.5,
        "steps_max": 5 if quick else 14,
        "naive_customers": 5_000 if quick else 20_000,
        "pgbench_s": 5.0 if quick else 30.0,
    }
    resolved = argparse.Namespace(**vars(args))
    for name, value in defaults.items():
        if getattr(resolved, name, None) is None:
            setattr(resolved, name, value)
    fallbacks: dict[str, Any] = {"max_rate": 20000.0, "generator_processes": 1, "connections": 256, "p99_ms": 25.0,
                        "error_rate_max": 0.001, "no_baselines": False, "no_rules": False, "sweep": False,
                        "profile": False, "port": 18080, "shards": 1, "workers": 1, "dsn": None,
                        "generator_poll_ms": 1.0,
                        "state_dir": None, "out": "bench-out", "verify_payments": 200, "pgbench_scale": 10}
    for name, value in fallbacks.items():
        if not hasattr(resolved, name):
            setattr(resolved, name, value)
    return resolved


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
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu_model,
            "cpu_count": os.cpu_count(), "memory_mb": memory_mb, "hostname": platform.node()}


# ---- the stack -------------------------------------------------------------------------
class StackProcess:
    """`quickpay up` as a subprocess; stopped with SIGTERM (then SIGKILL) on exit, always."""

    def __init__(self, state_dir: Path, port: int, shards: int, workers: int, log_path: Path, *,
                 no_rules: bool = False, rules: Path | None = None, ledger_mode: str | None = None,
                 dsns: list[str] | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.shards = shards
        self.workers = workers
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "quickpay.cli", "up", "--state-dir", str(self.state_dir),
                     "--port", str(port), "--shards", str(shards), "--workers", str(workers), "--no-monitor"]
        if no_rules:
            self.argv.append("--no-rules")
        elif rules is not None:
            self.argv += ["--rules", str(rules)]
        if ledger_mode and ledger_mode != "batched":
            self.argv += ["--ledger-mode", ledger_mode]
        for dsn in dsns or []:
            self.argv += ["--dsn", dsn]
        self.external_dsns = list(dsns or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> "StackProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("QUICKPAY_TOKEN_KEY", None)
        env.pop("QUICKPAY_ADMIN_TOKEN", None)
        root = Path(__file__).resolve().parent.parent
        with open(self.log_path, "wb") as handle:
            self.proc = subprocess.Popen(self.argv, cwd=root, stdin=subprocess.DEVNULL, stdout=handle,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "quickpay ready" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_text()[-3000:]
                self.stop()
                raise RuntimeError(f"`quickpay up` did not become ready (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def dsns(self) -> list[str]:
        if self.external_dsns:
            return list(self.external_dsns)
        from quickpay.embedded_pg import EmbeddedPostgres, shard_database
        pg = EmbeddedPostgres(self.state_dir)
        return [pg.dsn(shard_database(i)) for i in range(self.shards)]

    def child_pid(self, marker: str, shard: int | None = None) -> int | None:
        import psutil
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if marker not in cmd:
                continue
            if shard is not None:
                if "--shard" not in cmd or cmd[cmd.index("--shard") + 1] != str(shard):
                    continue
            return int(child.pid)
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.external_dsns:
            # `up` stops PostgreSQL on a clean exit; make sure after a kill too.
            try:
                from quickpay.embedded_pg import EmbeddedPostgres
                EmbeddedPostgres(self.state_dir).stop()
            except Exception:
                pass

    def __enter__(self) -> "StackProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- CPU of the system under test ------------------------------------------------------
class SutCpu:
    """user+sys CPU seconds of the `up` process tree plus the PostgreSQL server's processes."""

    def __init__(self, up_pid: int, state_dir: Path | None) -> None:
        self.up_pid = up_pid
        self.state_dir = Path(state_dir) if state_dir is not None else None

    def _postmaster_pid(self) -> int | None:
        if self.state_dir is None:
            return None
        try:
            return int((self.state_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> dict[int, Any]:
        import psutil
        found: dict[int, Any] = {}
        roots = [self.up_pid]
        postmaster = self._postmaster_pid()
        if postmaster is not None:
            roots.append(postmaster)
        for root in roots:
            try:
                proc = psutil.Process(root)
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
            except psutil.Error:
                continue
        return found

    def sample(self) -> dict[int, float]:
        import psutil
        times: dict[int, float] = {}
        self.groups: dict[int, str] = getattr(self, "groups", {})
        for pid, proc in self.processes().items():
            try:
                t = proc.cpu_times()
                times[pid] = t.user + t.system
                if pid not in self.groups:
                    self.groups[pid] = _process_group(proc.cmdline())
            except psutil.Error:
                continue
        return times

    def delta_by_group(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds per process group: gateway, shard, postgres, other."""
        groups: dict[str, float] = {}
        for pid, value in after.items():
            group = getattr(self, "groups", {}).get(pid, "other")
            groups[group] = groups.get(group, 0.0) + max(0.0, value - before.get(pid, 0.0))
        return groups

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU used between two samples; a process started in between counts from zero."""
        return sum(max(0.0, value - before.get(pid, 0.0)) for pid, value in after.items())


def _process_group(cmdline: list[str]) -> str:
    if "gateway-worker" in cmdline:
        return "gateway"
    if "shard-worker" in cmdline:
        return "shard"
    if cmdline and cmdline[0].startswith("postgres"):
        return "postgres"
    return "other"


# ---- population and request templates --------------------------------------------------
@dataclass
class Population:
    partners: list[dict[str, Any]]
    agreements: list[tuple[int, str, str]]  # (partner_index, agreement_id, debtor_account)
    tokens: list[str] = field(default_factory=list)


def bench_rules(out: Path) -> Path:
    """The shipped rules with the per-debtor velocity thresholds raised out of reach.

    Every rule is still compiled and evaluated on every payment; only the thresholds of the
    two debtor-velocity rules change, since synthetic load at thousands of payments per
    second over a few thousand hot debtors would otherwise be (correctly) blocked.
    """
    from fraud import __file__ as fraud_init
    text = (Path(fraud_init).parent / "default.rules").read_text()
    text = re.sub(r"count\(by debtor, 10m\) > [0-9_]+", "count(by debtor, 10m) > 1_000_000_000", text)
    text = re.sub(r"sum\(amount, by debtor, 1h\) > [0-9_]+", "sum(amount, by debtor, 1h) > 1_000_000_000_000_000",
                  text)
    path = out / "bench.rules"
    path.write_text(text)
    return path


def seed(stack: StackProcess, customers: int, partners: int, out: Path) -> Population:
    from quickpay.httpclient import Api
    from quickpay.seed import seed_population
    started = time.monotonic()
    ns = argparse.Namespace(url=stack.base_url, state_dir=str(stack.state_dir), partners=partners,
                            customers=customers, funding=FUNDING, blocked_share=0.0, out=str(out))
    population = seed_population(ns)
    rows: list[tuple[int, str, str]] = []
    with open(out / "agreements.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [(int(p), a, d) for p, a, d in reader]
    api = Api(stack.base_url)
    tokens = [api.token(p["client_id"], p["client_secret"]) for p in population["partners"]]
    log(f"seeded {partners} partners and {len(rows)} customers in {time.monotonic() - started:.1f}s")
    return Population(population["partners"], rows, tokens)


def build_templates(population: Population, count: int = TEMPLATES_MAX, seed_value: int = 11,
                    exponent: float = ZIPF_EXPONENT) -> tuple[list[Any], list[tuple[str, str]]]:
    """Request templates with Zipf-skewed debtors; also (partner_id, agreement_id) per template."""
    from loadtest.generator import IDEMPOTENCY_KEY, RequestTemplate
    rng = random.Random(seed_value)
    rows = list(population.agreements)
    rng.shuffle(rows)  # the hot debtors are random accounts, not the first seeded
    cumulative = list(itertools.accumulate(1.0 / (rank ** exponent) for rank in range(1, len(rows) + 1)))
    total = cumulative[-1]
    templates: list[Any] = []
    routes: list[tuple[str, str]] = []
    for _ in range(min(count, max(1, len(rows) * 4))):
        index = min(bisect.bisect_left(cumulative, rng.random() * total), len(rows) - 1)
        partner_index, agreement_id, _debtor = rows[index]
        partner = population.partners[partner_index]
        body = json.dumps({"agreement_id": agreement_id, "amount": "1.00", "currency": "CNY",
                           "creditor_account": partner["settlement_account"],
                           "reference": "bench " + IDEMPOTENCY_KEY}, separators=(",", ":")).encode()
        templates.append(RequestTemplate(
            method="POST", path="/v1/quick-payments",
            headers=(("Authorization", f"Bearer {population.tokens[partner_index]}"),
                     ("Content-Type", "application/json")),
            body=body, idempotency_key_header="x-idempotency-key"))
        routes.append((partner["partner_id"], agreement_id))
    return templates, routes


def expected_payment_ids(run_id: str, total: int, processes: int, routes: list[tuple[str, str]],
                         shard_count: int) -> list[str]:
    """Every payment id a `run_load` with this run id sends (no retries): the generator's keys
    are run id + worker index (3 digits) + sequence (11 digits), template = sequence mod n."""
    from quickpay.ids import payment_id_for, shard_of
    ids = []
    n = len(routes)
    shards = [shard_of(agreement, shard_count) for _, agreement in routes]
    for worker in range(processes):
        count = total // processes + (1 if worker < total % processes else 0)
        prefix = f"{run_id}{worker:03d}"
        for sequence in range(count):
            t = sequence % n
            ids.append(payment_id_for(routes[t][0], f"{prefix}{sequence:011d}", shards[t]))
    return ids


# ---- checks --------------------------------------------------------------------------------
async def _payment_rows(dsns: list[str], ids: list[str], chunk: int = 20_000) -> list[dict[str, int]]:
    """Per shard: payment id -> number of (non-rejected) payment rows with that id."""
    import asyncpg
    found: list[dict[str, int]] = []
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            counts: dict[str, int] = {}
            for start in range(0, len(ids), chunk):
                for row in await conn.fetch(
                        "SELECT id, count(*) AS n FROM transfers WHERE id = ANY($1::text[]) AND kind = 'payment'"
                        " AND status <> 'Rejected' GROUP BY id", ids[start:start + chunk]):
                    counts[row["id"]] = int(row["n"])
            found.append(counts)
        finally:
            await conn.close()
    return found


def verify_exactly_once(acknowledged_ids: list[str], dsns: list[str]) -> tuple[bool, list[str]]:
    """Every acknowledged payment id must exist exactly once across all shards."""
    problems: list[str] = []
    wanted = list(dict.fromkeys(acknowledged_ids))
    if len(wanted) != len(acknowledged_ids):
        problems.append(f"{len(acknowledged_ids) - len(wanted)} payment ids were acknowledged twice")
    per_shard = asyncio.run(_payment_rows(dsns, wanted))
    missing = doubled = 0
    for payment_id in wanted:
        n = sum(shard.get(payment_id, 0) for shard in per_shard)
        if n == 0:
            missing += 1
            if missing <= 5:
                problems.append(f"acknowledged payment {payment_id} is not in the ledger")
        elif n > 1:
            doubled += 1
            if doubled <= 5:
                shards = [i for i, shard in enumerate(per_shard) if payment_id in shard]
                problems.append(f"payment {payment_id} is in the ledger {n} times (shards {shards})")
    if missing > 5:
        problems.append(f"... {missing} acknowledged payments missing in all")
    if doubled > 5:
        problems.append(f"... {doubled} payments recorded more than once in all")
    return not problems, problems


def check_load_ids(sent_ids: list[str], acknowledged: int, dsns: list[str]) -> dict[str, Any]:
    """For the load steps, where the generator does not return ids: of the ids it sent (known
    from the keys), how many are in the ledger; none may be there twice, and there must be
    at least as many as were acknowledged (201) and no more than were sent."""
    per_shard = asyncio.run(_payment_rows(dsns, list(dict.fromkeys(sent_ids))))
    totals: dict[str, int] = {}
    for shard in per_shard:
        for payment_id, n in shard.items():
            totals[payment_id] = totals.get(payment_id, 0) + n
    present = len(totals)
    doubled = sum(1 for n in totals.values() if n > 1)
    problems = []
    if doubled:
        problems.append(f"{doubled} load payments are in the ledger more than once")
    if present < acknowledged:
        problems.append(f"only {present} load payments are in the ledger but {acknowledged} were acknowledged")
    if present > len(sent_ids):
        problems.append(f"{present} load payments in the ledger but only {len(sent_ids)} were sent")
    return {"ok": not problems, "problems": problems, "sent": len(sent_ids), "acknowledged": acknowledged,
            "in_ledger": present, "doubled": doubled, "rows": sum(totals.values())}


async def _count_payment_rows(dsns: list[str]) -> int:
    import asyncpg
    total = 0
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            total += int(await conn.fetchval("SELECT count(*) FROM transfers WHERE kind = 'payment'"
                                             " AND status <> 'Rejected'"))
        finally:
            await conn.close()
    return total


def count_payment_rows(dsns: list[str]) -> int:
    return asyncio.run(_count_payment_rows(dsns))


def check_conservation(dsns: list[str]) -> tuple[bool, dict[str, Any]]:
    from ledger.audit import audit
    report = asyncio.run(audit(dsns))
    return bool(report.ok), report.to_dict()


async def _verification_burst(base_url: str, population: Population, count: int,
                              replays: int = 20) -> dict[str, Any]:
    """`count` payments with known keys; returns the acknowledged ids and replay results."""
    import aiohttp
    rng = random.Random(5)
    run = uuid.uuid4().hex[:8]
    acknowledged: list[str] = []
    failures: list[str] = []
    sent: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
    replay_mismatch = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        semaphore = asyncio.Semaphore(32)

        async def pay(i: int) -> None:
            partner_index, agreement_id, _ = population.agreements[rng.randrange(len(population.agreements))]
            partner = population.partners[partner_index]
            key = f"verify-{run}-{i}"
            body = {"agreement_id": agreement_id, "amount": "1.00", "currency": "CNY",
                    "creditor_account": partner["settlement_account"], "reference": f"verify {i}"}
            headers = {"authorization": f"Bearer {population.tokens[partner_index]}", "x-idempotency-key": key}
            async with semaphore:
                async with session.post(f"{base_url}/v1/quick-payments", json=body, headers=headers) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 201:
                        acknowledged.append(data["payment_id"])
                        sent.append((body, key, {"headers": headers, "payment_id": data["payment_id"]}))
                    else:
                        failures.append(f"{resp.status}: {str(data)[:200]}")

        await asyncio.gather(*(pay(i) for i in range(count)))
        for body, key, meta in sent[:replays]:
            async with session.post(f"{base_url}/v1/quick-payments", json=body, headers=meta["headers"]) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 201 or data.get("payment_id") != meta["payment_id"]:
                    replay_mismatch += 1
    return {"acknowledged": acknowledged, "failures": failures, "replays": min(replays, len(sent)),
            "replay_mismatch": replay_mismatch}


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


def start_profilers(stack: StackProcess, out: Path, seconds: int) -> list[tuple[str, subprocess.Popen[bytes]]]:
    spy = _py_spy()
    if spy is None:
        log("py-spy is not available; skipping the profile")
        return []
    targets = {"shard0": stack.child_pid("shard-worker", shard=0), "gateway0": stack.child_pid("gateway-worker")}
    procs = []
    for name, pid in targets.items():
        if pid is None:
            log(f"profile: no {name} process found")
            continue
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "raw.txt")):
            command = [spy, "record", "--nonblocking", "-d", str(seconds), "-r", "100", "-f", fmt,
                       "-o", str(out / f"profile-{name}.{suffix}"), "--pid", str(pid)]
            procs.append((f"{name}:{fmt}", subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                            stderr=subprocess.PIPE)))
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


# ---- one load phase ------------------------------------------------------------------------
@dataclass
class PhaseConfig:
    name: str
    state_dir: Path
    port: int
    shards: int
    workers: int
    customers: int
    partners: int
    step_s: float
    start_rate: float
    step_factor: float
    steps_max: int
    max_rate: float
    ledger_mode: str | None = None
    dsns: list[str] | None = None
    verify: bool = True
    verify_payments: int = 200
    profile: bool = False
    pgbench: bool = False
    pgbench_s: float = 5.0
    pgbench_scale: int = 10


def settle_database(dsns: list[str]) -> None:
    """VACUUM ANALYZE and CHECKPOINT every shard after seeding, as pgbench does before
    its runs, so that autovacuum and a checkpoint of the seed don't land in a step."""
    import asyncpg

    async def settle() -> None:
        for dsn in dsns:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("VACUUM ANALYZE")
                await conn.execute("CHECKPOINT")
            finally:
                await conn.close()

    started = time.monotonic()
    asyncio.run(settle())
    log(f"vacuum analyze + checkpoint of {len(dsns)} shard databases took {time.monotonic() - started:.1f}s")


def _warmup(step_s: float) -> float:
    return min(1.0, step_s * 0.2)


def run_phase(cfg: PhaseConfig, args: argparse.Namespace, out: Path, rules: Path | None) -> dict[str, Any]:
    from loadtest.generator import LoadSpec, run_load
    from loadtest.stepper import find_max_sustained
    phase_out = out / cfg.name
    phase_out.mkdir(parents=True, exist_ok=True)
    stack = StackProcess(cfg.state_dir, cfg.port, cfg.shards, cfg.workers, out / f"up-{cfg.name}.log",
                         no_rules=args.no_rules, rules=rules, ledger_mode=cfg.ledger_mode, dsns=cfg.dsns)
    result: dict[str, Any] = {"phase": cfg.name, "shards": cfg.shards, "gateway_workers": cfg.workers,
                              "customers": cfg.customers, "partners": cfg.partners,
                              "ledger_mode": cfg.ledger_mode or "batched", "up_command": " ".join(stack.argv)}
    log(f"{cfg.name}: starting the stack ({cfg.shards} shards, {cfg.workers} gateway workers"
        f"{', ledger-mode ' + cfg.ledger_mode if cfg.ledger_mode else ''})")
    started = time.monotonic()
    with stack:
        log(f"{cfg.name}: stack ready in {time.monotonic() - started:.1f}s")
        population = seed(stack, cfg.customers, cfg.partners, phase_out)
        settle_database(stack.dsns())
        templates, routes = build_templates(population)
        dsns = stack.dsns()
        cpu = SutCpu(stack.pid, None if cfg.dsns else stack.state_dir)
        sent_ids: list[str] = []
        acknowledged = 0
        extras: list[dict[str, Any]] = []
        # Warm-up pass (not measured): one request per template at a low rate, so that the
        # first measured step does not pay for loading every hot debtor into the workers.
        warm_rate = min(cfg.start_rate, 500.0)
        warm_s = max(1.0, min(len(templates) / warm_rate, 8.0, 2 * cfg.step_s))
        warm_id = uuid.uuid4().hex[:8]
        warm_spec = LoadSpec(host="127.0.0.1", port=cfg.port, rate_per_s=warm_rate, duration_s=warm_s,
                             requests=templates, connections_max=args.connections, timeout_s=2.0, run_id=warm_id)
        rows_before = count_payment_rows(dsns)
        warm = run_load(warm_spec)
        sent_ids.extend(expected_payment_ids(warm_id, max(1, int(warm_rate * warm_s)), 1, routes, cfg.shards))
        acknowledged += warm.ok
        log(f"{cfg.name}: warm-up {warm.sent} requests at {warm_rate:.0f}/s: {warm.status_counts},"
            f" p99 {warm.p99_ms:.1f} ms (not measured)")

        def run_at_rate(rate: float) -> Any:
            nonlocal acknowledged
            run_id = uuid.uuid4().hex[:8]
            spec = LoadSpec(host="127.0.0.1", port=cfg.port, rate_per_s=rate, duration_s=cfg.step_s,
                            requests=templates, processes=args.generator_processes,
                            connections_max=args.connections, timeout_s=2.0, warmup_s=_warmup(cfg.step_s),
                            run_id=run_id, poll_interval_s=getattr(args, "generator_poll_ms", 0.0) / 1000)
            before = cpu.sample()
            load = run_load(spec)
            after = cpu.sample()
            sut_cpu_s = SutCpu.delta(before, after)
            by_group = cpu.delta_by_group(before, after)
            total = max(1, int(spec.rate_per_s * spec.duration_s))
            sent_ids.extend(expected_payment_ids(run_id, total, spec.processes, routes, cfg.shards))
            acknowledged += load.ok
            # SUT CPU covers the whole step (warm-up included), so divide by every 2xx of the
            # step: ok counts only the measured window, scale it by the requests sent.
            measured_fraction = load.sent / total if total else 1.0
            ok_all = load.ok / measured_fraction if measured_fraction > 0 else load.ok
            extras.append({"sut_cpu_s": sut_cpu_s, "run_id": run_id, "requests_total": total,
                           "sut_cpu_us_per_payment_by_process": {
                               group: seconds / ok_all * 1e6 if ok_all else None
                               for group, seconds in sorted(by_group.items())},
                           "sut_cpu_us_per_payment": sut_cpu_s / ok_all * 1e6 if ok_all else None,
                           "sut_cores": sut_cpu_s / max(load.wall_s, 1e-9),
                           "generator_cpu_share": load.generator_cpu_s / (load.generator_cpu_s + sut_cpu_s)
                           if sut_cpu_s + load.generator_cpu_s > 0 else None})
            return load

        def on_step(step: Any) -> None:
            r, extra = step.result, extras[-1]
            us = extra["sut_cpu_us_per_payment"]
            log(f"{cfg.name}: offered {step.offered_per_s:8.0f}/s  achieved {r.achieved_per_s:8.0f}/s  "
                f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:8.2f} ms  errors {r.errors}/{r.sent} "
                f"({r.error_ratio:.3%})  SUT CPU {extra['sut_cores']:.2f} cores"
                f" = {us if us is not None else float('nan'):.0f} us/payment  "
                f"{'PASS' if step.passed else 'MISS: ' + '; '.join(step.failed_gates)}")

        best, steps = find_max_sustained(
            run_at_rate, cfg.start_rate, step_factor=cfg.step_factor, rate_max=cfg.max_rate,
            steps_max=cfg.steps_max, p99_ms_max=args.p99_ms, error_rate_max=args.error_rate_max,
            confirm_miss=not getattr(args, "quick", False), on_step=on_step)
        if best == 0.0 and cfg.start_rate / 4 >= 10:
            log(f"{cfg.name}: even {cfg.start_rate:.0f}/s missed the gates; searching once more from "
                f"{cfg.start_rate / 4:.0f}/s")
            best, more = find_max_sustained(
                run_at_rate, cfg.start_rate / 4, step_factor=2.0, rate_max=cfg.start_rate,
                steps_max=2, p99_ms_max=args.p99_ms, error_rate_max=args.error_rate_max, on_step=on_step)
            steps = steps + more
        step_dicts = []
        for step, extra in zip(steps, extras):
            d = step.to_dict()
            d.update(extra)
            step_dicts.append(d)
        result["steps"] = step_dicts
        result["max_sustained_offered_per_s"] = best
        best_step = next((d for d in step_dicts if d["passed"] and d["offered_per_s"] == best), None)
        result["best_step"] = best_step
        result["max_sustained_tps"] = best_step["achieved_per_s"] if best_step else 0.0
        if best_step is None:
            log(f"{cfg.name}: no step met the gates")

        if cfg.profile:
            rate = max(100.0, 0.7 * best) if best else cfg.start_rate
            seconds = int(min(10, max(3, cfg.step_s)))
            log(f"{cfg.name}: profiling at {rate:.0f}/s for {seconds}s with py-spy")
            procs = start_profilers(stack, out, seconds)
            load = run_at_rate(rate)
            result["profile"] = {"rate_per_s": rate, "seconds": seconds, "p99_ms": load.p99_ms,
                                 "files": finish_profilers(procs, out, seconds + 30)}

        if cfg.verify:
            burst: dict[str, Any] = {"acknowledged": [], "failures": [], "replays": 0, "replay_mismatch": 0}
            if cfg.verify_payments > 0:
                burst = asyncio.run(_verification_burst(stack.base_url, population, cfg.verify_payments))
            time.sleep(0.5)  # let in-flight cross-shard legs (none expected) settle
            ok_burst, problems = verify_exactly_once(burst["acknowledged"], dsns)
            load_check = check_load_ids(sent_ids, acknowledged, dsns)
            rows_after = count_payment_rows(dsns)
            rows_delta = rows_after - rows_before
            expected_delta = load_check["rows"] + len(burst["acknowledged"])
            count_ok = rows_delta == expected_delta
            if not count_ok:
                problems.append(f"payment rows grew by {rows_delta} but the load and the burst account for"
                                f" {expected_delta}")
            if burst["failures"]:
                problems.append(f"{len(burst['failures'])} verification payments failed: {burst['failures'][:3]}")
            if burst["replay_mismatch"]:
                problems.append(f"{burst['replay_mismatch']} idempotent replays did not return the same payment")
            problems += load_check["problems"]
            exactly_once_ok = ok_burst and load_check["ok"] and count_ok and not burst["failures"] \
                and not burst["replay_mismatch"]
            conservation_ok, audit_report = check_conservation(dsns)
            result["exactly_once_ok"] = exactly_once_ok
            result["exactly_once"] = {
                "ok": exactly_once_ok, "problems": problems, "verification_payments": len(burst["acknowledged"]),
                "replays": burst["replays"], "load": {k: v for k, v in load_check.items() if k != "problems"},
                "payment_rows_before": rows_before, "payment_rows_after": rows_after}
            result["conservation_ok"] = conservation_ok
            result["audit"] = {k: audit_report[k] for k in ("ok", "problems", "in_flight_count", "total_minor")}
            log(f"{cfg.name}: exactly-once {'OK' if exactly_once_ok else 'FAILED'} "
                f"({load_check['in_ledger']} of {load_check['sent']} load requests in the ledger, "
                f"{acknowledged} acknowledged; {len(burst['acknowledged'])} verification payments); "
                f"conservation {'OK' if conservation_ok else 'FAILED'}")
            for problem in problems[:10] + audit_report["problems"][:10]:
                log(f"{cfg.name}:   {problem}")

        if cfg.pgbench and not cfg.dsns:
            log(f"pgbench: TPC-B scale {cfg.pgbench_scale}, {cfg.pgbench_s:.0f}s on the same PostgreSQL "
                "(quickpay idle)")
            try:
                result["pgbench"] = run_pgbench(stack.state_dir, cfg.pgbench_s, cfg.pgbench_scale, out)
                log(f"pgbench: tps = {result['pgbench']['tps']:.0f}")
            except Exception as exc:
                log(f"pgbench failed: {exc}")
                result["pgbench"] = {"tps": None, "error": str(exc)}
    log(f"{cfg.name}: stack stopped; phase took {time.monotonic() - started:.1f}s")
    return result


# ---- report --------------------------------------------------------------------------------
def projection(cpu_us_per_payment: float | None) -> dict[str, Any]:
    if not cpu_us_per_payment:
        return {"cores_for_14000_tps": None, "cores_for_50000_tps": None,
                "assumption": "no measurement"}
    return {"cores_for_14000_tps": round(14000 * cpu_us_per_payment / 1e6, 2),
            "cores_for_50000_tps": round(50000 * cpu_us_per_payment / 1e6, 2),
            "assumption": "linear scaling: cores = target TPS x SUT CPU per payment; ignores contention, "
                          "network hops between machines and PostgreSQL I/O limits"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _fmt(value: Any, spec: str = ".0f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**miss**")


def summary_markdown(report: dict[str, Any]) -> str:
    r = report
    t = TARGETS
    tps, p99, cpu_us = r.get("max_sustained_tps"), r.get("p99_ms"), r.get("sut_cpu_us_per_payment")
    rn, rp = r.get("ratio_vs_naive"), r.get("ratio_vs_pgbench")
    lines = [
        "# quickpay bench", "",
        f"- date: {r['date']}", f"- command: `{r['command_line']}`",
        f"- machine: {r['machine'].get('cpu_model')} x {r['cpu_count']} CPUs, {r['machine'].get('memory_mb')} MB,"
        f" {r['machine'].get('platform')}",
        f"- stack: {r['shards']} shards, {r['gateway_workers']} gateway workers, {r['customers']} customers,"
        f" {r['partners']} partners, fraud rules: {r['rules']}",
        f"- mode: {'quick' if r['quick'] else 'full'}; steps of {r['step_s']:g}s; gates p99 <= {r['p99_ms_gate']:g} ms,"
        f" errors < {r['error_rate_gate']:.2%}; latency from the intended send time (open loop)",
        "- the generator shares the machine with the system under test", "",
        "| figure | measured | target | verdict |", "|---|---|---|---|",
        f"| max sustained TPS (p99 <= {r['p99_ms_gate']:g} ms) | {_fmt(tps)} | >= {t['tps']:,.0f} |"
        f" {_verdict(None if tps is None else tps >= t['tps'])} |",
        f"| p50 / p99 / p99.9 at that rate (ms) | {_fmt(r.get('p50_ms'), '.2f')} / {_fmt(p99, '.2f')} /"
        f" {_fmt(r.get('p999_ms'), '.2f')} | p99 <= {t['p99_ms']:g} | {_verdict(None if p99 is None else p99 <= t['p99_ms'])} |",
        f"| error rate at that rate | {_fmt(r.get('error_rate'), '.4%')} | < {r['error_rate_gate']:.2%} | "
        f"{_verdict(None if r.get('error_rate') is None else r['error_rate'] < r['error_rate_gate'])} |",
        f"| SUT CPU per payment (us) | {_fmt(cpu_us)} | <= {t['cpu_us_per_payment']:g} |"
        f" {_verdict(None if cpu_us is None else cpu_us <= t['cpu_us_per_payment'])} |",
        f"| generator share of CPU | {_fmt(r.get('generator_cpu_share'), '.1%')} | | |",
        f"| naive ledger max TPS | {_fmt(r.get('naive_max_sustained_tps'))} | | |",
        f"| ratio vs naive | {_fmt(rn, '.2f')}x | >= {t['ratio_vs_naive']:g}x | {_verdict(None if rn is None else rn >= t['ratio_vs_naive'])} |",
        f"| pgbench TPC-B TPS | {_fmt(r.get('pgbench_tps'))} | | |",
        f"| ratio vs pgbench | {_fmt(rp, '.2f')}x | >= {t['ratio_vs_pgbench']:g}x | {_verdict(None if rp is None else rp >= t['ratio_vs_pgbench'])} |",
        f"| exactly-once | {_fmt(r.get('exactly_once_ok'))} | yes | {_verdict(r.get('exactly_once_ok'))} |",
        f"| conservation of money | {_fmt(r.get('conservation_ok'))} | yes | {_verdict(r.get('conservation_ok'))} |",
        "",
        f"Projection (assumes linear scaling): {_fmt(r['projection'].get('cores_for_14000_tps'), '.1f')} cores for"
        f" 14,000 TPS, {_fmt(r['projection'].get('cores_for_50000_tps'), '.1f')} cores for 50,000 TPS.", "",
        "Where the SUT CPU goes at the max sustained step (us per payment): " + ", ".join(
            f"{group} {_fmt(us, '.0f')}" for group, us in (r.get("sut_cpu_us_per_payment_by_process") or {}).items()),
        "",
        "## Steps (main phase)", "",
        "| offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | SUT cores | SUT us/payment | gen CPU share | gates |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r.get("steps", []):
        lines.append(
            f"| {s['offered_per_s']:.0f} | {s['achieved_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |"
            f" {s['p999_ms']:.2f} | {s['errors']}/{s['sent']} | {_fmt(s.get('sut_cores'), '.2f')} |"
            f" {_fmt(s.get('sut_cpu_us_per_payment'))} | {_fmt(s.get('generator_cpu_share'), '.1%')} |"
            f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |")
    naive = r.get("naive")
    if naive:
        lines += ["", f"## Naive ledger baseline ({naive['customers']} customers, fresh state, "
                      f"`--ledger-mode naive`)", "",
                  "| offered/s | achieved/s | p50 ms | p99 ms | errors | gates |", "|---|---|---|---|---|---|"]
        for s in naive.get("steps", []):
            lines.append(f"| {s['offered_per_s']:.0f} | {s['achieved_per_s']:.0f} | {s['p50_ms']:.2f} |"
                         f" {s['p99_ms']:.2f} | {s['errors']}/{s['sent']} |"
                         f" {'pass' if s['passed'] else '; '.join(s['failed_gates'])} |")
        if naive.get("error"):
            lines.append(f"\nNaive phase failed: {naive['error']}")
    if r.get("pgbench"):
        lines += ["", f"## pgbench: {r['pgbench'].get('command', '')}: tps = {_fmt(r['pgbench'].get('tps'))}"]
    if r.get("sweep"):
        lines += ["", "## Scaling sweep", "", "| shards | gateway workers | max TPS | SUT cores | TPS per SUT core |",
                  "|---|---|---|---|---|"]
        for s in r["sweep"]:
            lines.append(f"| {s['shards']} | {s['gateway_workers']} | {_fmt(s.get('max_sustained_tps'))} |"
                         f" {_fmt(s.get('sut_cores'), '.2f')} | {_fmt(s.get('efficiency_tps_per_core'))} |")
    notes = r.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    problems = r.get("problems", [])
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


# ---- entry point ---------------------------------------------------------------------------
def validate_settings(args: argparse.Namespace) -> None:
    """Refuse a configuration that cannot run, before anything starts."""
    problems = []
    if not 1 <= args.shards <= 64:
        problems.append("--shards must be between 1 and 64")
    if not 1 <= args.workers <= 64:
        problems.append("--workers must be between 1 and 64")
    if not 1 <= args.partners <= 1_000:
        problems.append("--partners must be between 1 and 1000")
    if not args.partners <= args.customers <= 50_000_000:
        problems.append("--customers must be at least --partners and at most 50,000,000")
    if not 1.0 <= args.step_s <= 600:
        problems.append("--step-s must be between 1 and 600 seconds")
    if not 0 < args.start_rate <= args.max_rate <= 1_000_000:
        problems.append("need 0 < --start-rate <= --max-rate <= 1,000,000")
    if not 1 <= args.generator_processes <= 16:
        problems.append("--generator-processes must be between 1 and 16")
    if not 0 <= args.generator_poll_ms <= 5:
        problems.append("--generator-poll-ms must be between 0 and 5")
    if problems:
        raise SystemExit("quickpay bench: " + "; ".join(problems))


def run_bench(args: argparse.Namespace) -> int:
    args = resolve_settings(args)
    validate_settings(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base_state = Path(args.state_dir).resolve() if args.state_dir else out / "state"
    if args.dsn and len(args.dsn) != args.shards:
        raise SystemExit(f"got {len(args.dsn)} --dsn for --shards {args.shards}: give one per shard")
    rules = None if args.no_rules else bench_rules(out)
    report: dict[str, Any] = {
        "command_line": " ".join(["quickpay", *sys.argv[1:]]) if sys.argv and "quickpay" in sys.argv[0]
        else " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "cpu_count": os.cpu_count(), "quick": bool(args.quick),
        "shards": args.shards, "gateway_workers": args.workers, "customers": args.customers,
        "partners": args.partners, "step_s": args.step_s, "p99_ms_gate": args.p99_ms,
        "error_rate_gate": args.error_rate_max, "generator_processes": args.generator_processes,
        "rules": "none (--no-rules)" if args.no_rules else
        "shipped rules, debtor velocity thresholds raised (every rule still evaluated)",
        "targets": TARGETS, "notes": [], "problems": [],
    }
    main_state = base_state / "main"
    for path in (main_state, base_state / "naive"):
        if path.exists() and not args.state_dir:
            shutil.rmtree(path, ignore_errors=True)
    code = 0
    try:
        main_cfg = PhaseConfig(
            name="main", state_dir=main_state, port=_free_port(args.port), shards=args.shards,
            workers=args.workers, customers=args.customers, partners=args.partners, step_s=args.step_s,
            start_rate=args.start_rate, step_factor=args.step_factor, steps_max=args.steps_max,
            max_rate=args.max_rate, dsns=args.dsn, verify_payments=args.verify_payments, profile=args.profile,
            pgbench=not args.no_baselines, pgbench_s=args.pgbench_s, pgbench_scale=args.pgbench_scale)
        main = run_phase(main_cfg, args, out, rules)
        best = main.get("best_step") or {}
        report.update({
            "max_sustained_tps": main["max_sustained_tps"],
            "max_sustained_offered_per_s": main["max_sustained_offered_per_s"],
            "p50_ms": best.get("p50_ms"), "p99_ms": best.get("p99_ms"), "p999_ms": best.get("p999_ms"),
            "error_rate": best.get("error_ratio"),
            "sut_cpu_us_per_payment": best.get("sut_cpu_us_per_payment"),
            "sut_cpu_us_per_payment_by_process": best.get("sut_cpu_us_per_payment_by_process"),
            "sut_cpu_cores_at_max": best.get("sut_cores"),
            "generator_cpu_share": best.get("generator_cpu_share"),
            "generator_cpu_us_per_request": best.get("cpu_us_per_request"),
            "exactly_once_ok": main.get("exactly_once_ok"), "conservation_ok": main.get("conservation_ok"),
            "exactly_once": main.get("exactly_once"), "audit": main.get("audit"),
            "steps": main["steps"], "up_command": main["up_command"], "profile": main.get("profile"),
        })
        if args.dsn:
            report["notes"].append("external PostgreSQL (--dsn): its CPU is not in the SUT CPU figure")
        report["notes"].append(
            "SUT CPU = user+sys CPU (psutil) of the `quickpay up` process tree and the PostgreSQL server's"
            " processes over the max sustained step, divided by that step's 2xx answers; at low rates fixed"
            " per-batch costs (commits, wake-ups) are spread over few payments")
        report["projection"] = projection(report["sut_cpu_us_per_payment"])
        report["pgbench"] = main.get("pgbench")
        report["pgbench_tps"] = (main.get("pgbench") or {}).get("tps")
        report["naive_max_sustained_tps"] = None
        if not args.no_baselines:
            naive_rate = max(100.0, (report["max_sustained_tps"] or 1000.0) / 8)
            naive_cfg = PhaseConfig(
                name="naive", state_dir=base_state / "naive", port=_free_port(), shards=args.shards,
                workers=args.workers, customers=args.naive_customers, partners=args.partners,
                step_s=max(2.0, args.step_s * 0.6), start_rate=naive_rate, step_factor=2.0 if args.quick else 1.5,
                steps_max=4 if args.quick else 10, max_rate=args.max_rate, ledger_mode="naive",
                verify_payments=min(args.verify_payments, 100))
            try:
                naive = run_phase(naive_cfg, args, out, rules)
                report["naive"] = {k: naive.get(k) for k in (
                    "customers", "steps", "max_sustained_tps", "exactly_once_ok", "conservation_ok", "up_command")}
                report["naive_max_sustained_tps"] = naive["max_sustained_tps"]
                report["notes"].append(
                    f"naive baseline: fresh state with {args.naive_customers} customers, steps of "
                    f"{naive_cfg.step_s:g}s, same gates")
                if naive.get("exactly_once_ok") is False or naive.get("conservation_ok") is False:
                    report["problems"].append("the naive baseline failed its exactly-once or conservation check")
            except Exception as exc:
                log(f"naive phase failed: {exc}")
                report["naive"] = {"error": str(exc)[-1500:]}
                report["problems"].append(f"naive phase failed: {str(exc)[:300]}")
        report["ratio_vs_naive"] = _ratio(report["max_sustained_tps"], report["naive_max_sustained_tps"])
        report["ratio_vs_pgbench"] = _ratio(report["max_sustained_tps"], report["pgbench_tps"])
        if args.sweep:
            report["sweep"] = run_sweep(args, out, base_state, rules)
        if not report["exactly_once_ok"] or not report["conservation_ok"]:
            report["problems"].append("the main phase failed its exactly-once or conservation check")
            code = 1
    except KeyboardInterrupt:
        log("interrupted; the stack was stopped")
        report["problems"].append("interrupted")
        code = 130
    except Exception as exc:
        log(f"bench failed: {type(exc).__name__}: {exc}")
        report["problems"].append(f"{type(exc).__name__}: {str(exc)[:1000]}")
        code = 1
    if not args.state_dir and not getattr(args, "keep_state", False):
        shutil.rmtree(base_state, ignore_errors=True)  # PostgreSQL data of every phase (stopped by now)
    report["duration_s"] = round(time.monotonic() - started, 1)
    for key in ("max_sustained_tps", "p50_ms", "p99_ms", "p999_ms", "error_rate", "sut_cpu_us_per_payment",
                "generator_cpu_share", "naive_max_sustained_tps", "pgbench_tps", "ratio_vs_naive",
                "ratio_vs_pgbench", "exactly_once_ok", "conservation_ok", "steps"):
        report.setdefault(key, None)
    report.setdefault("projection", projection(None))
    (out / "bench-report.json").write_text(json.dumps(report, indent=2, default=str))
    try:
        (out / "bench-summary.md").write_text(summary_markdown(report))
    except Exception as exc:
        log(f"could not write the summary: {exc}")
    if report.get("steps"):
        try:
            from loadtest.plots import plot_all
            plot_all(report["steps"], out, prefix="main", p99_ms_max=args.p99_ms)
            if (report.get("naive") or {}).get("steps"):
                plot_all(report["naive"]["steps"], out, prefix="naive", p99_ms_max=args.p99_ms)
        except Exception as exc:
            log(f"plots failed: {exc}")
    print(_console_summary(report, out))
    return code


def _console_summary(r: dict[str, Any], out: Path) -> str:
    return "\n".join([
        f"max sustained: {_fmt(r.get('max_sustained_tps'))} TPS at p50 {_fmt(r.get('p50_ms'), '.2f')} ms,"
        f" p99 {_fmt(r.get('p99_ms'), '.2f')} ms, p99.9 {_fmt(r.get('p999_ms'), '.2f')} ms,"
        f" errors {_fmt(r.get('error_rate'), '.4%')}",
        f"SUT CPU: {_fmt(r.get('sut_cpu_us_per_payment'))} us/payment; generator CPU share"
        f" {_fmt(r.get('generator_cpu_share'), '.1%')}",
        f"naive ledger: {_fmt(r.get('naive_max_sustained_tps'))} TPS (ratio {_fmt(r.get('ratio_vs_naive'), '.2f')}x);"
        f" pgbench: {_fmt(r.get('pgbench_tps'))} TPS (ratio {_fmt(r.get('ratio_vs_pgbench'), '.2f')}x)",
        f"exactly-once: {_fmt(r.get('exactly_once_ok'))}; conservation: {_fmt(r.get('conservation_ok'))}",
        f"took {r.get('duration_s')}s; report: {out / 'bench-report.json'}, {out / 'bench-summary.md'}",
    ])


def run_sweep(args: argparse.Namespace, out: Path, base_state: Path, rules: Path | None) -> list[dict[str, Any]]:
    results = []
    customers = min(args.customers, 20_000)
    for shards in (1, 2, 4):
        for workers in (1, 2):
            name = f"sweep-s{shards}-w{workers}"
            state = base_state / name
            shutil.rmtree(state, ignore_errors=True)
            cfg = PhaseConfig(name=name, state_dir=state, port=_free_port(), shards=shards, workers=workers,
                              customers=customers, partners=min(args.partners, 2), step_s=min(args.step_s, 5.0),
                              start_rate=args.start_rate, step_factor=2.0, steps_max=min(args.steps_max, 5), max_rate=args.max_rate,
                              verify_payments=50)
            try:
                phase = run_phase(cfg, args, out, rules)
                best = phase.get("best_step") or {}
                cores = best.get("sut_cores")
                results.append({"shards": shards, "gateway_workers": workers,
                                "max_sustained_tps": phase["max_sustained_tps"], "p99_ms": best.get("p99_ms"),
                                "sut_cores": cores, "sut_cpu_us_per_payment": best.get("sut_cpu_us_per_payment"),
                                "efficiency_tps_per_core": phase["max_sustained_tps"] / cores if cores else None,
                                "exactly_once_ok": phase.get("exactly_once_ok"),
                                "conservation_ok": phase.get("conservation_ok"), "customers": customers})
            except Exception as exc:
                log(f"{name} failed: {exc}")
                results.append({"shards": shards, "gateway_workers": workers, "error": str(exc)[:500]})
    return results
