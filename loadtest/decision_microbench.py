"""Microseconds per payment in the shard's pure decision (ShardState.execute_payment, no fraud
filter, no I/O): 20,000 authorised agreements, 200,000 payments in batches of 1,000, best of 5.

    python loadtest/decision_microbench.py CHECKOUT [--fraud]

With --fraud the shard runs that checkout's fraud filter with its shipped default rules
(fraud/default.rules), wired as the worker wires it (ledger/fraud_port.make_facts), and each
run's payments are two days after the previous run's, so every run starts with empty windows.
CHECKOUT is the root of a quickpay checkout (this one, or a `git worktree` of an older commit),
so a change to the decision can be measured before and after on the same machine. It runs
that checkout's ledger code (asserting it did) with the agreement shape that checkout has.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def main(root: str, with_fraud: bool = False) -> float:
    sys.path.insert(0, root)
    # An editable install's import hook would otherwise win over sys.path: drop it.
    sys.meta_path[:] = [
        f
        for f in sys.meta_path
        if "editable" not in type(f).__module__.lower() and "editable" not in getattr(f, "__name__", "").lower()
    ]
    import ledger.state
    from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
    from ledger.model import Account, Agreement, PaymentCommand
    from ledger.state import ShardState, WriteSet

    assert os.path.realpath(ledger.state.__file__).startswith(os.path.realpath(root)), ledger.state.__file__

    def mandate(i: int) -> Any:
        if os.path.exists(os.path.join(root, "ledger", "agreements.py")):
            from ledger.agreements import PeriodicLimit

            return Agreement(
                f"agr_{i}", "ptn", f"acc_{i}", "CNY", 10**9, [PeriodicLimit("Day", "Calendar", 10**12)], "Authorised", 0
            )
        return Agreement(f"agr_{i}", "ptn", f"acc_{i}", "CNY", 10**9, 10**12, "active", 0)  # type: ignore[arg-type]

    agreements = 20_000
    state = ShardState(0, 1, transfer_cache_max=10**7)
    if with_fraud:
        import fraud
        from ledger.fraud_port import make_facts

        assert os.path.realpath(fraud.__file__).startswith(os.path.realpath(root)), fraud.__file__
        state.fraud = fraud.FraudFilter(fraud.load_rules_file(fraud.default_rules_path()))
        state.make_facts = make_facts
        if hasattr(state, "payment_facts"):
            from ledger.fraud_port import facts_of_payment

            state.payment_facts = facts_of_payment
    run_gap_ms = 2 * 86_400_000 if with_fraud else 0
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account("set_ptn", "settlement", "CNY", 0, False, "ptn"))
    for i in range(agreements):
        state.load_account(Account(f"acc_{i}", "customer", "CNY", 10**12, False))
        state.load_agreement(mandate(i))
    probe_code, probe = state.execute_payment(
        PaymentCommand("probe", "ptn", "agr_0", 100, "CNY", "set_ptn", 0, "r", "h", 1_800_000_000_000), WriteSet()
    )
    assert probe_code == "OK" and probe is not None and probe.status == "AcceptedSettlementCompleted", probe_code
    best_s = float("inf")
    for run in range(5):
        commands = [
            PaymentCommand(
                f"p{run}_{j}",
                "ptn",
                f"agr_{j % agreements}",
                100,
                "CNY",
                "set_ptn",
                0,
                "r",
                "h",
                1_800_000_000_000 + (run + 1) * run_gap_ms + j,
            )
            for j in range(200_000)
        ]
        started = time.perf_counter()
        for start in range(0, len(commands), 1_000):
            ws = WriteSet()
            for command in commands[start : start + 1_000]:
                state.execute_payment(command, ws)
            for transfer in ws.transfers:
                transfer.committed = True
        best_s = min(best_s, time.perf_counter() - started)
    return best_s / 200_000 * 1e6


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--fraud"):
        raise SystemExit(__doc__)
    fraud_on = len(sys.argv) == 3
    label = " with the fraud filter (default rules)" if fraud_on else ""
    print(f"{sys.argv[1]}: {main(sys.argv[1], fraud_on):.2f} us/payment{label} (best of 5)")
