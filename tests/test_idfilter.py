"""The transfer id filter (ledger/idfilter.py) and the prefetch it makes rare.

Unit: no false negatives, growth past its capacity, a false-positive rate near the one asked.
Live worker: new payments skip PostgreSQL, retries of evicted keys are still looked up and
replayed (across a restart, which rebuilds the filter from the journal), and
QUICKPAY_ID_FILTER=off restores the lookup of every uncached id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Stack, start_stack, stop_stack

from ledger.client import ShardClient
from ledger.idfilter import IdFilter


def test_no_false_negatives_and_growth_beyond_capacity() -> None:
    ids = IdFilter(capacity_min=1_000)
    added = [f"pay_{uuid.uuid4().hex}_0" for _ in range(20_000)]
    ids.update(added)
    assert all(i in ids for i in added)
    assert len(ids) == 20_000
    stats = ids.stats()
    assert stats["layers"] >= 4  # 1,000 + 2,000 + 4,000 + 8,000 + ... holds 20,000
    assert stats["false_positive_rate_max"] < 2 * 0.001
    # add and update mixed: the bulk update fills the top layer to its capacity, then grows
    more = IdFilter(capacity_min=1_000)
    singles = [f"pay_{uuid.uuid4().hex}_1" for _ in range(700)]
    for i in singles:
        more.add(i)
    bulk = [f"pay_{uuid.uuid4().hex}_1" for _ in range(5_000)]
    more.update(iter(bulk))
    assert all(i in more for i in singles + bulk) and len(more) == 5_700
    assert more.stats()["layers"] == 3  # 1,000 + 2,000 + 4,000 hold the 5,700: no fourth layer


def test_false_positive_rate_is_near_the_one_asked() -> None:
    ids = IdFilter(capacity_min=50_000, false_positive_rate=0.01)
    ids.update(f"known_{i}" for i in range(50_000))
    false_positives = sum(1 for i in range(100_000) if f"unknown_{i}" in ids)
    assert false_positives < 3 * 1_000  # expected about 1,000 (1%)


@pytest.mark.parametrize("kwargs", [{"false_positive_rate": 0.0}, {"false_positive_rate": 0.5}, {"capacity_min": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IdFilter(**kwargs)


# ---- against a live worker -----------------------------------------------------------------
@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(tmp_path_factory.mktemp("idfilter"))
    try:
        yield s
    finally:
        stop_stack(s)


_WORKER_SCRIPT = """
import asyncio, logging, sys
from ledger.worker import WorkerConfig, run_worker
logging.basicConfig(level=logging.INFO)
asyncio.run(run_worker(WorkerConfig(shard=0, shard_count=1, dsn=sys.argv[1], listen=sys.argv[2],
                                    peers={}, transfer_cache_max=2, batch_wait_ms=20, no_rules=True,
                                    id_filter_build_delay_s=float(sys.argv[3]))))
"""


async def _filter_installed(client: ShardClient, timeout_s: float = 30.0) -> dict[str, Any]:
    """The shard builds its id filter while it serves: wait until ping shows it."""
    deadline = time.monotonic() + timeout_s
    while True:
        prefetch = dict((await client.call("ping"))["prefetch"])
        if prefetch["id_filter"] is not None or time.monotonic() > deadline:
            return prefetch
        await asyncio.sleep(0.05)


def _accepts(path: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class _Worker:
    def __init__(
        self, dsn: str, socket_path: str, log_path: Path, env: dict[str, str], filter_delay_s: float = 0.0
    ) -> None:
        self.socket_path = socket_path
        if os.path.exists(socket_path[5:]):
            os.unlink(socket_path[5:])
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_SCRIPT, dsn, socket_path, str(filter_delay_s)],
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.log_path = log_path
        deadline = time.monotonic() + 60
        while not _accepts(socket_path[5:]):  # listening, not only bound (the file exists first)
            assert self.proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _database(stack: Stack, name: str) -> str:
    from quickpay.embedded_pg import EmbeddedPostgres

    embedded = EmbeddedPostgres(stack.state_dir)
    embedded.create_databases([name])
    return embedded.dsn(name)


async def _setup(client: ShardClient) -> None:
    await client.call(
        "open_accounts",
        [
            {"id": "acc_f_debtor", "currency": "CNY"},
            {"id": "set_ptn_f", "kind": "settlement", "currency": "CNY", "partner_id": "ptn_f"},
        ],
    )
    funded = await client.call(
        "fund",
        {
            "transfer_id": "fund_f",
            "account_id": "acc_f_debtor",
            "amount_minor": 1_000_000,
            "currency": "CNY",
            "reference": "r",
            "body_hash": "h",
        },
    )
    assert funded["code"] == "OK"
    made = await client.call(
        "create_agreement",
        {
            "id": "agr_f",
            "partner_id": "ptn_f",
            "debtor_account": "acc_f_debtor",
            "currency": "CNY",
            "per_payment_limit_minor": 10_000,
            "periodic_limits": [["Day", "Calendar", 1_000_000]],
        },
    )
    assert made["code"] == "OK"
    authorised = await client.call("agreement_action", {"id": "agr_f", "action": "authorise", "actor": "customer"})
    assert authorised["code"] == "OK"


def _pay(client: ShardClient, payment_id: str) -> Any:
    return client.call(
        "pay",
        {
            "payment_id": payment_id,
            "partner_id": "ptn_f",
            "agreement_id": "agr_f",
            "amount_minor": 100,
            "currency": "CNY",
            "creditor_account": "set_ptn_f",
            "creditor_shard": 0,
            "reference": "r",
            "body_hash": "same-body",
        },
    )


@pytest.mark.parametrize("filter_on", [True, False])
def test_new_ids_skip_postgres_and_retries_of_old_keys_replay_across_a_restart(
    own: Stack, tmp_path: Path, filter_on: bool
) -> None:
    dsn = _database(own, f"qp_idfilter_{'on' if filter_on else 'off'}")
    socket_path = f"unix:{tmp_path / 'w.sock'}"
    env = {k: v for k, v in os.environ.items() if k != "QUICKPAY_ID_FILTER"}
    if not filter_on:
        env["QUICKPAY_ID_FILTER"] = "off"

    async def first_life() -> dict[str, Any]:
        client = ShardClient(socket_path, call_timeout_s=30.0)
        try:
            if filter_on:
                assert (await _filter_installed(client))["id_filter"] is not None
            await _setup(client)
            originals = {}
            for n in range(6):  # one at a time: six batches, and the cache holds 2
                answer = await _pay(client, f"p_{n}")
                assert answer["code"] == "OK"
                originals[f"p_{n}"] = answer["transfer"]
            ping = await client.call("ping")
            # the group-commit cycle of each batch: a whole cycle is never shorter than its write
            batches = ping["batches"]
            assert batches["count"] >= 7 and batches["commands_max"] >= 1
            for q in ("p50", "p99"):
                assert batches["cycle_ms"][q] >= batches["write_ms"][q] > 0
                assert batches["cycle_ms"][q] >= batches["decide_ms"][q] >= 0
            return {"originals": originals, "prefetch": ping["prefetch"]}
        finally:
            await client.close()

    async def second_life(originals: dict[str, Any]) -> dict[str, Any]:
        client = ShardClient(socket_path, call_timeout_s=30.0)
        try:
            if filter_on:
                assert (await _filter_installed(client))["id_filter"] is not None
            retries = await asyncio.gather(*(_pay(client, key) for key in originals), _pay(client, "p_new"))
            assert [a["code"] for a in retries] == ["REPLAY"] * len(originals) + ["OK"]
            assert [a["transfer"] for a in retries[:-1]] == list(originals.values())
            balance = await client.call("balance", {"id": "acc_f_debtor"})
            assert balance["balance_minor"] == 1_000_000 - 7 * 100  # seven distinct payments, once each
            return dict((await client.call("ping"))["prefetch"])
        finally:
            await client.close()

    worker = _Worker(dsn, socket_path, tmp_path / "worker.log", env)
    try:
        first = asyncio.run(first_life())
    finally:
        worker.stop()
    worker = _Worker(dsn, socket_path, tmp_path / "worker.log", env)  # restart: the filter is rebuilt
    try:
        second = asyncio.run(second_life(first["originals"]))
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    if filter_on:
        # every id of the first life was new: proved so without PostgreSQL
        assert first["prefetch"]["proved_new"] == 7 and first["prefetch"]["looked_up"] == 0  # fund + 6 payments
        assert first["prefetch"]["id_filter"]["ids"] == 7
        # after the restart: the six retries were looked up (not in the new cache), the new id was not
        assert second["looked_up"] == 6 and second["proved_new"] == 1, second
        assert second["id_filter"]["ids"] == 7 + 1
    else:
        assert first["prefetch"]["id_filter"] is None and first["prefetch"]["proved_new"] == 0
        assert first["prefetch"]["looked_up"] == 7
        assert second["looked_up"] == 7 and second["proved_new"] == 0


def test_ids_decided_while_the_filter_is_built_are_in_it(own: Stack, tmp_path: Path) -> None:
    """The shard serves before its id filter is built (a restart does not wait for a scan of
    the whole journal). Payments decided meanwhile must be in the filter once it is
    installed: were one missing, its retry (evicted from the 2-entry cache) would be proved
    "new" and debited twice."""
    dsn = _database(own, "qp_idfilter_build")
    socket_path = f"unix:{tmp_path / 'w.sock'}"
    env = {k: v for k, v in os.environ.items() if k != "QUICKPAY_ID_FILTER"}

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        client = ShardClient(socket_path, call_timeout_s=30.0)
        try:
            assert (await client.call("ping"))["prefetch"]["id_filter"] is None  # still being built
            await _setup(client)
            originals = {}
            for n in range(6):
                answer = await _pay(client, f"b_{n}")
                assert answer["code"] == "OK"
                originals[f"b_{n}"] = answer["transfer"]
            building = dict((await client.call("ping"))["prefetch"])
            installed = await _filter_installed(client)
            retries = await asyncio.gather(*(_pay(client, key) for key in originals))
            assert [a["code"] for a in retries] == ["REPLAY"] * 6
            assert [a["transfer"] for a in retries] == list(originals.values())
            balance = await client.call("balance", {"id": "acc_f_debtor"})
            assert balance["balance_minor"] == 1_000_000 - 6 * 100  # each payment once
            return building, dict((await client.call("ping"))["prefetch"]) | {"installed": installed}
        finally:
            await client.close()

    worker = _Worker(dsn, socket_path, tmp_path / "worker.log", env, filter_delay_s=3.0)
    try:
        building, after = asyncio.run(run())
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    # While it was built, every id was looked up (none proved new). Once installed it holds
    # the fund and the six payments, all decided after the scan's snapshot (so only the
    # pending list brought them), and no retry was proved new: each was looked up, or found
    # in the 2-entry cache.
    assert building["id_filter"] is None and building["proved_new"] == 0 and building["looked_up"] == 7
    assert after["installed"]["id_filter"]["ids"] == 7, after
    assert after["proved_new"] == 0 and 7 + 4 <= after["looked_up"] <= 7 + 6, after
    assert "7 decided while it was built" in (tmp_path / "worker.log").read_text()
