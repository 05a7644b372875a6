"""`quickpay bench --history-transfers N`: the same phase on a ledger that already holds a
long history, bulk-loaded into PostgreSQL (not through the API), so that what grows with
the data shows: restart to ready, every process's RSS, the id filter, and TPS against the
fresh ledger of the same run (issue 19, "scale with history").

The history is N payments over M customer accounts of its own, in a ring: payment k debits
account k mod M and credits account k+1 mod M, 1.00 each, so with N a multiple of M every
account is debited and credited as often: each ends at a balance of 0, every shard's
balances still sum to zero, and the conservation audit holds. The rows are spread over the
HISTORY_DAYS before the load (their created_at_ms), under a partner and agreement that do
not exist (no limit window, reconciliation file or agreement spend reads them), each with
its own id, seq, reference and body hash: a journal row like any committed payment's.
Each shard gets its share of the rows and accounts (an account lives where its id routes).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

__all__ = [
    "HISTORY_ACCOUNTS_MAX",
    "HISTORY_CHUNK_ROWS",
    "HISTORY_DAYS",
    "HISTORY_TRANSFERS_MAX",
    "history_account_ids",
    "history_rows",
    "load_history",
]

HISTORY_TRANSFERS_MAX = 100_000_000
HISTORY_ACCOUNTS_MAX = 10_000_000
HISTORY_CHUNK_ROWS = 50_000  # rows per COPY (bounded memory)
HISTORY_DAYS = 30
HISTORY_PARTNER = "ptn_history"
HISTORY_AGREEMENT = "agr_history"
_MS_PER_DAY = 86_400_000


def history_account_ids(count: int, shard: int, shard_count: int) -> list[str]:
    """`count` account ids that route to `shard` (kernel.ids.shard_of), the same every run."""
    from kernel.ids import shard_of

    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"acc_hist{shard:02d}{n:012d}"
        n += 1
        if shard_of(candidate, shard_count) == shard:
            found.append(candidate)
    return found


def history_rows(
    accounts: list[str], first: int, count: int, total: int, first_seq: int, now_ms: int, shard: int
) -> list[tuple[Any, ...]]:
    """Rows first .. first+count-1 of a ring of `total` payments over `accounts`, in the
    column order of ledger.pg.TRANSFER_COLUMNS."""
    span_ms = HISTORY_DAYS * _MS_PER_DAY
    start_ms = now_ms - span_ms - _MS_PER_DAY  # all before yesterday: no window of today holds one
    rows: list[tuple[Any, ...]] = []
    m = len(accounts)
    for k in range(first, first + count):
        payment_id = f"pay_hist{shard:02d}{k:024d}_{shard}"
        rows.append(
            (
                payment_id,
                first_seq + k,
                "payment",
                accounts[k % m],
                accounts[(k + 1) % m],
                100,
                "CNY",
                "AcceptedSettlementCompleted",
                start_ms + (span_ms * k) // max(1, total),
                HISTORY_PARTNER,
                HISTORY_AGREEMENT,
                f"history {k}",
                accounts[(k + 1) % m],
                [],
                None,
                hashlib.blake2b(payment_id.encode(), digest_size=16).hexdigest(),
                None,
                None,
                0,
                None,
            )
        )
    return rows


async def _load_shard(dsn: str, shard: int, shard_count: int, transfers: int, accounts: int, now_ms: int) -> int:
    import asyncpg

    from ledger.pg import TRANSFER_COLUMNS

    conn = await asyncpg.connect(dsn)
    try:
        ids = history_account_ids(accounts, shard, shard_count)
        for at in range(0, len(ids), HISTORY_CHUNK_ROWS):
            await conn.copy_records_to_table(
                "accounts",
                columns=("id", "kind", "currency", "balance_minor", "allow_negative", "partner_id", "created_at_ms"),
                records=[(a, "customer", "CNY", 0, False, None, now_ms) for a in ids[at : at + HISTORY_CHUNK_ROWS]],
            )
        first_seq = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers")) + 1
        for at in range(0, transfers, HISTORY_CHUNK_ROWS):
            count = min(HISTORY_CHUNK_ROWS, transfers - at)
            await conn.copy_records_to_table(
                "transfers",
                columns=TRANSFER_COLUMNS,
                records=history_rows(ids, at, count, transfers, first_seq, now_ms, shard),
            )
        await conn.execute("ANALYZE transfers")
        await conn.execute("ANALYZE accounts")
        return transfers
    finally:
        await conn.close()


def load_history(dsns: list[str], transfers: int, accounts: int, now_ms: int | None = None) -> dict[str, Any]:
    """Bulk-load `transfers` payments over `accounts` accounts, split over the shards'
    databases, while the stack is idle (it must restart to see them: its memory holds the
    accounts and the next seq it had). Returns what was loaded and how long it took."""
    shard_count = len(dsns)
    if not 1 <= transfers <= HISTORY_TRANSFERS_MAX or not 2 <= accounts <= HISTORY_ACCOUNTS_MAX:
        raise ValueError(f"history: 1-{HISTORY_TRANSFERS_MAX} transfers over 2-{HISTORY_ACCOUNTS_MAX} accounts")
    if transfers % (accounts * shard_count) and transfers % accounts:
        raise ValueError("history: the transfers must be a multiple of the accounts (each ring balances)")
    per_shard_t, per_shard_a = transfers // shard_count, accounts // shard_count
    if per_shard_a < 2 or per_shard_t % per_shard_a:
        raise ValueError("history: each shard's transfers must be a multiple of its accounts (2 or more)")
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    started = time.monotonic()

    async def all_shards() -> list[int]:
        return list(
            await asyncio.gather(
                *(_load_shard(dsn, s, shard_count, per_shard_t, per_shard_a, now_ms) for s, dsn in enumerate(dsns))
            )
        )

    loaded = asyncio.run(all_shards())
    seconds = time.monotonic() - started
    return {
        "transfers": sum(loaded),
        "accounts": per_shard_a * shard_count,
        "load_s": round(seconds, 1),
        "rows_per_s": round(sum(loaded) / seconds) if seconds > 0 else None,
        "method": "asyncpg copy_records_to_table (binary COPY) into each shard's database, indexes in place, then ANALYZE",
    }
