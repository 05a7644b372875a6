"""PostgreSQL adapter for one shard: schema, start-up load, prefetch, batch write, reads.

Only this module and the audit speak SQL. The batch write is one transaction. A small
group commit of payments is one statement (its transfers as one JSON document). A large one
(COPY_ROWS_MIN rows or more), or one that also writes accounts, agreements, partners or
settings, is a binary COPY of the new rows, then one set-based UPDATE of aggregated balance
deltas.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any, Final

import asyncpg
import msgspec

from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
from kernel.money import CURRENCY_EXPONENTS

from .agreements import period_window
from .model import Account, Agreement, CreditLeg, Transfer, invariant
from .rows import QUARANTINE, RowError, decode_agreement, decode_agreement_event, decode_outbox, decode_transfer
from .state import PARTNER_CUTOFF_FIELDS, ShardState, WriteSet

__all__ = [
    "ADVISORY_LOCK_BASE",
    "SCHEMA_SQL",
    "SELECT_TRANSFER",
    "SYSTEM_CURRENCY",
    "TRANSFER_COLUMNS",
    "ensure_schema",
    "fetch_transfer",
    "list_account_transfers",
    "load_outbox",
    "load_state",
    "prefetch_transfers",
    "row_to_transfer",
    "write_batch",
]

ADVISORY_LOCK_BASE = 0x5150_0000
# Bumped when a table changes shape; a database made by an older quickpay is refused
# with a message rather than half-migrated (2: agreements with consent and periodic
# limits, refunds).
SCHEMA_VERSION = "2"
SCHEMA_SQL = resources.files("ledger").joinpath("schema.sql").read_text()
SYSTEM_CURRENCY = "CNY"

TRANSFER_COLUMNS = (
    "id",
    "seq",
    "kind",
    "debit_account",
    "credit_account",
    "amount_minor",
    "currency",
    "status",
    "created_at_ms",
    "partner_id",
    "agreement_id",
    "reference",
    "creditor_account",
    "reasons",
    "fraud",
    "body_hash",
    "device_id",
    "ip",
    "refunded_minor",
    "details",
)
SELECT_TRANSFER = _SELECT_TRANSFER = "SELECT " + ", ".join(TRANSFER_COLUMNS) + " FROM transfers"


async def ensure_schema(conn: asyncpg.Connection, shard: int, shard_count: int) -> None:
    """Create tables and system stripes; refuse a database made for another topology."""
    await conn.execute(SCHEMA_SQL)
    await conn.executemany(
        "INSERT INTO currencies (code, exponent) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        list(CURRENCY_EXPONENTS.items()),
    )
    rows = {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM meta")}
    if not rows:
        await conn.executemany(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            [("shard", str(shard)), ("shard_count", str(shard_count)), ("schema_version", SCHEMA_VERSION)],
        )
    elif rows.get("schema_version") != SCHEMA_VERSION:
        raise SystemExit(
            f"database holds quickpay schema version {rows.get('schema_version', '1')}, this quickpay "
            f"needs {SCHEMA_VERSION} (agreements with consent and periodic limits, refunds); it is not "
            "migrated in place: start from a new state directory (or database)"
        )
    elif rows.get("shard") != str(shard) or rows.get("shard_count") != str(shard_count):
        raise SystemExit(
            f"database holds shard {rows.get('shard')} of {rows.get('shard_count')}, "
            f"but this worker was started as shard {shard} of {shard_count}; "
            "use the same --shards as when the state was created"
        )
    for account_id, kind in ((FUNDING_ACCOUNT, "funding"), (CLEARING_ACCOUNT, "clearing")):
        await conn.execute(
            "INSERT INTO accounts (id, kind, currency, balance_minor, allow_negative, created_at_ms)"
            " VALUES ($1, $2, $3, 0, true, 0) ON CONFLICT DO NOTHING",
            account_id,
            kind,
            SYSTEM_CURRENCY,
        )


def row_to_transfer(row: Any) -> Transfer:
    """The journal row as a Transfer; RowError when a value cannot be read (ledger/rows.py)."""
    return decode_transfer(row)


ACCOUNT_LOAD_COLUMNS: Final = "id, kind, currency, balance_minor, allow_negative, partner_id, created_at_ms"


def account_from_row(r: Any) -> Account:
    """An accounts row (ACCOUNT_LOAD_COLUMNS) as the in-memory Account, its balance as loaded
    also its last stored balance (what the writer compares against)."""
    return Account(
        r["id"],
        r["kind"],
        r["currency"],
        r["balance_minor"],
        r["allow_negative"],
        r["partner_id"],
        r["created_at_ms"],
        r["balance_minor"],
    )


async def load_state(conn: asyncpg.Connection, state: ShardState, now_ms: int) -> None:
    """Load balances, agreements and today's agreement spend into memory."""
    for r in await conn.fetch(f"SELECT {ACCOUNT_LOAD_COLUMNS} FROM accounts"):
        state.load_account(account_from_row(r))
    # Partner records (few: one per wallet app), so the token endpoint and the cut-off
    # decisions (ShardState.partner_action) read them from memory.
    for r in await conn.fetch("SELECT * FROM partners"):
        state.partners_cache[r["id"]] = dict(r)
    # A row that cannot be read (or whose limit windows cannot be placed at now_ms) is
    # quarantined: not loaded, so nothing can pay under it, and the shard starts anyway.
    for r in await conn.fetch("SELECT * FROM agreements ORDER BY created_at_ms, id"):
        try:
            agreement = decode_agreement(r, now_ms)
        except RowError as exc:
            QUARANTINE.skip("shard_load", exc, state.shard)
            continue
        state.load_agreement(agreement)
    await load_spend(conn, state, now_ms)
    state.next_seq = (await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers")) + 1
    invariant(state.total_balance_minor() == 0, "shard balances do not sum to zero at load")


def row_to_agreement(r: Any, at_ms: int | None = None) -> Agreement:
    """The agreement row; RowError when a value cannot be read (ledger/rows.py)."""
    return decode_agreement(r, at_ms)


async def load_spend(conn: asyncpg.Connection, state: ShardState, now_ms: int) -> None:
    """Place every periodic limit on its window holding now_ms and sum what accepted
    payments under the agreement took from it. One query: the windows travel as arrays
    and the journal is read from the earliest window start on (the BRIN index on
    created_at_ms), so start-up reads as much journal as the longest period configured."""
    ids: list[str] = []
    indexes: list[int] = []
    starts: list[int] = []
    for agreement in state.agreements.values():
        for index, limit in enumerate(agreement.periodic_limits):
            limit.window_start_ms, limit.window_end_ms = period_window(
                limit.period, limit.alignment, agreement.anchor_ms, now_ms
            )
            limit.spent_minor = 0
            ids.append(agreement.id)
            indexes.append(index)
            starts.append(limit.window_start_ms)
    if not ids:
        return
    rows = await conn.fetch(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]) AS w(agreement_id, idx, start_ms))"
        " SELECT w.agreement_id, w.idx, sum(t.amount_minor)::bigint AS spent"
        " FROM w JOIN transfers t ON t.agreement_id = w.agreement_id AND t.created_at_ms >= w.start_ms"
        " WHERE t.kind = 'payment' AND t.status <> 'Rejected' AND t.created_at_ms >= $4"
        " GROUP BY w.agreement_id, w.idx",
        ids,
        indexes,
        starts,
        min(starts),
    )
    for r in rows:
        state.agreements[r["agreement_id"]].periodic_limits[r["idx"]].spent_minor = r["spent"]


async def fetch_agreement_events(conn: asyncpg.Connection, agreement_id: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT seq, from_status, to_status, actor, at_ms FROM agreement_events WHERE agreement_id = $1"
        " ORDER BY seq DESC LIMIT $2",
        agreement_id,
        limit,
    )
    events = QUARANTINE.decode_all("shard_read", reversed(rows), decode_agreement_event)
    return [{k: v for k, v in event.items() if k != "seq"} for event in events]


async def load_outbox(conn: asyncpg.Connection) -> list[tuple[CreditLeg, int]]:
    rows = await conn.fetch(
        "SELECT o.transfer_id, o.target_shard, o.creditor_account, o.amount_minor, o.currency,"
        " o.created_at_ms FROM outbox o ORDER BY o.created_at_ms"
    )
    legs = QUARANTINE.decode_all("shard_load", rows, decode_outbox)
    return [
        (
            CreditLeg(
                r["transfer_id"], -1, r["creditor_account"], r["amount_minor"], r["currency"], r["created_at_ms"]
            ),
            r["target_shard"],
        )
        for r in legs
    ]


async def prefetch_transfers(
    conn: asyncpg.Connection, ids: list[str], unreadable: set[str] | None = None, reader: str = "prefetch"
) -> list[Transfer]:
    """The stored transfers among ids. One that cannot be read is quarantined and its id
    added to `unreadable` (it exists: the batcher must not decide it as new)."""
    rows = await conn.fetch(_SELECT_TRANSFER + " WHERE id = ANY($1::text[])", ids)
    found = []
    for r in rows:
        try:
            found.append(row_to_transfer(r))
        except RowError as exc:
            QUARANTINE.skip(reader, exc)
            if unreadable is not None:
                unreadable.add(r["id"])
    return found


async def fetch_transfer(conn: asyncpg.Connection, transfer_id: str) -> Transfer | None:
    """The transfer, or None. One that cannot be read is quarantined and RowError raised:
    the caller answers an error, not "no such payment" (a partner could pay again)."""
    row = await conn.fetchrow(_SELECT_TRANSFER + " WHERE id = $1", transfer_id)
    if not row:
        return None
    try:
        return row_to_transfer(row)
    except RowError as exc:
        QUARANTINE.skip("shard_read", exc)
        raise


async def partner_day_transfers(
    conn: asyncpg.Connection, partner_id: str, from_ms: int, to_ms: int, after: tuple[int, int] | None, limit: int
) -> list[tuple[list[int], dict[str, Any] | None]]:
    """([created_at_ms, seq], wire) of the partner's accepted payments and succeeded refunds
    recorded in [from_ms, to_ms), in (created_at_ms, seq) order after `after` (the key of the
    last row of the previous page; None: from the start): a reconciliation file's rows, page by
    page. Rejected rows are not in a file and are not read: one range of the partial index
    transfers_partner_recon per page, at most `limit` rows. A row that cannot be read is
    quarantined and answered as (key, None): the file says so."""
    after_ms, after_seq = after if after is not None else (from_ms - 1, 0)
    rows = await conn.fetch(
        _SELECT_TRANSFER + " WHERE partner_id = $1 AND kind IN ('payment', 'refund') AND status <> 'Rejected'"
        " AND created_at_ms >= $2 AND created_at_ms < $3 AND (created_at_ms, seq) > ($4::bigint, $5::bigint)"
        " ORDER BY created_at_ms, seq LIMIT $6",
        partner_id,
        from_ms,
        to_ms,
        after_ms,
        after_seq,
        limit,
    )
    found: list[tuple[list[int], dict[str, Any] | None]] = []
    for r in rows:
        key = [r["created_at_ms"], r["seq"]]
        try:
            found.append((key, row_to_transfer(r).to_wire()))
        except RowError as exc:
            QUARANTINE.skip("recon", exc)
            found.append((key, None))
    return found


# A page that lost rows to the quarantine is filled from further down the journal, at most
# this many more queries (so a page stays bounded work, and still ends where rows end).
REFILL_QUERIES_MAX = 4


async def list_account_transfers(
    conn: asyncpg.Connection, account_id: str, before_seq: int, limit: int
) -> list[Transfer]:
    """Money-moving rows touching the account, newest first, with seq < before_seq. Rows
    that cannot be read are quarantined and the page filled from below them.

    Each side is one range of its partial index (transfers_debit_moved/_credit_moved), never
    a walk down the journal's seq index filtering on the account: the planner misjudges how
    many of an account's rows are not Rejected (a partner's rejected payments are what makes
    an account hot), so the account is a range (>= and <= it), which keeps it in the sort
    order only the (account, seq) index provides."""
    found: list[Transfer] = []
    for _ in range(1 + REFILL_QUERIES_MAX):
        want = limit - len(found)
        rows = await conn.fetch(
            "(" + _SELECT_TRANSFER + " WHERE debit_account >= $1 AND debit_account <= $1 AND seq < $2"
            " AND status <> 'Rejected' ORDER BY debit_account DESC, seq DESC LIMIT $3) UNION ALL ("
            + _SELECT_TRANSFER
            + " WHERE credit_account >= $1 AND credit_account <= $1 AND seq < $2"
            " AND status <> 'Rejected' ORDER BY credit_account DESC, seq DESC LIMIT $3) ORDER BY seq DESC LIMIT $3",
            account_id,
            before_seq,
            want,
        )
        decoded = QUARANTINE.decode_all("shard_read", rows, row_to_transfer)
        found += decoded
        if len(decoded) == len(rows) or len(rows) < want:
            break
        before_seq = rows[-1]["seq"]
    return found


def transfer_record(t: Transfer) -> tuple[Any, ...]:
    return (
        t.id,
        t.seq,
        t.kind,
        t.debit_account,
        t.credit_account,
        t.amount_minor,
        t.currency,
        t.status,
        t.created_at_ms,
        t.partner_id,
        t.agreement_id,
        t.reference,
        t.creditor_account,
        list(t.reasons),
        json.dumps(t.fraud) if t.fraud else None,
        t.body_hash,
        t.device_id,
        t.ip,
        t.refunded_minor,
        json.dumps(t.details) if t.details else None,
    )


_FAST_INSERT = (
    # The batch's transfers travel as ONE JSON array (msgspec encodes the Transfer
    # dataclasses in C) and PostgreSQL expands it; binding eighteen parameter arrays
    # cost the shard worker more CPU than deciding the payments.
    "WITH t AS (INSERT INTO transfers (" + ", ".join(TRANSFER_COLUMNS) + ")"
    " SELECT " + ", ".join(TRANSFER_COLUMNS) + " FROM json_populate_recordset(NULL::transfers, $1::json)"
    " RETURNING 1),"
    " d AS (UPDATE accounts a SET balance_minor = a.balance_minor + v.delta"
    " FROM unnest($2::text[], $3::bigint[]) AS v(id, delta) WHERE a.id = v.id RETURNING 1)"
)
_FAST_OUTBOX = (
    ", o AS (INSERT INTO outbox (transfer_id, target_shard, creditor_account, amount_minor, currency,"
    " created_at_ms) SELECT * FROM unnest($4::text[], $5::int[], $6::text[], $7::bigint[],"
    " $8::text[], $9::bigint[]) RETURNING 1)"
)
# The statement is its own transaction, so the balance update's row count is checked inside
# it: a delta for an account that is not there divides by zero, which aborts the statement
# and with it the rows (a check in Python after it would come after the commit, and the
# restart would then find balances that do not sum to zero). No other division is in it.
_FAST_COUNTS = " SELECT (SELECT count(*) FROM t), 1 / ((SELECT count(*) FROM d) = cardinality($2::text[]))::int"
_FAST_SQL = _FAST_INSERT + _FAST_COUNTS
_FAST_SQL_OUTBOX = _FAST_INSERT + _FAST_OUTBOX + _FAST_COUNTS
_json_encode = msgspec.json.Encoder().encode


async def _write_fast(conn: asyncpg.Connection, ws: WriteSet) -> None:
    """Transfers, balance deltas and outbox rows in ONE statement: one round trip, atomic.

    A single statement is its own transaction, so this is still one commit per
    batch, with three fewer round trips than BEGIN / COPY / UPDATE / COMMIT.
    """
    ts = ws.transfers
    params: list[Any] = [_json_encode(ts).decode(), list(ws.deltas), list(ws.deltas.values())]
    sql = _FAST_SQL
    if ws.outbox:
        legs = ws.outbox
        params += [
            [leg.transfer_id for leg in legs],
            [ws.targets[leg.transfer_id] for leg in legs],
            [leg.creditor_account for leg in legs],
            [leg.amount_minor for leg in legs],
            [leg.currency for leg in legs],
            [leg.at_ms for leg in legs],
        ]
        sql = _FAST_SQL_OUTBOX
    try:
        inserted, _ = await conn.fetchrow(sql, *params)
    except asyncpg.DivisionByZeroError:
        invariant(False, f"balance update touched fewer than the batch's {len(ws.deltas)} accounts (rolled back)")
        raise
    invariant(inserted == len(ts), f"batch inserted {inserted} of {len(ts)} transfers")


# From this many transfers on, a group commit's rows go by binary COPY inside a transaction
# (BEGIN, COPY, UPDATE, COMMIT: four round trips) rather than as one JSON statement. Measured
# with loadtest/pg_write_microbench.py (BENCHMARKS.md, lever 3): at 500-1,000 rows COPY costs
# up to 2 µs less per row (shard + PostgreSQL), at 300 the two are even, and below 100 the three
# extra round trips cost more than PostgreSQL saves by not parsing JSON (at 1 row, twice as much).
COPY_ROWS_MIN = 256


async def write_batch(conn: asyncpg.Connection, ws: WriteSet) -> None:
    """Write one decided batch in one transaction (the group commit)."""
    ws.check_balanced()
    if not ws.needs_transaction() and len(ws.transfers) < COPY_ROWS_MIN:
        await _write_fast(conn, ws)
        return
    async with conn.transaction():
        if ws.accounts:
            await conn.copy_records_to_table(
                "accounts",
                columns=("id", "kind", "currency", "balance_minor", "allow_negative", "partner_id", "created_at_ms"),
                records=[
                    (a.id, a.kind, a.currency, 0, a.allow_negative, a.partner_id, a.created_at_ms) for a in ws.accounts
                ],
            )
        if ws.partners:
            await conn.executemany(
                "INSERT INTO partners (id, name, secret_sha256, settlement_account, created_at_ms)"
                " VALUES ($1, $2, $3, $4, $5)",
                [
                    (p["id"], p["name"], p["secret_sha256"], p["settlement_account"], p["created_at_ms"])
                    for p in ws.partners
                ],
            )
        if ws.partner_updates:
            # After the INSERT: a partner created and cut off in one batch is written as it ends.
            await conn.executemany(
                "UPDATE partners SET secret_sha256 = $2, previous_secret_sha256 = $3, previous_secret_until_ms = $4,"
                " disabled_at_ms = $5, tokens_valid_after_ms = $6 WHERE id = $1",
                [
                    (partner_id, *(fields[name] for name in PARTNER_CUTOFF_FIELDS))
                    for partner_id, fields in ws.partner_updates.items()
                ],
            )
        if ws.partner_events:
            await conn.copy_records_to_table(
                "partner_events",
                columns=("partner_id", "action", "actor", "at_ms", "details"),
                records=[partner_event_record(e) for e in ws.partner_events],
            )
        new_agreements = set()
        if ws.agreements:
            # Rows as they are after the batch (a transition later in the same batch included).
            await conn.copy_records_to_table(
                "agreements", columns=AGREEMENT_COLUMNS, records=[agreement_record(g) for g in ws.agreements]
            )
            new_agreements = {g.id for g in ws.agreements}
        updates = [g for g in ws.agreement_updates.values() if g.id not in new_agreements]
        if updates:
            await conn.execute(
                "UPDATE agreements a SET status = v.status, status_updated_at_ms = v.at_ms"
                " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(id, status, at_ms) WHERE a.id = v.id",
                [g.id for g in updates],
                [g.status for g in updates],
                [g.status_updated_at_ms for g in updates],
            )
        if ws.agreement_events:
            await conn.copy_records_to_table(
                "agreement_events",
                columns=("agreement_id", "from_status", "to_status", "actor", "at_ms"),
                records=ws.agreement_events,
            )
        if ws.transfers:
            await conn.copy_records_to_table(
                "transfers", columns=TRANSFER_COLUMNS, records=[transfer_record(t) for t in ws.transfers]
            )
        if ws.deltas:
            ids = list(ws.deltas)
            updated = await conn.fetchval(
                "WITH d AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS d(id, delta)),"
                " u AS (UPDATE accounts a SET balance_minor = a.balance_minor + d.delta"
                " FROM d WHERE a.id = d.id RETURNING 1) SELECT count(*) FROM u",
                ids,
                [ws.deltas[i] for i in ids],
            )
            invariant(updated == len(ids), f"balance update touched {updated} of {len(ids)} accounts")
        for partner_id, (rate, burst) in ws.partner_limits.items():
            await conn.execute(
                "UPDATE partners SET rate_limit_rps = $2, rate_limit_burst = $3 WHERE id = $1", partner_id, rate, burst
            )
        if ws.refunded:
            updated = await conn.fetchval(
                "WITH u AS (UPDATE transfers t SET refunded_minor = v.total"
                " FROM unnest($1::text[], $2::bigint[]) AS v(id, total) WHERE t.id = v.id RETURNING 1)"
                " SELECT count(*) FROM u",
                list(ws.refunded),
                list(ws.refunded.values()),
            )
            invariant(updated == len(ws.refunded), f"refund update touched {updated} of {len(ws.refunded)} payments")
        if ws.outbox:
            await conn.copy_records_to_table(
                "outbox",
                columns=(
                    "transfer_id",
                    "target_shard",
                    "creditor_account",
                    "amount_minor",
                    "currency",
                    "created_at_ms",
                ),
                records=[
                    (
                        leg.transfer_id,
                        ws.targets[leg.transfer_id],
                        leg.creditor_account,
                        leg.amount_minor,
                        leg.currency,
                        leg.at_ms,
                    )
                    for leg in ws.outbox
                ],
            )
        if ws.delivered_held:
            await conn.execute("DELETE FROM outbox WHERE transfer_id = ANY($1::text[])", ws.delivered_held)
        if ws.delivered:
            await conn.execute("DELETE FROM outbox WHERE transfer_id = ANY($1::text[])", ws.delivered)
            await conn.execute(
                "UPDATE transfers SET status = 'AcceptedSettlementCompleted'"
                " WHERE id = ANY($1::text[]) AND status = 'AcceptedSettlementInProcess'",
                ws.delivered,
            )
        for key, value in ws.settings.items():
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )


AGREEMENT_COLUMNS = (
    "id",
    "partner_id",
    "debtor_account",
    "currency",
    "per_payment_limit_minor",
    "periodic_limits",
    "status",
    "created_at_ms",
    "valid_from_ms",
    "valid_to_ms",
    "status_updated_at_ms",
    "authorise_by_ms",
)


def agreement_record(g: Agreement) -> tuple[Any, ...]:
    return (
        g.id,
        g.partner_id,
        g.debtor_account,
        g.currency,
        g.per_payment_limit_minor,
        json.dumps([limit.to_wire() for limit in g.periodic_limits]),
        g.status,
        g.created_at_ms,
        g.valid_from_ms,
        g.valid_to_ms,
        g.status_updated_at_ms,
        g.authorise_by_ms,
    )


async def read_setting(conn: asyncpg.Connection, key: str) -> str | None:
    value: str | None = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
    return value


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def partner_event_record(event: tuple[str, str, str, int, dict[str, Any]]) -> tuple[Any, ...]:
    """A partner_events row as the batch write encodes it (details as JSON text for jsonb)."""
    partner_id, action, actor, at_ms, details = event
    return (partner_id, action, actor, at_ms, json.dumps(details, separators=(",", ":"), sort_keys=True))


async def partner_audit(conn: asyncpg.Connection, partner_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """A partner's cut-off audit rows after `after_seq`, oldest first."""
    rows = await conn.fetch(
        "SELECT seq, partner_id, action, actor, at_ms, details::text AS details FROM partner_events"
        " WHERE partner_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        partner_id,
        after_seq,
        limit,
    )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]
