"""Microseconds per payment through the shard batcher's atomic decision (ShardWorker._decide_one:
undo log, round-trip checks of ledger/storable.py) against the bare decider, on this checkout:
2,000 authorised agreements, 100,000 payments in batches of 1,000, no fraud filter, no I/O.

    python loadtest/batcher_microbench.py

Prints both figures for two alternating rounds (the machine is shared: read the pair, not one).
"""

from __future__ import annotations

import time

from loadtest.pay_many_microbench import NOW_MS, _worker, pay_command

PAYMENTS, BATCH = 100_000, 1_000


def run(mode: str) -> float:
    from ledger import worker as worker_module
    from ledger.state import WriteSet

    worker = _worker(with_fraud=False)
    commands = [pay_command(k) for k in range(PAYMENTS)]
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
