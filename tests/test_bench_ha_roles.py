"""`quickpay bench --ha`: the SUT's CPU attributed by member role, the pure part. An HA member's
role comes from its PostgreSQL's process titles (a standby's startup process is "recovering"
and it has a walreceiver), its Patroni's member from the config path it runs, and each CPU
delta goes to the leader or to the standbys accordingly (loadtest/bench/stack.py cpu_by_role);
the report names them (loadtest/bench/report.py). Which --pipeline-depth each phase passes."""

from __future__ import annotations

import argparse

import pytest

from loadtest.bench.phase import phase_pipeline_depth
from loadtest.bench.report import roles_text
from loadtest.bench.stack import cpu_by_role, member_role, patroni_member, process_group

LEADER_TITLES = [
    "/usr/lib/postgresql/16/bin/postgres -D /s/ha/shard0-a/data --config-file=/s/ha/shard0-a/data/postgresql.conf",
    "postgres: quickpay-shard-0: checkpointer ",
    "postgres: quickpay-shard-0: walwriter ",
    "postgres: quickpay-shard-0: walsender replicator 127.0.0.1(40100) streaming 0/3000148",
    "postgres: quickpay-shard-0: quickpay quickpay_0 127.0.0.1(40102) idle",
]
STANDBY_TITLES = [
    "/usr/lib/postgresql/16/bin/postgres -D /s/ha/shard0-b/data --config-file=/s/ha/shard0-b/data/postgresql.conf",
    "postgres: quickpay-shard-0: checkpointer ",
    "postgres: quickpay-shard-0: startup recovering 000000010000000000000003",
    "postgres: quickpay-shard-0: walreceiver streaming 0/3000148",
]


def test_a_member_is_a_standby_while_it_replays_wal_and_the_leader_otherwise() -> None:
    assert member_role(LEADER_TITLES) == "leader"
    assert member_role(STANDBY_TITLES) == "standby"
    # Before its walreceiver connects, the startup process alone says so.
    assert member_role([t for t in STANDBY_TITLES if "walreceiver" not in t]) == "standby"


def test_a_patroni_process_names_its_member_by_the_config_it_runs() -> None:
    assert patroni_member(["/v/bin/python", "-m", "patroni", "/s/ha/shard1-c/patroni.yml"]) == "shard1-c"
    assert patroni_member(["/v/bin/python", "-m", "quickpay.cli", "shard-worker"]) is None
    assert patroni_member([]) is None
    assert process_group(["/v/bin/python", "-m", "patroni", "/s/ha/shard1-c/patroni.yml"]) == "patroni"


def test_cpu_goes_to_the_leader_or_to_the_standbys_and_the_rest_by_group() -> None:
    groups = {
        1: "postgres",
        2: "postgres",
        3: "postgres",
        4: "patroni",
        5: "patroni",
        6: "shard",
        7: "etcd",
        8: "gateway",
    }
    groups |= {9: "postgres", 10: "patroni"}
    member_of = {1: "shard0-a", 2: "shard0-b", 3: "shard0-c", 4: "shard0-a", 5: "shard0-b", 9: "shard0-a"}
    member_of[10] = "shard0-c"
    roles = {"shard0-a": "leader", "shard0-b": "standby", "shard0-c": "standby"}
    before = {1: 10.0, 2: 5.0, 3: 5.0, 4: 1.0, 5: 1.0, 6: 20.0, 7: 2.0, 8: 30.0, 10: 1.0}
    # pid 9 started in between (counts from zero); a counter that went down counts nothing.
    after = {1: 12.5, 2: 6.0, 3: 5.5, 4: 1.25, 5: 1.125, 6: 23.0, 7: 2.5, 8: 34.0, 9: 0.5, 10: 0.5}
    got = cpu_by_role(before, after, groups, member_of, roles)
    assert got == {
        "postgres_leader": 3.0,
        "postgres_standby": 1.5,
        "patroni_leader": 0.25,
        "patroni_standby": 0.125,
        "shard": 3.0,
        "etcd": 0.5,
        "gateway": 4.0,
    }
    # Every second of the deltas is attributed once.
    total = sum(max(0.0, v - before.get(p, 0.0)) for p, v in after.items())
    assert sum(got.values()) == pytest.approx(total)


def test_without_ha_members_the_one_server_stays_postgres_and_an_unknown_role_says_so() -> None:
    got = cpu_by_role({1: 1.0}, {1: 2.0, 2: 3.0}, {1: "postgres", 2: "shard"}, {}, {})
    assert got == {"postgres": 1.0, "shard": 3.0}
    # A member whose PostgreSQL had no process to read a role from (stopped between samples).
    assert cpu_by_role({}, {4: 1.0}, {4: "patroni"}, {4: "shard0-a"}, {}) == {"patroni_unknown": 1.0}


def test_the_report_names_the_roles_leader_first() -> None:
    text = roles_text({"gateway": 250.0, "postgres_standby": 80.0, "postgres_leader": 160.4, "other": 1.0})
    assert text == "leader PostgreSQL 160, standby PostgreSQLs 80, gateway 250, other 1"
    assert roles_text(None) == "n/a"
    assert roles_text({"shard": None}) == "shard n/a"


def test_the_ha_phase_alone_takes_the_ha_pipeline_depth() -> None:
    args = argparse.Namespace(pipeline_depth=None, ha_pipeline_depth=4)
    assert phase_pipeline_depth(args, ha=True) == 4
    assert phase_pipeline_depth(args, ha=False) is None  # up's own default
    args = argparse.Namespace(pipeline_depth=3, ha_pipeline_depth=None)
    assert phase_pipeline_depth(args, ha=True) == 3 and phase_pipeline_depth(args, ha=False) == 3
    assert phase_pipeline_depth(argparse.Namespace(), ha=True) is None
