"""The group-commit pipeline deeper than its default (WorkerConfig.pipeline_depth, quickpay up
--pipeline-depth): with 4 batches in flight, the real batcher decides ahead while the one real
writer commits one batch at a time in the order decided; each batch's answers come only after
its own commit; a failed commit stops the process (fail-stop) before any later batch is
written or answered, so "acknowledged means committed" holds at any depth. The PostgreSQL
write is a stand-in that the test holds, fails, and watches; os._exit is caught."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kernel.config import WorkerConfig
from kernel.limits import PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_MAX
from ledger import pg, writer
from loadtest.pay_many_microbench import _worker, pay_command

DEPTH = 4


class Exited(Exception):
    """What the stand-in os._exit raises: the writer task ends where the process would."""


class HeldWrites:
    """pg.write_batch's stand-in: each call waits until the test lets it finish (or fail)."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []  # the transfer ids of each write, in call order
        self.finished: list[list[str]] = []
        self.gates: list[asyncio.Future[None]] = []
        self.in_flight = 0
        self.in_flight_max = 0

    async def __call__(self, conn: Any, ws: Any) -> None:
        ids = [t.id for t in ws.transfers]
        self.started.append(ids)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            await gate
        finally:
            self.in_flight -= 1
        self.finished.append(ids)

    def finish(self, index: int, error: BaseException | None = None) -> None:
        if error is None:
            self.gates[index].set_result(None)
        else:
            self.gates[index].set_exception(error)


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def started_pipeline(monkeypatch: pytest.MonkeyPatch, batches: int) -> tuple[Any, HeldWrites, dict, list]:
    """A worker at DEPTH with `batches` one-payment batches sent one after the other (each
    decided before the next is sent), its batcher and writer running; the first write held."""
    writes = HeldWrites()
    monkeypatch.setattr(pg, "write_batch", writes)
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited(code)

    monkeypatch.setattr(writer.os, "_exit", fake_exit)
    monkeypatch.setattr(writer.logging, "shutdown", lambda: None)  # pytest's handlers stay open
    worker = _worker(with_fraud=False, pipeline_depth=DEPTH, batch_wait_ms=0.0)
    worker.write_conn = object()
    answers: dict[str, tuple[bool, Any]] = {}
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker._batcher()), loop.create_task(worker._writer())]
    worker.exits = exits
    for k in range(batches):
        payment = pay_command(k)
        worker.dispatch(
            "pay", payment, lambda ok, result, key=payment["payment_id"]: answers.__setitem__(key, (ok, result))
        )
        if k == 0:
            await until(lambda: len(writes.started) == 1, "the first write")
        elif k < DEPTH:
            # Decided and queued behind the write in progress: the batcher ran ahead.
            await until(lambda k=k: worker.write_queue.qsize() == k, f"batch {k} decided")
        else:
            await asyncio.sleep(0.05)  # no slot left: it stays in the intake queue
    return worker, writes, answers, tasks


async def stop(tasks: list[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_batches_commit_one_at_a_time_in_order_and_each_is_answered_after_its_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, writes, answers, tasks = await started_pipeline(monkeypatch, DEPTH + 1)
    try:
        # DEPTH batches in flight: one being written, DEPTH - 1 decided behind it; the next
        # payment waits in the intake queue for a slot. Nobody is answered yet.
        assert len(writes.started) == 1 and worker.write_queue.qsize() == DEPTH - 1
        assert len(worker.queue) == 1 and answers == {}
        for index in range(DEPTH + 1):
            assert writes.started[index] == [f"p_{index}"]  # written in the order decided
            assert list(answers) == [f"p_{k}" for k in range(index)]  # only the committed
            assert not worker.state.transfers[f"p_{index}"].committed
            writes.finish(index)
            await until(lambda index=index: f"p_{index}" in answers, f"the answer of batch {index}")
            assert worker.state.transfers[f"p_{index}"].committed
            if index < DEPTH:
                await until(lambda index=index: len(writes.started) == index + 2, f"write {index + 1}")
        assert all(ok and result["code"] == "OK" for ok, result in answers.values())
        assert writes.in_flight_max == 1  # never two commits at once
        assert worker.exits == []
    finally:
        await stop(tasks)


async def test_a_failed_commit_stops_before_any_later_batch_is_written_or_answered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker, writes, answers, tasks = await started_pipeline(monkeypatch, DEPTH)
    try:
        writes.finish(0)
        await until(lambda: len(writes.started) == 2, "the second write")
        assert list(answers) == ["p_0"]
        # The second batch's commit fails while two more are decided behind it.
        assert worker.write_queue.qsize() == DEPTH - 2
        with caplog.at_level(logging.ERROR, logger="quickpay.shard"):
            writes.finish(1, ConnectionResetError("the server went away"))
            await until(lambda: worker.exits, "the writer to stop the process")
        assert worker.exits == [70] and "stopping so that the restart reloads the truth" in caplog.text
        await asyncio.sleep(0.05)
        # Nothing after the failed batch was written or answered, and memory does not call
        # any of it committed: the restart reloads the truth (p_0 alone) from PostgreSQL.
        assert writes.started == [["p_0"], ["p_1"]] and writes.finished == [["p_0"]]
        assert list(answers) == ["p_0"]
        assert [worker.state.transfers[f"p_{k}"].committed for k in range(DEPTH)] == [True, False, False, False]
        assert worker.committed_batches == 1
    finally:
        await stop(tasks)


def test_the_depth_is_a_bounded_setting_with_the_old_default() -> None:
    def config(**changes: Any) -> WorkerConfig:
        return WorkerConfig(shard=0, shard_count=1, dsn="", listen="", peers={}, **changes)

    assert config().pipeline_depth == PIPELINE_DEPTH_DEFAULT == 2
    for bad in (0, PIPELINE_DEPTH_MAX + 1):
        with pytest.raises(SystemExit, match="--pipeline-depth must be between 1 and"):
            config(pipeline_depth=bad).validate()
    config(pipeline_depth=1).validate()
    config(pipeline_depth=PIPELINE_DEPTH_MAX).validate()
