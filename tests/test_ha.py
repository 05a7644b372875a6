"""Two sites: `quickpay up --ha` (Patroni + etcd, synchronous standbys in strict mode).

Fast tests: the multi-host DSN split, the writer's choice of the server that commits (two
plain PostgreSQL servers, one that cannot commit), and the Patroni configuration as Patroni
itself validates it. Slow tests (marked `slow`, run in CI): a real HA stack of two shards,
three members each, under a stream of payments, through `quickpay ha drill`:
SIGKILL of a primary's postmaster, and SIGSTOP of a primary's Patroni (a partition).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, STACK_FLAGS, Stack, start_stack, stop_stack

from ledger.writable import NoWritableHost, connect_writable, split_hosts
from quickpay.ha import HaCluster, dcs_settings

# Generous: CI machines are shared and slow; the figures themselves go to BENCHMARKS.md.
RESTORED_WITHIN_S = 15.0


# ---- fast -----------------------------------------------------------------------------
def test_split_hosts_makes_one_dsn_per_host_and_keeps_the_rest() -> None:
    dsn = (
        "postgresql://postgres@127.0.0.1:5001,127.0.0.1:5002/quickpay_shard_0"
        "?target_session_attrs=read-write&passfile=%2Ftmp%2Fp"
    )
    assert split_hosts(dsn) == [
        "postgresql://postgres@127.0.0.1:5001/quickpay_shard_0?passfile=%2Ftmp%2Fp",
        "postgresql://postgres@127.0.0.1:5002/quickpay_shard_0?passfile=%2Ftmp%2Fp",
    ]
    single = "postgresql://postgres@/db?host=%2Ftmp%2Fs&port=5"
    assert split_hosts(single) == [single]
    assert split_hosts("postgresql://u:p@h1:1,h2:2/db") == ["postgresql://u:p@h1:1/db", "postgresql://u:p@h2:2/db"]


def test_quickpay_dsns_keeps_multi_host_dsns_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUICKPAY_DSNS separates shards with commas; a multi-host DSN has commas of its own.
    (Split on every comma before: a multi-host DSN became two broken ones.)"""
    import argparse

    from quickpay.cli import _dsns_from

    a = "postgresql://postgres@pg0a:5432,pg0b:5432/quickpay_shard_0?target_session_attrs=read-write"
    b = "postgres://postgres@pg1a:5432,pg1b:5432/quickpay_shard_1"
    monkeypatch.setenv("QUICKPAY_DSNS", f"{a}, {b}")
    assert _dsns_from(argparse.Namespace(dsn=None)) == [a, b]
    monkeypatch.setenv("QUICKPAY_DSNS", "postgresql://u@h/db0,postgresql://u@h/db1")
    assert _dsns_from(argparse.Namespace(dsn=None)) == ["postgresql://u@h/db0", "postgresql://u@h/db1"]


def test_dcs_settings_never_acknowledge_on_one_server() -> None:
    settings = dcs_settings(3)
    assert settings["synchronous_mode"] is True
    assert settings["synchronous_mode_strict"] is True
    assert settings["synchronous_node_count"] == 1
    assert settings["postgresql"]["use_pg_rewind"] is True
    assert settings["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert settings["postgresql"]["parameters"]["fsync"] == "on"
    # Patroni's rule, which it would otherwise "fix" by changing our values.
    assert settings["loop_wait"] + 2 * settings["retry_timeout"] <= settings["ttl"]


def test_patroni_accepts_the_member_configuration(tmp_path: Path) -> None:
    """Patroni's own validator (`patroni --validate-config`) on a member's patroni.yml."""
    cluster = HaCluster(tmp_path / "state", shards=1, members=3)
    cluster.dir.mkdir(parents=True)
    cluster.load_or_create_layout()
    config = cluster.patroni_config(cluster.members[0])
    assert config["bootstrap"]["dcs"] == dcs_settings(3)
    assert "trust" not in json.dumps(config["postgresql"]["pg_hba"])
    path = tmp_path / "patroni.yml"
    path.write_text(yaml.safe_dump(config))
    # The validator checks that data_dir's parent exists and the binaries are there.
    (tmp_path / "state" / "ha" / cluster.members[0].name).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "patroni", "--validate-config", str(path)], capture_output=True, text=True, timeout=60
    )
    # What the validator says about a loopback-only single machine, and only that: connect
    # addresses on 127.0.0.1 (right here, wrong across machines) and etcd not running now.
    expected = ("connect_address 127.0.0.1:", "must not contain", "etcd3.hosts.0 127.0.0.1:")
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not any(e in line for e in expected)
    ]
    assert problems == [], result.stdout + result.stderr
    assert "connect_address" in result.stdout + result.stderr  # the validator did run


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two plain PostgreSQL servers; the first cannot commit (it waits for a synchronous
    standby that does not exist), like a primary cut off from its cluster."""
    from quickpay.embedded_pg import EmbeddedPostgres

    servers = [EmbeddedPostgres(tmp_path_factory.mktemp(f"pg{i}")) for i in range(2)]
    for pg in servers:
        pg.start()
    from quickpay.embedded_pg import BIN_PATH

    # One password file for both (the multi-host DSN names one): the second takes the first's.
    subprocess.run(
        [str(BIN_PATH / "psql"), servers[1].tcp_dsn(), "-qc", f"ALTER ROLE postgres PASSWORD '{servers[0].password}'"],
        check=True,
        capture_output=True,
    )
    servers[1].passfile.write_text(servers[0].passfile.read_text())
    subprocess.run(
        [str(BIN_PATH / "psql"), servers[0].tcp_dsn(), "-qc", "ALTER SYSTEM SET synchronous_standby_names = 'nobody'"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(BIN_PATH / "psql"), servers[0].tcp_dsn(), "-qc", "SELECT pg_reload_conf()"],
        check=True,
        capture_output=True,
    )
    try:
        yield servers
    finally:
        for pg in servers:
            pg.stop()


def _multi_host(servers: list[Any]) -> str:
    from urllib.parse import quote

    hosts = ",".join(f"127.0.0.1:{pg.port}" for pg in servers)
    return (
        f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"
        f"&passfile={quote(str(servers[0].passfile))}"
    )


def test_the_writer_chooses_the_server_that_commits(two_servers: list[Any]) -> None:
    cannot, can = two_servers

    async def choose() -> str:
        conn, dsn = await connect_writable(_multi_host(two_servers))
        try:
            assert await conn.fetchval("SHOW port") == str(can.port)
        finally:
            await conn.close()
        return dsn

    chosen = asyncio.run(choose())
    assert f":{can.port}/" in chosen and f":{cannot.port}" not in chosen


def test_no_server_that_commits_is_an_error_the_worker_waits_on(two_servers: list[Any]) -> None:
    cannot = two_servers[0]

    async def choose() -> None:
        await connect_writable(_multi_host([cannot, cannot]))

    with pytest.raises(NoWritableHost, match="TimeoutError"):
        asyncio.run(choose())


def test_up_waits_on_a_leader_that_cannot_commit_without_hanging_or_crashing(
    two_servers: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up --ha` asks each shard's leader for a commit until one succeeds. A leader with no
    synchronous standby yet (standbys still copying) holds the commit: that is "not yet",
    answered in seconds. (Before: psql with a statement_timeout, which PostgreSQL does not
    apply to the wait for the standby, so the subprocess timeout raised out of `up`.)"""
    cannot = two_servers[0]
    cluster = HaCluster(tmp_path / "state", shards=1, members=2)
    monkeypatch.setattr(cluster, "dsn", lambda shard, database=None: _multi_host([cannot, cannot]))
    started = time.monotonic()
    assert cluster.writable(0) is False
    assert time.monotonic() - started < 15


# ---- slow: a real HA stack -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ha_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    flags = tuple(f for f in STACK_FLAGS if f != "--no-monitor")  # the monitor runs too
    s = start_stack(tmp_path_factory.mktemp("ha"), shards=2, flags=flags, extra=("--ha",))
    try:
        yield s
    finally:
        stop_stack(s)
        _stop_leftover_servers(s.state_dir)


def _stop_leftover_servers(state_dir: Path) -> None:
    """A member whose Patroni was killed leaves its PostgreSQL running: stop it (`up` does
    too; this is for a supervisor that was killed)."""
    HaCluster.attach(state_dir).stop_orphans()


def _quickpay(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_ha_status_shows_a_leader_and_a_synchronous_standby_per_shard(ha_stack: Stack) -> None:
    # Right after start a leader may still accept any standby ('*', strict mode) before
    # Patroni names one (within a few of its loops).
    deadline = time.monotonic() + 60
    while True:
        result = _quickpay("ha", "status", "--state-dir", str(ha_stack.state_dir), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        status = json.loads(result.stdout)
        if all(shard["synchronous"] for shard in status["shards"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(status["shards"]) == 2
    for shard in status["shards"]:
        roles = sorted(m["role"] for m in shard["members"])
        assert roles.count("leader") == 1 and len(shard["synchronous"]) == 1, shard
        assert all(m["state"] in ("running", "streaming") for m in shard["members"]), shard
        assert len({m["timeline"] for m in shard["members"]}) == 1, shard
    text = _quickpay("ha", "status", "--state-dir", str(ha_stack.state_dir))
    assert "leader" in text.stdout and "sync_standby" in text.stdout

    # The admin API (the console's table) says the same: Patroni's roles, states and lag per member.
    reply = ha_stack.admin("GET", "/admin/v1/ha")
    assert reply.status == 200 and reply.body["mode"] == "patroni", reply.body
    for shard, seen in zip(status["shards"], reply.body["shards"], strict=True):
        assert seen["leader"] == shard["leader"], (seen, shard)
        roles = {m["name"]: m["role"] for m in seen["members"]}
        assert roles == {m["member"]: m["role"] for m in shard["members"]}, (seen, shard)
        assert all(m["api"] == "answered" and m["state"] in ("running", "streaming") for m in seen["members"]), seen
        assert all(m["lag_bytes"] is not None for m in seen["members"] if m["role"] != "leader"), seen
    # Kept for tests/test_admin_ha.py's recorded answer (test-artefacts/ is git-ignored).
    cluster = HaCluster.attach(ha_stack.state_dir)
    code, body = cluster.rest(cluster.shard_members(0)[0], "/cluster")
    assert code == 200, body
    artefacts = ROOT / "test-artefacts"
    artefacts.mkdir(exist_ok=True)
    (artefacts / "patroni-cluster-shard0.json").write_text(json.dumps(body, indent=2))


def _drill(stack: Stack, fault: str, shard: int) -> dict[str, Any]:
    result = _quickpay(
        "ha",
        "drill",
        "--fault",
        fault,
        "--shard",
        str(shard),
        "--state-dir",
        str(stack.state_dir),
        "--json",
        timeout_s=600,
    )
    print(result.stdout[-6000:], result.stderr[-3000:])
    assert "\n[\n" in result.stdout, result.stdout + result.stderr
    reports = json.loads(result.stdout[result.stdout.index("\n[\n") + 1 :])
    assert len(reports) == 1
    report: dict[str, Any] = reports[0]
    assert result.returncode == 0, report["problems"]
    return report


def _common(report: dict[str, Any], *, failover: bool = True) -> None:
    assert report["ok"] and not report["problems"]
    assert (report["new_leader"] != report["old_leader"]) is failover
    # Every key answered 201 names one journal row, and the money moved once per payment.
    assert report["acknowledged"] > 0 and report["in_journal"] == report["acknowledged"]
    assert report["accepted"] > 0 and report["debited"] == report["debited_expected"]
    assert report["check_ok"]
    # The failed member is back as a standby (an old primary on the new timeline).
    assert report["rejoined"]["role"] in ("replica", "sync_standby")


@pytest.mark.slow
def test_sigkill_of_a_primary_postmaster_fails_over_under_payments(ha_stack: Stack) -> None:
    report = _drill(ha_stack, "kill", 0)
    _common(report)
    assert report["restored_after_fault_s"] < RESTORED_WITHIN_S, report
    assert report["readyz_200_again_after_fault_s"] < RESTORED_WITHIN_S, report
    assert report["retries"] > 0  # the stream did see the fault, and converged by retrying


@pytest.mark.slow
def test_a_frozen_primary_patroni_is_partitioned_away_and_rejoins_by_pg_rewind(ha_stack: Stack) -> None:
    log_before = len(ha_stack.log())
    report = _drill(ha_stack, "freeze", 1)
    _common(report)
    # Patroni cannot notice a frozen leader before its key's TTL; from the promotion on, the
    # service is back within the budget.
    assert report["restored_after_promotion_s"] < RESTORED_WITHIN_S, report
    assert report["readyz_200_again_after_promotion_s"] < RESTORED_WITHIN_S, report
    # /readyz said so while the writer's commits hung on the cut-off server, not only while
    # it restarted (about 1 s).
    assert report["readyz_503_s"] >= 2.0, report
    # The cut-off primary could not get a write acknowledged ...
    assert report["cut_off_write"] == "not acknowledged"
    # ... so the writer left on it stopped by itself (its heartbeat's commit hung, this drill)
    # and moved to the new leader.
    assert "shard 1: its PostgreSQL did not commit within 5s (TimeoutError" in ha_stack.log()[log_before:]
    # Its diverged WAL (the unacknowledged write) was rewound when it came back.
    old_log = (ha_stack.state_dir / "ha" / report["old_leader"] / "patroni.log").read_text(errors="replace")
    assert "running pg_rewind from" in old_log and "pg_rewind exit code=0" in old_log


@pytest.mark.slow
def test_losing_the_synchronous_standby_neither_loses_nor_stops_payments(ha_stack: Stack) -> None:
    """Three members: the leader makes the third one synchronous (strict mode never lets it
    commit alone meanwhile)."""
    report = _drill(ha_stack, "kill-standby", 0)
    _common(report, failover=False)
    assert report["restored_after_fault_s"] < RESTORED_WITHIN_S, report


@pytest.mark.slow
def test_check_and_monitor_work_against_the_ha_topology(ha_stack: Stack) -> None:
    check = _quickpay("check", "--state-dir", str(ha_stack.state_dir))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "money is conserved" in check.stdout
    status = json.loads((ha_stack.state_dir / "supervisor.json").read_text())
    monitor = next(c for c in status["children"] if c["name"] == "monitor")
    assert monitor["state"] == "running" and not monitor["crash_looping"], monitor
    members = [c for c in status["children"] if c["name"].startswith("patroni-")]
    assert len(members) == 6 and all(c["state"] == "running" for c in members), members
    assert os.path.exists(ha_stack.state_dir / "ha" / "layout.json")
