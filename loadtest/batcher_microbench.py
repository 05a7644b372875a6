"""Microseconds per payment through the shard batcher's atomic decision (ShardWorker._decide_one:
undo log, round-trip checks of ledger/storable.py) against the bare decider, on this checkout:
2,000 authorised agreements, 100,000 payments in batches of 1,000, no fraud filter, no I/O.

    python loadtest/batcher_microbench.py

Prints both figures for two alternating rounds (the machine is shared: read the pair, not one).
"""

from __future__ import annotations

import time
from typing import Any

PARTNER, SETTLEMENT, NOW_MS = "ptn", "set_ptn", 1_780_000_000_000
AGREEMENTS, PAYMENTS, BATCH = 2_000, 100_000, 1_000


def _worker() -> Any:
    from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
    from ledger.agreements import PeriodicLimit
    from ledger.model import Account, Agreement
    from ledger.worker import ShardWorker, WorkerConfig

    worker = ShardWorker(
        WorkerConfig(
            shard=0, shard_count=1, dsn="unused", listen="unix:/nonexistent", peers={}, cluster_secret=b"b" * 32
        ),
        clock_ms=lambda: NOW_MS,
    )
    state = worker.state
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


def run(mode: str) -> float:
    from ledger import worker as worker_module
    from ledger.state import WriteSet

    worker = _worker()
    commands = [
        {
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
        for k in range(PAYMENTS)
    ]
    decide = worker_module._DECIDERS["pay"]
    started = time.perf_counter()
    for first in range(0, PAYMENTS, BATCH):
        ws = WriteSet()
        for args in commands[first : first + BATCH]:
            if mode == "bare":
                decide(worker, args, ws, NOW_MS)
            else:
                worker._decide_one("pay", args, ws, NOW_MS)
        for transfer in ws.transfers:
            transfer.committed = True
    return (time.perf_counter() - started) / PAYMENTS * 1e6


if __name__ == "__main__":
    for _ in range(2):
        for mode in ("bare", "atomic"):
            print(f"{mode}: {run(mode):.2f} us/payment")
