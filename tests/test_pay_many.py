"""The shard's pay_many (ledger/dispatch.py, ledger/batcher.py): many payments in one call, checked
in one pass, queued as ONE entry, each item decided atomically as a lone "pay" and failing alone;
one answer, in item order, only after the group commit holding the items."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernel.config import WorkerConfig
from kernel.limits import BATCH_ITEMS_MAX
from ledger import deciders
from ledger.dispatch import PAY_MANY_ITEMS_MAX, _check_pay, _pay_item_ok
from ledger.validate import BadCommand
from loadtest.pay_many_microbench import AGREEMENTS, PARTNER, SETTLEMENT, _worker


def item(k: int, **changes: Any) -> dict[str, Any]:
    base = {
        "payment_id": f"p_{k}",
        "partner_id": PARTNER,
        "agreement_id": f"agr_{k % AGREEMENTS}",
        "amount_minor": 100,
        "currency": "CNY",
        "creditor_account": SETTLEMENT,
        "creditor_shard": 0,
        "reference": "r",
        "body_hash": "h",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP = object()


def call(worker: Any, items: Any) -> list[tuple[bool, Any]]:
    answers: list[tuple[bool, Any]] = []
    worker.dispatch("pay_many", items, lambda ok, result: answers.append((ok, result)))
    return answers


async def decide_queued(worker: Any) -> list[Any]:
    """Runs the real batcher until the queue is drained; returns the write queue's batches
    (not yet committed: nobody is answered until the test answers them)."""
    task = asyncio.get_running_loop().create_task(worker._batcher())
    batches = []
    try:
        while worker.queue or not worker.write_queue.empty():
            batches.append(await asyncio.wait_for(worker.write_queue.get(), 5))
            worker.pipeline_slots.release()
    finally:
        task.cancel()
    return batches


def commit(batch: Any) -> None:
    ws, replies, *_ = batch
    for transfer in ws.transfers:
        transfer.committed = True
    for reply, (ok, result) in replies:
        reply(ok, result)


async def test_one_entry_one_answer_in_item_order_only_after_the_commit() -> None:
    worker = _worker(with_fraud=False)
    answers = call(worker, [item(0), item(1), item(0)])  # a duplicate id within the call
    assert answers == [] and len(worker.queue) == 1 and worker.queued_weight == 3
    batches = await decide_queued(worker)
    assert len(batches) == 1 and answers == [] and worker.queued_weight == 0
    ws = batches[0][0]
    assert [t.id for t in ws.transfers] == ["p_0", "p_1"]
    commit(batches[0])
    assert len(answers) == 1 and answers[0][0] is True
    results = answers[0][1]
    assert [ok for ok, _ in results] == [True, True, True]
    assert [r["code"] for _, r in results][:2] == ["OK", "OK"]
    assert results[2][1]["code"] != "OK" and results[2][1]["transfer"]["id"] == "p_0"  # not paid twice
    assert results[0][1]["transfer"]["id"] == "p_0" and results[1][1]["transfer"]["id"] == "p_1"


HOSTILE: list[Any] = [
    "not a map",
    None,
    item(1, payment_id="bad id"),
    item(1, payment_id=7),
    item(1, partner_id="x" * 500),
    item(1, agreement_id=_DROP),
    item(1, amount_minor=0),
    item(1, amount_minor=2**63),
    item(1, amount_minor=True),
    item(1, amount_minor=1.5),
    item(1, currency="XXX"),
    item(1, currency=["CNY"]),
    item(1, creditor_shard=1),  # shard_count is 1
    item(1, creditor_shard=-1),
    item(1, creditor_shard=True),
    item(1, creditor_shard={}),
    item(1, creditor_account="acc\x00"),
    item(1, reference="a\x00b"),
    item(1, reference="\ud800"),
    item(1, reference="x" * 10_000),
    item(1, reference=""),
    item(1, reference=None),
    item(1, body_hash=["h"]),
    item(1, device_id="\x7f"),
    item(1, device_id=5),
    item(1, ip="1" * 100),
    item(1, reference="e\u0301"),  # not NFC
]


def test_the_one_pass_check_refuses_exactly_what_check_pay_refuses() -> None:
    worker = _worker(with_fraud=False)
    proven: set[tuple[Any, ...]] = set()
    assert _pay_item_ok(worker, item(0), proven) and proven  # the shared values now proven
    for bad in [*HOSTILE, item(2, device_id="d", ip="1.2.3.4")]:
        for seen in (set(), proven):
            try:
                _check_pay(worker, bad)
                passes = True
            except BadCommand:
                passes = False
            assert _pay_item_ok(worker, bad, set(seen)) is passes, bad


async def test_a_bad_item_fails_alone_with_its_own_error() -> None:
    worker = _worker(with_fraud=False)
    items = [item(0), *HOSTILE, item(3, agreement_id="agr_missing"), item(4)]
    answers = call(worker, items)
    commit_all = await decide_queued(worker)
    for batch in commit_all:
        commit(batch)
    ((ok, results),) = answers
    assert ok and len(results) == len(items)
    for bad, (item_ok, answer) in zip(HOSTILE, results[1 : 1 + len(HOSTILE)]):
        with pytest.raises(BadCommand) as refused:
            _check_pay(worker, bad)
        assert (item_ok, answer) == (False, {"code": "BAD_REQUEST", "message": str(refused.value)}), bad
    assert results[0] == [True, results[0][1]] and results[0][1]["code"] == "OK"
    assert results[-2][0] is True and results[-2][1]["code"] != "OK" and results[-2][1]["transfer"] is None
    assert results[-1][1]["code"] == "OK"


async def test_every_item_refused_at_intake_answers_at_once_and_queues_nothing() -> None:
    worker = _worker(with_fraud=False)
    answers = call(worker, [item(0, currency="XXX"), item(1, amount_minor=-1)])
    assert len(answers) == 1 and [ok for ok, _ in answers[0][1]] == [False, False]
    assert not worker.queue and worker.queued_weight == 0


async def test_an_item_that_fails_halfway_leaves_nothing_and_the_others_proceed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = _worker(with_fraud=False)
    real = deciders._DECIDERS["pay"]

    def fails_after_deciding(w: Any, args: Any, ws: Any, now_ms: int) -> Any:
        decided = real(w, args, ws, now_ms)
        if args["payment_id"] == "p_1":
            raise RuntimeError("a defect after the decision changed memory")
        return decided

    monkeypatch.setitem(deciders._DECIDERS, "pay", fails_after_deciding)
    before = worker.state.accounts["acc_1"].balance_minor
    answers = call(worker, [item(0), item(1), item(2)])
    (batch,) = await decide_queued(worker)
    assert [t.id for t in batch[0].transfers] == ["p_0", "p_2"]
    assert "acc_1" not in batch[0].deltas and worker.state.accounts["acc_1"].balance_minor == before
    assert "p_1" not in worker.state.transfers
    commit(batch)
    results = answers[0][1]
    assert [ok for ok, _ in results] == [True, False, True] and results[1][1]["code"] == "INTERNAL"


async def test_the_batch_stays_bounded_and_the_queue_counts_items() -> None:
    worker = _worker(with_fraud=False)
    worker.config.batch_size_max = 1_000
    first = call(worker, [item(k) for k in range(600)])
    second = call(worker, [item(k) for k in range(600, 1_200)])
    lone: list[Any] = []
    worker.dispatch("pay", item(1_200), lambda ok, result: lone.append(result))
    assert worker.queued_weight == 1_201 and len(worker.queue) == 3
    batches = await decide_queued(worker)
    assert [len(b[0].transfers) for b in batches] == [600, 601]  # 600 + 600 > 1,000: two batches
    for batch in batches:
        commit(batch)
    assert first and second and lone and worker.queued_weight == 0


async def test_a_full_queue_answers_every_item_overloaded_once() -> None:
    worker = _worker(with_fraud=False)
    worker.config.queue_max = 100
    assert call(worker, [item(k) for k in range(60)]) == []
    ((ok, results),) = call(worker, [item(k) for k in range(60, 120)])
    assert ok and {r["code"] for _, r in results} == {"OVERLOADED"} and worker.queued_weight == 60
    lone: list[Any] = []
    worker.queued_weight = 100
    worker.dispatch("pay", item(500), lambda ok, result: lone.append((ok, result)))
    assert lone and lone[0][1]["code"] == "OVERLOADED"


def test_a_malformed_call_is_refused_whole() -> None:
    assert PAY_MANY_ITEMS_MAX == BATCH_ITEMS_MAX
    for bad in (None, {}, "pay", [], [item(0)] * (PAY_MANY_ITEMS_MAX + 1)):
        worker = _worker(with_fraud=False)
        answers = call(worker, bad)
        assert answers and answers[0][0] is False and answers[0][1]["code"] == "BAD_REQUEST", bad
        assert not worker.queue


def test_the_queue_bound_admits_the_largest_batch_call() -> None:
    """Regression: --queue-max accepted values below PAY_MANY_ITEMS_MAX, and a pay_many with
    more items than the whole queue bound was answered OVERLOADED on every try, forever."""
    config = WorkerConfig(shard=0, shard_count=1, dsn="", listen="", peers={}, queue_max=PAY_MANY_ITEMS_MAX - 1)
    with pytest.raises(SystemExit, match="--queue-max"):
        config.validate()
    config.queue_max = PAY_MANY_ITEMS_MAX
    config.validate()


async def test_the_batch_timings_count_every_payment_of_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ping's batch figures (commands_mean, commands_max) counted a pay_many of
    1,000 payments as one command, so a shard fed by the batch endpoint showed batches of ~1."""
    from ledger import pg
    from ledger.heartbeat import _read_ping

    async def no_write(conn: Any, ws: Any) -> None:
        return None

    monkeypatch.setattr(pg, "write_batch", no_write)
    worker = _worker(with_fraud=False)
    worker.write_conn = object()
    answers = call(worker, [item(k) for k in range(5)])
    worker.dispatch("pay", item(5), lambda ok, result: answers.append((ok, result)))
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker._batcher()), loop.create_task(worker._writer())]
    try:
        for _ in range(200):
            if len(answers) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
    assert len(answers) == 2
    batches = _read_ping(worker, None)["batches"]
    assert batches["count"] == 1 and batches["commands_max"] == 6
