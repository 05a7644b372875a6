"""Shard CPU per batched payment (issue 19): N pay_many commands of 1,000 items driven through the
real intake (ShardWorker.dispatch), the real batcher task (prefetch skipped by an id filter,
decisions, storable checks) and the reply's shard-protocol encode (ledger/protocol.encode_frames),
with the fraud filter on (fraud/default.rules, wired as decision_microbench wires it). Only the
PostgreSQL write is left out: a stand-in writer marks each batch committed and answers it, as
ledger/writer.py does after its commit. No sockets.

    python loadtest/pay_many_microbench.py [--commands N] [--rounds R] [--no-fraud]

Prints CPU µs per payment (time.process_time), best of R rounds. The machine is shared: run the
old and the new checkout one after the other, several times, and compare the best figures.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

PARTNER, SETTLEMENT, NOW_MS = "ptn", "set_ptn", 1_780_000_000_000
AGREEMENTS, ITEMS = 2_000, 1_000


def _worker(with_fraud: bool, **config: Any) -> Any:
    """A shard worker in memory: 2,000 authorised agreements of partner PARTNER, each over its
    own funded account, the clock at NOW_MS, and (with_fraud) fraud/default.rules wired in;
    `config`: more WorkerConfig fields (tests: pipeline_depth)."""
    from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
    from kernel.slots import SlotMap
    from ledger.agreements import PeriodicLimit
    from ledger.idfilter import IdFilter
    from ledger.model import Account, Agreement
    from ledger.worker import ShardWorker, WorkerConfig

    worker = ShardWorker(
        WorkerConfig(
            shard=0,
            shard_count=1,
            dsn="unused",
            listen="unix:/nonexistent",
            peers={},
            cluster_secret=b"b" * 32,
            **config,
        ),
        clock_ms=lambda: NOW_MS,
    )
    worker.id_filter = IdFilter()  # every id is new: the prefetch needs no PostgreSQL
    worker.held_slot_map = SlotMap.initial(1)  # as start-up loads it: the intake's slot guard runs
    state = worker.state
    if with_fraud:
        import fraud
        from ledger.fraud_port import facts_of_payment, make_facts

        state.fraud = fraud.FraudFilter(fraud.load_rules_file(fraud.default_rules_path()))
        state.make_facts = make_facts
        state.payment_facts = facts_of_payment
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account(SETTLEMENT, "settlement", "CNY", 0, False, PARTNER))
    for i in range(AGREEMENTS):
        state.load_account(Account(f"acc_{i}", "customer", "CNY", 10**15, False))
        state.load_agreement(
            Agreement(
                f"agr_{i}",
                PARTNER,
                f"acc_{i}",
                "CNY",
                10**9,
                [PeriodicLimit("Day", "Calendar", 10**14)],
                "Authorised",
                0,
            )
        )
    return worker


async def _writer(worker: Any) -> None:
    """ledger/writer.py without the PostgreSQL write."""
    while True:
        ws, replies, _commands, _started, _decided = await worker.write_queue.get()
        for transfer in ws.transfers:
            transfer.committed = True
        accounts = worker.state.accounts
        for account_id, delta_minor in ws.deltas.items():
            accounts[account_id].committed_balance_minor += delta_minor
        worker.pipeline_slots.release()
        for reply, (ok, result) in replies:
            reply(ok, result)


def pay_command(k: int) -> dict[str, Any]:
    """The k-th payment of these microbenchmarks: agreement k % AGREEMENTS to the settlement."""
    return {
        "payment_id": f"p_{k}",
        "partner_id": PARTNER,
        "agreement_id": f"agr_{k % AGREEMENTS}",
        "amount_minor": 100 + k % 7,
        "currency": "CNY",
        "creditor_account": SETTLEMENT,
        "creditor_shard": 0,
        "reference": f"order {k}",
        "body_hash": "0" * 64,
    }


def _commands(first: int, count: int) -> list[list[dict[str, Any]]]:
    return [[pay_command(k) for k in range(first + c * ITEMS, first + (c + 1) * ITEMS)] for c in range(count)]


async def _round(commands_n: int, with_fraud: bool) -> float:
    from ledger.protocol import encode_frames

    worker = _worker(with_fraud)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker._batcher()), loop.create_task(_writer(worker))]
    commands = _commands(0, commands_n)
    done = asyncio.Event()
    answered = [0]
    payments_ok = [0]

    def reply_for(request_id: int) -> Any:
        def reply(ok: bool, result: Any) -> None:
            frames, failures = encode_frames([(request_id, ok, result)])
            assert ok and not failures and frames, result
            payments_ok[0] += sum(1 for item_ok, item in result if item_ok and item["code"] == "OK")
            answered[0] += 1
            if answered[0] == commands_n:
                done.set()

        return reply

    started = time.process_time()
    for request_id, items in enumerate(commands):
        worker.dispatch("pay_many", items, reply_for(request_id))
        if request_id % 4 == 3:
            await asyncio.sleep(0)  # let the batcher take what has arrived, as a loaded shard does
    await done.wait()
    spent_s = time.process_time() - started
    for task in tasks:
        task.cancel()
    assert payments_ok[0] == commands_n * ITEMS, payments_ok[0]
    return spent_s / (commands_n * ITEMS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-fraud", action="store_true")
    args = parser.parse_args()
    best = min(asyncio.run(_round(args.commands, not args.no_fraud)) for _ in range(args.rounds))
    label = "" if args.no_fraud else ", fraud filter on"
    print(f"{best:.1f} us CPU per payment (best of {args.rounds}, {args.commands} x {ITEMS} items{label})")


if __name__ == "__main__":
    main()
