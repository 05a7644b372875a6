"""`quickpay ha drill`: a failover under a stream of payments, triggered, watched and checked.

Against a running `quickpay up --ha --demo` stack: PAYERS threads pay 0.01 CNY each from the
demo customers of one shard, in a loop, every payment retried with its own idempotency key
until it is answered 201 (503s and timeouts are "outcome unknown: retry"). Meanwhile the
shard's leader is hit:

- `kill`: SIGKILL of the leader's postmaster (a crashed server);
- `freeze`: SIGSTOP of the leader's Patroni (a partition: its PostgreSQL keeps running but
  nobody renews its leader key), then SIGCONT once a new leader serves;
- `kill-standby`: SIGKILL of the synchronous standby's postmaster (the leader stays; strict
  mode makes it wait until Patroni names another synchronous standby).

It reports, in seconds from the fault: when another member became leader; when /readyz was
200 again after it; the first acknowledged payment sent after the leader change; the longest
gap between acknowledgements; and it checks that every key answered 201 names one payment,
that the debtors' balances moved by exactly the acknowledged payments (exactly once), that
`quickpay check` passes, and that the failed member rejoined as a standby (an old leader on
the new timeline).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from quickpay.ha import HaCluster, Member
from quickpay.httpclient import Api, ApiCallError

__all__ = ["run_drill"]

PAYERS = 4
AMOUNT = "0.01"
PAYMENT_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 0.2
LEADER_WAIT_S = 60.0
RECOVERY_WAIT_S = 60.0
REJOIN_WAIT_S = 120.0
SETTLE_S = 3.0  # payments before the fault, and after recovery
# freeze: the cut-off Patroni stays frozen this long after the promotion (> the writer's
# commit timeout, ledger.writable.COMMIT_TIMEOUT_S, plus a restart).
FREEZE_HOLD_S = 10.0
READYZ_POLL_S = 0.2
CUT_OFF_WRITE_S = 3.0


@dataclass
class Stream:
    """Acknowledged payments (key -> id), their times, and every retry."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    accepted: int = 0  # acknowledged and money moved (the others were Rejected by a rule)
    # (first sent, acknowledged) per acknowledged payment, monotonic seconds
    acks: list[tuple[float, float]] = field(default_factory=list)
    retries: int = 0
    refused: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pay_forever(api: Api, token: str, agreement: str, creditor: str, stream: Stream, stop: threading.Event) -> None:
    while not stop.is_set():
        key = f"drill-{uuid.uuid4().hex}"
        sent = time.time()
        while True:  # this key until it is answered: a retry never pays twice
            try:
                answer = api.request(
                    "POST",
                    "/v1/quick-payments",
                    {
                        "agreement_id": agreement,
                        "amount": AMOUNT,
                        "currency": "CNY",
                        "creditor_account": creditor,
                        "reference": "ha drill",
                    },
                    token=token,
                    headers={"x-idempotency-key": key},
                )
                with stream.lock:
                    stream.acknowledged[key] = answer["payment_id"]
                    stream.accepted += answer["status"] != "Rejected"
                    stream.acks.append((sent, time.time()))
                break
            except ApiCallError as exc:
                if exc.status != 503:
                    with stream.lock:
                        stream.refused.append((exc.status, exc.body))
                    break
            except OSError:  # timeouts, refused connections: the outcome is unknown
                pass
            with stream.lock:
                stream.retries += 1
            time.sleep(RETRY_PAUSE_S)


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class _ReadinessWatch(threading.Thread):
    """/readyz every READYZ_POLL_S: (time, ready) samples."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.samples: list[tuple[float, bool]] = []
        self.ready = True
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.ready = _ready(self.base_url)
            self.samples.append((time.time(), self.ready))
            self._stop_event.wait(READYZ_POLL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def not_ready_after(self, since: float) -> tuple[float, float | None]:
        """Seconds /readyz was not 200 after `since`, and when it was 200 again the last time."""
        total = 0.0
        back: float | None = None
        samples = [s for s in self.samples if s[0] >= since]
        for (t0, ok0), (t1, ok1) in itertools.pairwise(samples):
            if not ok0:
                total += t1 - t0
                if ok1:
                    back = t1
        return total, back


def _promoted_at(cluster: HaCluster, member: Member, after_timeline: int) -> float | None:
    """When `member` was promoted off `after_timeline` or later (Patroni's /history: the
    timeline history file PostgreSQL writes at promotion), as a Unix time; None if not yet."""
    from datetime import datetime

    status, history = cluster.rest(member, "/history")
    if status != 200 or not isinstance(history, list) or not history:
        return None
    last = history[-1]
    if len(last) < 5 or last[4] != member.name or last[0] < after_timeline:
        return None
    return datetime.fromisoformat(last[3]).timestamp()


def _member(cluster: HaCluster, name: str) -> Member:
    return next(m for m in cluster.members if m.name == name)


def _postmaster_pid(cluster: HaCluster, member: Member) -> int:
    return int((cluster.member_dir(member) / "data" / "postmaster.pid").read_text().split("\n", 1)[0])


def _patroni_pid(cluster: HaCluster, member: Member) -> int:
    config = str(cluster.member_dir(member) / "patroni.yml")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"patroni" in argv and config.encode() in argv:
            return int(entry)
    raise SystemExit(f"no Patroni process runs {config}")


def _member_view(cluster: HaCluster, shard: int, name: str) -> tuple[str | None, Any, str | None]:
    """(role, timeline, state) of one member as the cluster sees it (asked of the others first)."""
    view = cluster.cluster_view(shard, avoid=name) or {}
    seen: dict[str, Any] = next((m for m in view.get("members", []) if m.get("name") == name), {})
    return seen.get("role"), seen.get("timeline"), seen.get("state")


def _synchronous_standby(cluster: HaCluster, shard: int) -> str | None:
    view = cluster.cluster_view(shard) or {}
    return next((str(m["name"]) for m in view.get("members", []) if m.get("role") == "sync_standby"), None)


def _balances(api: Api, admin: str, accounts: list[str]) -> dict[str, Decimal]:
    return {a: Decimal(api.request("GET", f"/admin/v1/accounts/{a}/balance", token=admin)["balance"]) for a in accounts}


async def _write_on(dsn: str, key: str) -> str:
    """Try one write on one server: "acknowledged", "not acknowledged" (no commit within
    CUT_OFF_WRITE_S), or the error."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    # Closed, not cancelled, when it does not commit: as the shard worker does (a cancelled
    # wait would make the commit visible on that server; ledger.writable.probe_commit).
    task = asyncio.ensure_future(conn.execute("INSERT INTO meta (key, value) VALUES ($1, 'drill')", key))
    try:
        done, _ = await asyncio.wait({task}, timeout=CUT_OFF_WRITE_S)
        if not done:
            return "not acknowledged"
        task.result()
        return "acknowledged"
    except Exception as exc:
        return f"refused: {type(exc).__name__}"
    finally:
        conn.terminate()
        if not task.done():
            try:
                await task
            except Exception:
                pass


async def _meta_has(dsn: str, key: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM meta WHERE key = $1", key))
    finally:
        await conn.close()


async def _journal_count(dsn: str, ids: list[str]) -> int:
    """How many of `ids` the shard's journal holds (its primary key: each at most once)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM transfers WHERE id = ANY($1::text[])", ids))
    finally:
        await conn.close()


def run_drill(state_dir: Path, fault: str, shard: int, *, out: Any = sys.stdout) -> dict[str, Any]:
    def say(message: str) -> None:
        print(f"[drill {time.monotonic() - started:6.2f}s] {message}", file=out, flush=True)

    started = time.monotonic()
    demo_file = state_dir / "demo.json"
    if not demo_file.exists():
        raise SystemExit(f"{demo_file} is missing: start the stack with `quickpay up --ha --demo`")
    demo = json.loads(demo_file.read_text())
    cluster = HaCluster.attach(state_dir)
    api = Api(demo["base_url"], timeout_s=PAYMENT_TIMEOUT_S)
    agreements = [a for a in demo["agreements"] if a["shard"] == shard]
    if not agreements:
        raise SystemExit(f"the demo has no customer on shard {shard}")
    token = api.token(demo["client_id"], demo["client_secret"])
    debtors = [a["debtor_account"] for a in agreements]
    before = _balances(api, demo["admin_token"], debtors)
    old = cluster.leader(shard, running=True)
    if old is None:
        raise SystemExit(f"shard {shard} has no leader now: see `quickpay ha status`")
    old_timeline = _member_view(cluster, shard, old)[1]
    stream = Stream()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_pay_forever,
            daemon=True,
            args=(
                api,
                token,
                agreements[i % len(agreements)]["agreement_id"],
                demo["settlement_account"],
                stream,
                stop,
            ),
        )
        for i in range(PAYERS)
    ]
    for thread in threads:
        thread.start()
    say(f"{PAYERS} payers on shard {shard}; leader {old} (timeline {old_timeline})")
    time.sleep(SETTLE_S)
    report: dict[str, Any] = {"fault": fault, "shard": shard, "old_leader": old}
    readiness = _ReadinessWatch(demo["base_url"])
    readiness.start()
    frozen: int | None = None
    victim = old
    if fault == "kill-standby":
        deadline = time.monotonic() + LEADER_WAIT_S  # named again after an earlier drill
        while not (victim := _synchronous_standby(cluster, shard) or "") and time.monotonic() < deadline:
            time.sleep(0.5)
        if not victim:
            raise SystemExit(f"shard {shard} has no synchronous standby now: see `quickpay ha status`")
        report["victim"] = victim
    fault_at = time.time()
    if fault in ("kill", "kill-standby"):
        pid = _postmaster_pid(cluster, _member(cluster, victim))
        os.kill(pid, signal.SIGKILL)
        say(f"SIGKILL postmaster {pid} of {victim} ({'leader' if victim == old else 'synchronous standby'})")
    else:
        frozen = _patroni_pid(cluster, _member(cluster, old))
        os.kill(frozen, signal.SIGSTOP)
        say(f"SIGSTOP Patroni {frozen} of {old} (its PostgreSQL keeps running, cut off)")
    try:
        # Patroni names the new leader when it takes the leader key, before its PostgreSQL is
        # promoted; the promotion's time is the new timeline's (its history file's).
        while fault != "kill-standby" and time.time() - fault_at < LEADER_WAIT_S:
            new = cluster.leader(shard, avoid=old, running=True)
            if new is not None and new != old:
                promoted = _promoted_at(cluster, _member(cluster, new), old_timeline)
                if promoted is not None:
                    promoted_at = promoted
                    break
            time.sleep(0.1)
        else:
            if fault != "kill-standby":
                raise SystemExit(f"no new leader promoted within {LEADER_WAIT_S:.0f}s")
            new, promoted_at = old, fault_at  # the leader stays; time from the fault
        report["new_leader"] = new
        report["leader_change_s"] = round(promoted_at - fault_at, 2)
        if new != old:
            say(f"{new} promoted {report['leader_change_s']}s after the fault")
        # Until payments flow again, and (freeze) at least FREEZE_HOLD_S: long enough that
        # a writer left on the cut-off server must notice by itself that it cannot commit.
        hold_until = promoted_at + (FREEZE_HOLD_S if frozen is not None else 0.0)
        if frozen is not None:
            # The cut-off primary still runs and says it is read-write: a write there must not
            # be acknowledged (strict synchronous replication), and pg_rewind drops it later.
            fence_key = f"drill-fence-{uuid.uuid4().hex}"
            report["cut_off_write"] = asyncio.run(
                _write_on(cluster.member_dsn(_member(cluster, old), shard), fence_key)
            )
            say(f"a write on the cut-off {old}: {report['cut_off_write']}")
        while True:
            with stream.lock:
                restored = [acked for sent, acked in stream.acks if sent > promoted_at]
            if restored and time.time() >= hold_until and readiness.ready:
                break
            if time.time() - promoted_at > RECOVERY_WAIT_S:
                raise SystemExit(f"no payment acknowledged within {RECOVERY_WAIT_S:.0f}s of the promotion")
            time.sleep(0.1)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
            say(f"SIGCONT Patroni {frozen} of {old}")
    time.sleep(SETTLE_S)
    stop.set()
    for thread in threads:
        thread.join(PAYMENT_TIMEOUT_S * 3)
    readiness.stop()
    with stream.lock:
        times = sorted([fault_at] + [acked for _, acked in stream.acks if acked >= fault_at])
        gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
        longest, resumed_at = max(gaps, default=(0.0, fault_at))
        report["acknowledged"] = len(stream.acknowledged)
        report["accepted"] = stream.accepted
        report["retries"] = stream.retries
        refused = list(stream.refused)
    # The outage a partner saw: the longest time without an acknowledged payment after the
    # fault, and when it ended (from the fault, and from the promotion).
    report["longest_gap_s"] = round(longest, 2)
    report["restored_after_fault_s"] = round(resumed_at - fault_at, 2)
    report["restored_after_promotion_s"] = round(resumed_at - promoted_at, 2)
    not_ready = readiness.not_ready_after(fault_at)
    report["readyz_503_s"] = round(not_ready[0], 2)
    report["readyz_200_again_after_fault_s"] = round(max(0.0, not_ready[1] - fault_at), 2) if not_ready[1] else 0.0
    report["readyz_200_again_after_promotion_s"] = (
        round(max(0.0, not_ready[1] - promoted_at), 2) if not_ready[1] else 0.0
    )
    say(
        f"{report['acknowledged']} payments acknowledged ({report['accepted']} accepted, "
        f"{report['acknowledged'] - report['accepted']} Rejected by fraud rules), {report['retries']} retries; longest gap without an acknowledgement "
        f"{report['longest_gap_s']}s, ended {report['restored_after_fault_s']}s after the fault "
        f"({report['restored_after_promotion_s']}s after the promotion); /readyz 503 for "
        f"{report['readyz_503_s']}s in all"
    )
    problems: list[str] = []
    # The failed member is back as a standby: the old leader on the new timeline, a killed
    # standby streaming again.
    rejoin_deadline = time.monotonic() + REJOIN_WAIT_S
    while True:
        role, timeline, state = _member_view(cluster, shard, victim)
        back = (
            role in ("replica", "sync_standby", "quorum_standby")
            and state == "streaming"
            and timeline is not None
            and old_timeline is not None
            and (timeline > old_timeline if victim == old else timeline >= old_timeline)
        )
        if back:
            report["rejoined"] = {
                "member": victim,
                "role": role,
                "timeline": timeline,
                "after_fault_s": round(time.time() - fault_at, 2),
            }
            say(f"{victim} rejoined as {role} on timeline {timeline}")
            break
        if time.monotonic() > rejoin_deadline:
            problems.append(
                f"{victim} did not rejoin as a standby within {REJOIN_WAIT_S:.0f}s (role {role}, "
                f"state {state}, timeline {timeline})"
            )
            break
        time.sleep(0.5)
    if any(thread.is_alive() for thread in threads):
        problems.append("payers still retrying after the drill: balances are not final")
    if refused:
        problems.append(f"{len(refused)} payments refused: {refused[:3]}")
    ids = list(stream.acknowledged.values())
    if len(set(ids)) != len(ids):
        problems.append("two keys were answered with the same payment")
    after = _balances(api, demo["admin_token"], debtors)
    moved = sum(before[a] - after[a] for a in debtors)
    expected = Decimal(AMOUNT) * stream.accepted
    report["debited"] = str(moved)
    report["debited_expected"] = str(expected)
    if moved != expected:
        problems.append(f"the debtors paid {moved}, the acknowledged payments sum to {expected}")
    # On the leader itself (its own DSN): the old one may not be demoted yet and still answer.
    leader_now = cluster.leader(shard, avoid=old, running=True) or new
    report["leader_after"] = leader_now
    if fault == "kill-standby" and leader_now != old:
        problems.append(f"the leader changed ({old} -> {leader_now}) although only a standby failed")
    in_journal = asyncio.run(_journal_count(cluster.member_dsn(_member(cluster, leader_now), shard), ids))
    report["in_journal"] = in_journal
    if in_journal != len(ids):
        problems.append(f"{len(ids)} payments acknowledged, {in_journal} of them in the journal")
    check = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report["check_ok"] = check.returncode == 0
    if check.returncode != 0:
        problems.append("quickpay check failed:\n" + check.stdout + check.stderr)
    say("quickpay check " + ("passed" if check.returncode == 0 else "FAILED"))
    if frozen is not None:
        if report.get("cut_off_write") != "not acknowledged":
            problems.append(f"a write on the cut-off primary: {report.get('cut_off_write')}")
        elif asyncio.run(_meta_has(cluster.member_dsn(_member(cluster, leader_now), shard), fence_key)):
            problems.append("the cut-off primary's unacknowledged write is on the new leader")
    report["problems"] = problems
    report["ok"] = not problems
    say("OK" if not problems else "FAILED: " + "; ".join(problems))
    return report
