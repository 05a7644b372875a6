"""The stack heals from any single process death, and from broken connections.

One private stack (embedded PostgreSQL supervised by `quickpay up`, 2 shards, 2 gateway
workers, the monitor) whose gateways and relays reach the shard workers through TCP
fault proxies (tests/faultproxy.py). Under a bounded stream of payments (same-shard,
to the settlement account and cross-shard in both directions) each test injects one
fault: SIGKILL of a shard worker, a gateway worker, the monitor, the PostgreSQL
postmaster; dropped and stalled gateway↔shard and shard↔shard (relay) connections.
After each: every request retried with its key converges to one answer (201), every
payment answered 201 is in the ledger exactly once, debtor and creditor balances match
the accepted payments, and `quickpay check` passes. A last test makes a shard worker
crash-loop (its database refuses connections) and sees the backoff grow and the loop
reported in `quickpay up`'s output and in /readyz, then heal.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import ROOT, Stack, free_port, http, start_stack, stop_stack
from faultproxy import FaultProxy

from kernel.ids import shard_of_payment
from kernel.money import parse_amount
from quickpay.embedded_pg import EmbeddedPostgres, shard_database

SHARDS = 2
PAYMENTS = 360  # per fault
RATE_PER_S = 90  # ~4 s of traffic
RETRY_ROUNDS = 60
IN_PROCESS = "AcceptedSettlementInProcess"


def minor(text: str) -> int:
    return int(Decimal(text) * 100)


# ---- the stack ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stack with the monitor, shard workers on TCP, and a fault proxy in front of each
    shard for the gateways and another for the relays."""
    listen = [f"tcp:127.0.0.1:{free_port()}" for _ in range(SHARDS)]
    gateway_proxies = [FaultProxy(address).start() for address in listen]
    relay_proxies = [FaultProxy(address).start() for address in listen]
    extra = (
        "--shard-listen",
        ",".join(listen),
        "--gateway-shard-addrs",
        ",".join(p.address for p in gateway_proxies),
        "--relay-shard-addrs",
        ",".join(p.address for p in relay_proxies),
    )
    stack = start_stack(tmp_path_factory.mktemp("faults"), shards=SHARDS, flags=("--no-rules",), extra=extra)
    try:
        yield {"stack": stack, "gateway_proxies": gateway_proxies, "relay_proxies": relay_proxies}
    finally:
        stop_stack(stack)
        for proxy in gateway_proxies + relay_proxies:
            proxy.close()


@pytest.fixture(scope="module")
def world(faulty: dict[str, Any]) -> dict[str, Any]:
    stack: Stack = faulty["stack"]
    partner = stack.new_partner("Faults")
    debtors = {s: [stack.new_customer(partner, shard=s, funding="2000.00") for _ in range(5)] for s in range(SHARDS)}
    creditors = {s: [stack.new_account(shard=s) for _ in range(3)] for s in range(SHARDS)}
    return {"partner": partner, "debtors": debtors, "creditors": creditors}


def supervisor_status(stack: Stack) -> dict[str, dict[str, Any]]:
    data = json.loads((stack.state_dir / "supervisor.json").read_text())
    return {c["name"]: c for c in data["children"]}


def child_pid(stack: Stack, name: str) -> int:
    pid = supervisor_status(stack)[name]["pid"]
    assert pid, f"{name} is not running: {supervisor_status(stack)[name]}"
    return int(pid)


def wait_child_replaced(stack: Stack, name: str, old_pid: int, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        status = supervisor_status(stack).get(name, {})
        if status.get("state") == "running" and status.get("pid") not in (None, old_pid):
            return int(status["pid"])
        assert time.monotonic() < deadline, f"{name} not restarted: {status}\n{stack.log()[-3000:]}"
        time.sleep(0.1)


def run_check(stack: Stack) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def wait_drained(stack: Stack, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = 0
        for shard in range(stack.shards):
            try:
                conn = await asyncpg.connect(stack.dsn(shard))
            except (OSError, asyncpg.PostgresError):
                remaining = -1
                break
            try:
                remaining += int(await conn.fetchval("SELECT count(*) FROM transfers WHERE status = $1", IN_PROCESS))
            finally:
                await conn.close()
        if remaining == 0:
            return
        assert time.monotonic() < deadline, f"{remaining} payments still in process after {timeout_s}s"
        await asyncio.sleep(0.25)


# ---- the payment stream -------------------------------------------------------------------
def make_plan(world: dict[str, Any], label: str, seed: int) -> list[tuple[str, dict[str, Any], str, str]]:
    """(key, body, debtor account, creditor account): 40% to the partner's settlement
    account, 20% same-shard, 40% cross-shard, both directions."""
    rng = random.Random(seed)
    partner = world["partner"]
    plan = []
    for i in range(PAYMENTS):
        source = rng.randrange(SHARDS)
        debtor = rng.choice(world["debtors"][source])
        kind = rng.random()
        if kind < 0.4:
            creditor = partner["settlement_account"]
        elif kind < 0.6:
            creditor = rng.choice(world["creditors"][source])
        else:
            creditor = rng.choice(world["creditors"][(source + 1) % SHARDS])
        body = {
            "agreement_id": debtor["agreement_id"],
            "amount": f"0.{rng.randint(1, 99):02d}",
            "currency": "CNY",
            "creditor_account": creditor,
            "reference": f"fault {label}",
        }
        plan.append((f"{label}-{i}-{uuid.uuid4().hex[:8]}", body, debtor["account"], creditor))
    return plan


async def post(
    session: aiohttp.ClientSession, stack: Stack, token: str, body: dict[str, Any], key: str
) -> tuple[int, Any]:
    try:
        async with session.post(
            stack.url("/v1/quick-payments"),
            json=body,
            timeout=aiohttp.ClientTimeout(total=30),
            headers={"authorization": f"Bearer {token}", "x-idempotency-key": key},
        ) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, await r.text()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return 0, repr(exc)


def tracked_balances(stack: Stack, world: dict[str, Any]) -> dict[str, int]:
    accounts = [d["account"] for s in range(SHARDS) for d in world["debtors"][s]]
    accounts += [c for s in range(SHARDS) for c in world["creditors"][s]]
    return {a: minor(stack.balance(a)) for a in accounts}


async def run_with_fault(
    stack: Stack,
    world: dict[str, Any],
    label: str,
    seed: int,
    fault: Callable[[], Awaitable[None]],
    fault_at_s: float = 1.5,
) -> dict[str, list[tuple[int, Any]]]:
    """Stream the plan, inject `fault` at `fault_at_s`, then retry everything without a
    201 with the same key and body until it has one, and check the ledger. Returns the
    first-round answers."""
    plan = make_plan(world, label, seed)
    token = world["partner"]["token"]
    before = tracked_balances(stack, world)
    results: dict[str, tuple[int, Any]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def send(index: int, key: str, body: dict[str, Any]) -> None:
            await asyncio.sleep(index / RATE_PER_S)
            results[key] = await post(session, stack, token, body, key)

        async def inject() -> None:
            await asyncio.sleep(fault_at_s)
            await fault()

        await asyncio.gather(inject(), *(send(i, key, body) for i, (key, body, _, _) in enumerate(plan)))
        first_round = dict(results)
        for _ in range(RETRY_ROUNDS):
            pending = [(key, body) for key, body, _, _ in plan if results[key][0] != 201]
            if not pending:
                break
            await asyncio.sleep(0.5)
            answers = await asyncio.gather(*(post(session, stack, token, body, key) for key, body in pending))
            for (key, _), answer in zip(pending, answers):
                results[key] = answer
    never = [(k, r) for k, r in results.items() if r[0] != 201]
    assert not never, f"{len(never)} requests never got a 201: {never[:5]}\n{stack.log()[-3000:]}"
    # Only "outcome unknown, retry" answers before the definitive one: no 500, no 4xx.
    odd = [r for r in first_round.values() if r[0] not in (0, 201, 409, 503)]
    assert not odd, odd[:5]
    # A retry converges to the same single payment: one id per key, distinct across keys.
    ids = {key: answer["payment_id"] for key, (_, answer) in results.items()}
    assert len(set(ids.values())) == len(plan)
    for key, (status, answer) in first_round.items():
        if status == 201:  # a retry answers the decision first given, never another one
            assert answer["payment_id"] == ids[key]
            assert (answer["status"] == "Rejected") == (results[key][1]["status"] == "Rejected")
    await check_ledger(stack, world, plan, ids, results, before)
    return {"first_round": list(first_round.values())}


async def check_ledger(
    stack: Stack,
    world: dict[str, Any],
    plan: list[tuple[str, dict[str, Any], str, str]],
    ids: dict[str, str],
    results: dict[str, tuple[int, Any]],
    before: dict[str, int],
) -> None:
    by_shard: dict[int, list[str]] = defaultdict(list)
    for pid in ids.values():
        shard = shard_of_payment(pid, SHARDS)
        assert shard is not None
        by_shard[shard].append(pid)
    await wait_drained(stack)
    rows: dict[str, Any] = {}
    for shard, pids in by_shard.items():
        conn = await asyncpg.connect(stack.dsn(shard))
        try:
            found = await conn.fetch(
                "SELECT id, count(*) OVER (PARTITION BY id) AS n, status, amount_minor,"
                " debit_account, credit_account FROM transfers"
                " WHERE id = ANY($1::text[]) AND kind = 'payment'",
                pids,
            )
        finally:
            await conn.close()
        for row in found:
            assert row["n"] == 1, f"{row['id']} is in the journal {row['n']} times"
            rows[row["id"]] = row
    assert set(rows) == set(ids.values()), "a payment answered 201 is missing from the ledger"
    moved: dict[str, int] = defaultdict(int)
    for key, body, debtor, creditor in plan:
        row = rows[ids[key]]
        amount = parse_amount(body["amount"], "CNY")
        assert row["debit_account"] == debtor and row["amount_minor"] == amount
        if results[key][1]["status"] == "Rejected":
            assert row["status"] == "Rejected"
            continue
        assert row["status"] != "Rejected"
        moved[debtor] -= amount
        if creditor in before:
            moved[creditor] += amount
    # Balances (committed, read through the API) match the accepted payments exactly:
    # every debit once, every cross-shard credit leg applied once.
    for account, start in before.items():
        assert minor(stack.balance(account)) == start + moved[account], account
    result = run_check(stack)
    assert result.returncode == 0, result.stdout + result.stderr


def disturbed(first_round: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [r for r in first_round if r[0] != 201]


# ---- the faults ------------------------------------------------------------------------------
async def test_shard_worker_sigkill(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    old = child_pid(stack, "shard-0")

    async def fault() -> None:
        os.kill(old, signal.SIGKILL)

    out = await run_with_fault(stack, world, "shard", 1, fault)
    assert wait_child_replaced(stack, "shard-0", old) != old
    assert disturbed(out["first_round"]), "the kill did not disturb the stream; the test proves nothing"


async def test_gateway_worker_sigkill(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    old = child_pid(stack, "gateway-0")

    async def fault() -> None:
        os.kill(old, signal.SIGKILL)

    await run_with_fault(stack, world, "gateway", 2, fault)
    assert wait_child_replaced(stack, "gateway-0", old) != old
    assert "gateway-0 exited with -9" in stack.log()


async def test_monitor_sigkill(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    old = child_pid(stack, "monitor")

    async def fault() -> None:
        os.kill(old, signal.SIGKILL)

    await run_with_fault(stack, world, "monitor", 3, fault)
    assert wait_child_replaced(stack, "monitor", old) != old
    assert "monitor exited with -9" in stack.log()


async def test_postgres_postmaster_sigkill(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    # The postmaster's pid from its lock file (the first line of postmaster.pid).
    old = int((stack.state_dir / "pg" / "postmaster.pid").read_text().split()[0])
    shard_pids = {s: child_pid(stack, f"shard-{s}") for s in range(SHARDS)}
    recovered: list[float] = []

    async def fault() -> None:
        os.kill(old, signal.SIGKILL)
        killed_at = time.monotonic()
        # /readyz must come back by itself: no test step restarts anything.
        deadline = killed_at + 60
        while True:
            await asyncio.sleep(0.1)
            reply = await asyncio.to_thread(_readyz, stack)
            if reply is not None and reply.status == 200 and time.monotonic() - killed_at > 0.5:
                recovered.append(time.monotonic() - killed_at)
                return
            assert time.monotonic() < deadline, (
                "not ready within 60 s of the postmaster's death\n" + stack.log()[-3000:]
            )

    out = await run_with_fault(stack, world, "postgres", 4, fault)
    assert wait_child_replaced(stack, "postgres", old) != old
    # Shard workers do not linger with dead connections: they were replaced too.
    for shard, pid in shard_pids.items():
        assert supervisor_status(stack)[f"shard-{shard}"]["pid"] != pid
    assert disturbed(out["first_round"]), "the kill did not disturb the stream; the test proves nothing"
    assert "database system was interrupted" in (stack.state_dir / "pg.log").read_text(errors="replace")
    print(f"\npostmaster SIGKILL: /readyz 200 again after {recovered[0]:.2f}s")


def _readyz(stack: Stack) -> Any:
    try:
        return http("GET", stack.url("/readyz"), timeout=2)
    except OSError:
        return None


async def test_gateway_shard_connections_dropped_and_stalled(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    proxies: list[FaultProxy] = faulty["gateway_proxies"]
    dropped: list[int] = []

    async def fault() -> None:
        dropped.extend(p.drop(refuse_s=1.0) for p in proxies)  # RST every gateway↔shard connection
        await asyncio.sleep(1.5)
        for p in proxies:
            p.stall(2.0)  # then hold their bytes for 2 s

    out = await run_with_fault(stack, world, "gwproxy", 5, fault)
    assert sum(dropped) >= 1 and sum(p.refused for p in proxies) >= 1
    assert sum(p.stalled_chunks for p in proxies) >= 1
    assert disturbed(out["first_round"]), "the drop did not disturb the stream; the test proves nothing"


async def test_relay_connections_dropped_and_stalled(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    """Legs in flight when the relay connection breaks are resent; a stall longer than
    the relay's call deadline (10 s) makes it resend legs the creditor then receives
    twice: each is applied once."""
    stack: Stack = faulty["stack"]
    proxies: list[FaultProxy] = faulty["relay_proxies"]
    dropped: list[int] = []

    async def fault() -> None:
        dropped.extend(p.drop(refuse_s=1.0) for p in proxies)
        await asyncio.sleep(1.0)
        for p in proxies:
            p.stall(12.0)

    before_log = len(stack.log())
    await run_with_fault(stack, world, "relayproxy", 6, fault)
    assert sum(dropped) >= 1
    assert sum(p.stalled_chunks for p in proxies) >= 1
    assert "relay to shard" in stack.log()[before_log:], "the relay never saw a failure"


def test_idle_worker_exits_when_its_database_connection_dies(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    """Without traffic: PostgreSQL ends every connection to shard 0's database (as a
    restart or an operator would). The worker must not linger, alive and answering
    pings but unable to write (or holding no advisory lock): it exits, is restarted,
    and the next payment on that shard is a 201."""
    stack: Stack = faulty["stack"]
    old = child_pid(stack, "shard-0")
    admin_dsn = EmbeddedPostgres(stack.state_dir).dsn("postgres")

    async def terminate() -> int:
        conn = await asyncpg.connect(admin_dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    shard_database(0),
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(terminate()) >= 2
    assert wait_child_replaced(stack, "shard-0", old, timeout_s=30) != old
    stack.wait_ready(60)
    debtor = world["debtors"][0][0]
    reply = stack.pay(world["partner"], debtor["agreement_id"], world["partner"]["settlement_account"], "0.01")
    assert reply.status == 201, reply.body


def test_stale_lock_file_of_an_unrelated_process_is_removed(tmp_path: Any) -> None:
    """A SIGKILLed postmaster leaves postmaster.pid behind; if its pid now belongs to an
    unrelated process PostgreSQL would refuse to start, so the supervisor's pre-start
    step removes it, and one whose process is gone. One whose pid is a live postgres
    is kept: PostgreSQL decides (it refuses to share a data directory)."""
    pg = EmbeddedPostgres(tmp_path)
    pg.data_dir.mkdir(parents=True)
    lock = pg.data_dir / "postmaster.pid"
    lock.write_text(f"{os.getpid()}\n{pg.data_dir}\n")  # this pytest process: not postgres
    pg.before_foreground_start()
    assert not lock.exists()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        pg.before_foreground_start()
        assert not lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(f"{sleeper.pid}\n")  # gone
    pg.before_foreground_start()
    assert not lock.exists()
    fake = tmp_path / "postgres"  # a process whose name is postgres
    fake.symlink_to("/bin/sleep")
    postgres = subprocess.Popen([str(fake), "30"])
    try:
        comm = Path(f"/proc/{postgres.pid}/comm")
        deadline = time.monotonic() + 10
        while comm.read_text().strip() != "postgres":
            assert time.monotonic() < deadline, comm.read_text()
            time.sleep(0.01)
        lock.write_text(f"{postgres.pid}\n")
        pg.before_foreground_start()
        assert lock.exists(), comm.read_text()
    finally:
        postgres.kill()
        postgres.wait()


# ---- crash loop ----------------------------------------------------------------------------
def test_crash_loop_backs_off_and_is_reported(faulty: dict[str, Any], world: dict[str, Any]) -> None:
    stack: Stack = faulty["stack"]
    admin_dsn = EmbeddedPostgres(stack.state_dir).dsn("postgres")
    database = shard_database(1)

    def allow_connections(allow: bool) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(admin_dsn)
            try:
                await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
            finally:
                await conn.close()

        asyncio.run(run())

    log_start = len(stack.log())
    old = child_pid(stack, "shard-1")
    allow_connections(False)
    try:
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:
            status = supervisor_status(stack)["shard-1"]
            if status["crash_looping"] and status["failures_in_a_row"] >= 5:
                break
            assert time.monotonic() < deadline, f"shard-1 did not crash-loop: {status}"
            time.sleep(0.2)
        # Reported: /readyz 503 (the state only), the admin health naming the child ...
        deadline = time.monotonic() + 30
        while True:
            assert http("GET", stack.url("/readyz"), timeout=5).status == 503
            reply = http("GET", stack.url("/admin/v1/health"), token=stack.admin_token, timeout=5)
            assert reply.status == 200 and reply.body["status"] == "not ready", reply.body
            if any(r.startswith("shard-1 is") for r in reply.body["reasons"]):
                break
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.05)
        child = next(c for c in reply.body["children"] if c["name"] == "shard-1")
        assert child["crash_looping"], child
        # ... and in `quickpay up`'s output, with a growing backoff.
        log = stack.log()[log_start:]
        assert "shard-1 is crash-looping" in log
        delays = [
            float(d)
            for d in re.findall(r"quickpay: shard-1 (?:exited|is crash-looping)[^\n]*restarting in ([\d.]+)s", log)
        ]
        assert len(delays) >= 4, log[-3000:]
        assert all(b >= a for a, b in itertools.pairwise(delays)) and delays[-1] > delays[0], delays
    finally:
        allow_connections(True)
    # Healed: the next restart succeeds and the stack is ready again.
    stack.wait_ready(60)
    assert supervisor_status(stack)["shard-1"]["state"] == "running"
    reply = stack.pay(
        world["partner"], world["debtors"][1][0]["agreement_id"], world["partner"]["settlement_account"], "0.01"
    )
    assert reply.status == 201, reply.body


# ---- relay: a failed outbox re-read must not end the relay -------------------------------------
async def test_relay_survives_a_failed_outbox_reread() -> None:
    """When its queue overflowed, the relay re-reads the outbox from PostgreSQL; if that
    read fails (the database restarting, a dropped pooled connection) the relay must
    retry it, not end its task and leave the legs undelivered while the worker looks
    alive."""
    from ledger.model import CreditLeg
    from ledger.relay import Relay

    delivered: list[str] = []
    reads: list[int] = []

    class Peer:
        async def call(self, op: str, args: Any) -> Any:
            assert op == "credit"
            await asyncio.sleep(0)  # a real call yields to the loop
            return {"applied": len(args), "replayed": 0}

    legs = [CreditLeg(f"pay_{i}", 0, "acc_c", 100 + i, "CNY", 1) for i in range(3)]

    async def reload_outbox() -> list[tuple[CreditLeg, int]]:
        reads.append(1)
        if len(reads) == 1:
            raise ConnectionError("connection was closed in the middle of operation")
        await asyncio.sleep(0)
        return [(leg, 1) for leg in legs if leg.transfer_id not in delivered]  # the outbox

    async def on_delivered(ids: list[str], held_ids: list[str]) -> None:
        delivered.extend(ids)

    relay = Relay(
        0,
        {1: Peer()},
        on_delivered,
        reload_outbox,  # type: ignore[dict-item]
        queue_max=1,
        retry_backoff_max_s=0.05,
    )
    relay.start()
    try:
        relay.enqueue([(leg, 1) for leg in legs])  # one fits; the others overflow to the outbox
        for _ in range(200):
            if set(delivered) == {leg.transfer_id for leg in legs}:
                break
            await asyncio.sleep(0.02)
        assert set(delivered) == {leg.transfer_id for leg in legs}, (delivered, reads)
        assert len(reads) >= 2
    finally:
        await relay.close()
