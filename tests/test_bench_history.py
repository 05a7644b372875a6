"""`quickpay bench --history-transfers`: the bulk-loaded history keeps every shard's books
(each history account ends at 0, balances still sum to zero, the audit and the row readers
of `quickpay check` pass), a restarted stack loads it (its id filter holds every history
id) and still pays. The pure parts: the ring balances, the ids route to their shard."""

from __future__ import annotations

import collections
import http.client
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import free_port

from kernel.ids import shard_of
from ledger.pg import TRANSFER_COLUMNS
from loadtest.bench.checks import check_conservation, count_payment_rows
from loadtest.bench.history import history_account_ids, history_rows, load_history
from loadtest.bench.phase import PhaseConfig, _load_history_and_restart, process_rss_mb
from loadtest.bench.population import build_templates, seed
from loadtest.bench.stack import StackProcess, SutCpu
from loadtest.generator import IDEMPOTENCY_KEY


def test_the_ring_leaves_every_account_at_zero_and_ids_route_to_their_shard() -> None:
    accounts = history_account_ids(7, shard=1, shard_count=3)
    assert len(set(accounts)) == 7 and all(shard_of(a, 3) == 1 for a in accounts)
    assert accounts == history_account_ids(7, shard=1, shard_count=3)  # the same every run
    rows = history_rows(accounts, 0, 21, 21, 100, 1_800_000_000_000, 1)
    assert len(rows[0]) == len(TRANSFER_COLUMNS)
    columns = {name: i for i, name in enumerate(TRANSFER_COLUMNS)}
    net: collections.Counter[str] = collections.Counter()
    for row in rows:
        net[row[columns["debit_account"]]] -= row[columns["amount_minor"]]
        net[row[columns["credit_account"]]] += row[columns["amount_minor"]]
        assert row[columns["debit_account"]] != row[columns["credit_account"]]
        assert row[columns["created_at_ms"]] < 1_800_000_000_000 - 86_400_000  # before yesterday
    assert set(net.values()) == {0}
    assert [row[columns["seq"]] for row in rows] == list(range(100, 121))
    assert len({row[columns["id"]] for row in rows}) == 21
    with pytest.raises(ValueError, match="multiple"):
        load_history(["unused"], 10, 3)


def test_a_stack_with_history_restarts_balanced_and_pays(tmp_path: Path) -> None:
    stack = StackProcess(tmp_path / "state", free_port(), 2, 1, tmp_path / "up.log", no_rules=True)
    cfg = PhaseConfig(
        name="history",
        state_dir=tmp_path / "state",
        port=stack.port,
        shards=2,
        workers=1,
        customers=0,
        partners=0,
        step_s=1,
        start_rate=1,
        step_factor=2,
        steps_max=1,
        max_rate=1,
        history_transfers=6_000,
        history_accounts=600,
    )
    with stack:
        before = count_payment_rows(stack.dsns())
        found = _load_history_and_restart(cfg, stack)
        assert found["transfers"] == 6_000 and found["accounts"] == 600
        assert found["restart_to_ready_s"] > 0
        assert count_payment_rows(stack.dsns()) == before + 6_000
        # Each shard's filter was built from its journal: 3,000 history ids each, at least.
        assert sorted(f["shard"] for f in found["id_filters"]) == [0, 1]
        assert all(f["ids"] >= 3_000 for f in found["id_filters"]), found["id_filters"]
        ok, audit = check_conservation(stack.dsns())
        assert ok, audit["problems"]
        rss = process_rss_mb(SutCpu(stack.pid, stack.state_dir))
        assert {"shard", "gateway", "postgres"} <= set(rss["by_group"]), rss["by_group"]
        assert all(p["rss_mb"] > 0 for p in rss["processes"])
        # The row readers of `quickpay check` read every history row.
        checked = subprocess.run(
            [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
        report = json.loads(checked.stdout)
        assert report["ok"] is True, report
        # And it pays: a seeded customer's payment, after the restart, is committed.
        population = seed(stack, 20, 1, tmp_path)
        template = build_templates(population, count=1)[0][0]
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        key = uuid.uuid4().hex[:22]
        connection.request(
            template.method,
            template.path,
            body=template.body.replace(IDEMPOTENCY_KEY.encode(), key.encode()),
            headers={**dict(template.headers), "x-idempotency-key": key},
        )
        answer = connection.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 201 and body["status"] == "AcceptedSettlementCompleted", body
