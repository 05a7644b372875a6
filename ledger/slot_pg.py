"""Moving a slot's rows between two shards' PostgreSQL databases (issue 21): the adapter of the
pure move in ledger/slot_move.py. Pure SQL over asyncpg connections; no process calls it yet
(ARCHITECTURE.md, "Elastic shards"), and nothing on the payment path changes.

- `export_slot` (source): the slot's rows as `ledger.slot_move.export_slot` has them (customer
  accounts with balances; the agreements of its debtors, with each limit window's spend; the
  transfers that belong with its accounts, `transfer_slot`; the outbox legs of its payments),
  plus what only the database has (the agreements' transition rows, the outbox rows' target
  shards, legs joined to their payment by an earlier move). One REPEATABLE READ snapshot; its
  **snapshot point** is the highest journal seq that snapshot sees (`SlotExport.through_seq`;
  the shard's single writer commits batches in seq order, so the snapshot holds every row up
  to it and none above it) together with the slot's payments still in process then.
- `export_tail` (source): what changed after a snapshot point. Journal rows are immutable but
  for two updates (ledger/pg.py write_batch): a payment's status on delivery (InProcess to
  Completed) and its refunded total (with a new refund row). So the tail is the slot's rows
  with seq above the point, the payments those refunds name, and the payments in process at
  the point; accounts, agreements and outbox legs are read whole again (a slot's share is
  small).
- `stage_slot` (target): the export into the staging tables (ledger/schema.sql, "slot move
  staging"; logged, so a crashed target keeps its copy). Re-runnable: a snapshot replaces the
  slot's staged copy, a tail replaces what it carries.
- `install_slot` (target): ONE transaction moving the staged rows into the live tables, the
  transfers under new seqs in the source's order (see "Seqs" below), the credit legs the move
  made local applied once (`settle_local_legs`' SQL twin), the slot's redirects dropped (its
  ids are live here again), the seq ranges recorded in `slot_installs`, the staging emptied.
  Nothing staged: nothing to do (so a second run is a no-op).
- `release_slot` (source): ONE transaction deleting the slot's rows that the target holds
  (`installed_ids`, read from the target: a row the export could not read is never deleted
  unseen) and writing a redirect per agreement and transfer id deleted. Run twice: the second
  deletes nothing and writes nothing.

Seqs. Copied rows get new seqs on the target, after its journal's end (or from `first_seq`:
a live worker holds its next seq in memory and must pass it, then continue from the result's
`next_seq`). Readers that keep a per-shard position by seq would read them as new: the
notifier (events `evt_<shard>_t<seq>`, a second `payment.completed` for a moved payment, and
the agreement events likewise) and the transaction pages' cursors (a moved row can show
twice across a page boundary). `slot_installs` records each install's ranges so those readers
can skip copies; teaching them to is not done.

Books. Money is conserved over the two databases (customer, settlement, funding and clearing
balances together), but not per shard: a moved account takes its balance while the stripes
that funded it, and same-shard counterparties in other slots, stay. `ledger/audit.py`'s
per-shard checks (journal replay, zero sum) do not hold after a move until the audit replays
each account over every shard's rows (not done). Fraud windows are not rows: the target
rebuilds them from its journal (`ledger.fraud_port.replay_journal`), which now holds the
slot's payments.

A row that cannot be read is quarantined (`ledger.rows.QUARANTINE`, reader `slot_export`) and
listed in `SlotExport.quarantined`: it is not copied (an unreadable account keeps its
agreements and journal rows with it), the release leaves it where it is, and a coordinator
should not fence the slot while an export lists any (an operator repairs the row first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from kernel.ids import CLEARING_ACCOUNT
from kernel.slots import SLOT_COUNT

from .model import Agreement, CreditLeg, Kind, Status, Transfer, invariant
from .pg import (
    AGREEMENT_COLUMNS,
    SELECT_TRANSFER,
    TRANSFER_COLUMNS,
    account_from_row,
    agreement_record,
    load_spend,
    transfer_record,
)
from .rows import QUARANTINE, RowError, decode_account, decode_agreement, decode_agreement_event, decode_outbox
from .rows import decode_transfer as _decode_transfer
from .slot_move import SlotImage
from .state import ShardState

__all__ = [
    "SLOT_SQL_FUNCTION",
    "InstallFault",
    "InstallResult",
    "ReleaseResult",
    "SlotExport",
    "SlotIds",
    "SnapshotPoint",
    "export_slot",
    "export_tail",
    "install_slot",
    "installed_ids",
    "redirect_of",
    "release_slot",
    "stage_slot",
    "staged_point",
]

# The SQL twin of kernel.slots.slot_of (ledger/schema.sql); its modulus is SLOT_COUNT.
SLOT_SQL_FUNCTION: Final = "quickpay_slot_of"
_SLOT_MODULUS_IN_SQL: Final = 5_040
invariant(_SLOT_MODULUS_IN_SQL == SLOT_COUNT, "ledger/schema.sql's quickpay_slot_of must use SLOT_COUNT")

_READER: Final = "slot_export"
_ACCOUNT_COLUMNS: Final = ("id", "kind", "currency", "balance_minor", "allow_negative", "partner_id", "created_at_ms")
_OUTBOX_COLUMNS: Final = (
    "transfer_id",
    "target_shard",
    "creditor_account",
    "amount_minor",
    "currency",
    "created_at_ms",
)
_EVENT_COLUMNS: Final = ("agreement_id", "from_status", "to_status", "actor", "at_ms")
_COLUMNS: Final = ", ".join(TRANSFER_COLUMNS)
# The account a journal row belongs with (ledger.slot_move.transfer_slot): a payment's debtor,
# else the credited account. Striped accounts (set_, sys_) belong with no slot.
_OWNER: Final = "(CASE WHEN kind = 'payment' THEN debit_account ELSE credit_account END)"
_OWNED_BY_SLOT: Final = (
    f"{SLOT_SQL_FUNCTION}({_OWNER}) = $1 AND {_OWNER} NOT LIKE 'set\\_%' AND {_OWNER} NOT LIKE 'sys\\_%'"
)
# The rows of a snapshot, through the indexes that name their account: money-moving payments by
# debtor (transfers_debit_moved), money-moving rows of other kinds by the credited account
# (transfers_credit_moved). Rejected rows are in neither partial index (they were left out so
# that rejected payments cost the hot insert nothing): they are found by one pass over the
# journal, measured in BENCHMARKS.md.
_SNAPSHOT_TRANSFERS: Final = (
    f"{SELECT_TRANSFER} WHERE debit_account = ANY($1::text[]) AND status <> 'Rejected' AND kind = 'payment'"
    f" UNION ALL {SELECT_TRANSFER} WHERE credit_account = ANY($1::text[]) AND status <> 'Rejected'"
    " AND kind <> 'payment'"
    f" UNION ALL {SELECT_TRANSFER} WHERE status = 'Rejected' AND ((kind = 'payment' AND debit_account = ANY($1::text[]))"
    " OR (kind <> 'payment' AND credit_account = ANY($1::text[])))"
)
# A tail: one range of the seq index, and the changed rows by id.
_TAIL_TRANSFERS: Final = (
    f"{SELECT_TRANSFER} WHERE seq > $2 AND ((kind = 'payment' AND debit_account = ANY($1::text[]))"
    " OR (kind <> 'payment' AND credit_account = ANY($1::text[])))"
)
_CHANGED_TRANSFERS: Final = (
    f"{SELECT_TRANSFER} WHERE id = ANY($2::text[]) AND seq <= $3 AND ((kind = 'payment' AND debit_account = ANY($1::text[]))"
    " OR (kind <> 'payment' AND credit_account = ANY($1::text[])))"
)
_STAGING_TABLES: Final = (
    "slot_staged_accounts",
    "slot_staged_agreements",
    "slot_staged_agreement_events",
    "slot_staged_transfers",
    "slot_staged_outbox",
)


@dataclass(frozen=True, slots=True)
class SnapshotPoint:
    """What a tail is read after: the highest source seq the staged copy has seen, and the
    staged payments then in process (their status may have advanced since)."""

    through_seq: int
    in_process_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class SlotExport:
    """A slot's rows read from a source database."""

    image: SlotImage  # what the pure export holds (fraud windows aside: not rows)
    through_seq: int  # the snapshot point (see the module's docstring)
    is_tail: bool = False
    outbox_targets: dict[str, int] = field(default_factory=dict)  # transfer id -> the leg's target shard
    agreement_events: list[dict[str, Any]] = field(default_factory=list)  # the agreements' transitions, seq order
    joined_leg_ids: set[str] = field(default_factory=set)  # image.transfers stored as joined legs on the source
    quarantined: list[RowError] = field(default_factory=list)  # rows read and not copied


@dataclass(frozen=True, slots=True)
class SlotIds:
    """The ids of a slot's rows a target holds (what the source may delete)."""

    accounts: tuple[str, ...]
    agreements: tuple[str, ...]
    transfers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InstallResult:
    slot: int
    source_shard: int
    first_seq: int  # the first seq the copied rows got here
    next_seq: int  # the journal's next seq after the install
    accounts: int
    agreements: int
    transfers: int
    joined_legs: int  # credit legs stored beside their payment (transfers' key holds the payment)
    settled_legs: tuple[str, ...]  # outbox legs the move made local, applied here now


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    accounts: int
    agreements: int
    transfers: int
    redirects: int
    accounts_left: int  # the slot's accounts still here that the target does not hold
    agreements_left: int


class InstallFault(RuntimeError):
    """Raised inside the install's transaction at the step a test names (`fault_at`)."""


# ---- export ---------------------------------------------------------------------------------
async def _topology(conn: asyncpg.Connection) -> tuple[int, int]:
    meta = {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM meta")}
    return int(meta["shard"]), int(meta["shard_count"])


def _decoded(export: SlotExport, decode: Callable[[Any], Any], row: Any) -> Any:
    try:
        return decode(row)
    except RowError as exc:
        QUARANTINE.skip(_READER, exc, export.image.source_shard)
        export.quarantined.append(exc)
        return None


async def _read_slot_rows(
    conn: asyncpg.Connection, slot: int, export: SlotExport, now_ms: int, shard_count: int
) -> list[str]:
    """Accounts, agreements (with spend), their events, joined legs and outbox legs of `slot`
    into `export`; returns the ids of the slot's accounts that were read (their journal rows
    are found by them). An account that cannot be read stays on the source with everything of
    it (its agreements, its journal rows), so the copy never holds rows without their account."""
    image = export.image
    rows = await conn.fetch(
        f"SELECT {', '.join(_ACCOUNT_COLUMNS)} FROM accounts WHERE kind = 'customer' AND {SLOT_SQL_FUNCTION}(id) = $1",
        slot,
    )
    for r in rows:
        if _decoded(export, decode_account, r) is not None:
            image.accounts[r["id"]] = account_from_row(r)
    shard = image.source_shard
    spend = ShardState(shard, shard_count)  # a scratch state: load_spend places and sums the windows
    for r in await conn.fetch(
        f"SELECT * FROM agreements WHERE {SLOT_SQL_FUNCTION}(debtor_account) = $1 ORDER BY created_at_ms, id", slot
    ):
        agreement: Agreement | None = _decoded(export, lambda row: decode_agreement(row, now_ms), r)
        if agreement is not None and agreement.debtor_account in image.accounts:
            spend.agreements[agreement.id] = agreement
    await load_spend(conn, spend, now_ms)
    image.agreements = dict(spend.agreements)
    events = await conn.fetch(
        "SELECT seq, agreement_id, from_status, to_status, actor, at_ms FROM agreement_events"
        " WHERE agreement_id = ANY($1::text[]) ORDER BY seq",
        list(image.agreements),
    )
    export.agreement_events = [e for e in (_decoded(export, decode_agreement_event, r) for r in events) if e]
    account_ids = list(image.accounts)
    for r in await conn.fetch(
        f"SELECT {_COLUMNS} FROM slot_joined_legs WHERE credit_account = ANY($1::text[])", account_ids
    ):
        leg = _decoded(export, _decode_transfer, r)
        if leg is not None:
            image.transfers[leg.id] = leg
            export.joined_leg_ids.add(leg.id)
    for r in await conn.fetch(
        "SELECT o.transfer_id, o.target_shard, o.creditor_account, o.amount_minor, o.currency, o.created_at_ms"
        " FROM outbox o JOIN transfers t ON t.id = o.transfer_id"
        " WHERE t.kind = 'payment' AND t.debit_account = ANY($1::text[])",
        account_ids,
    ):
        if _decoded(export, decode_outbox, r) is not None:
            image.outbox[r["transfer_id"]] = CreditLeg(
                r["transfer_id"], shard, r["creditor_account"], r["amount_minor"], r["currency"], r["created_at_ms"]
            )
            export.outbox_targets[r["transfer_id"]] = r["target_shard"]
    return account_ids


def _add_transfers(export: SlotExport, rows: list[Any]) -> None:
    for r in rows:
        transfer = _decoded(export, _decode_transfer, r)
        if transfer is not None:
            export.image.transfers[transfer.id] = transfer


async def export_slot(conn: asyncpg.Connection, slot: int, *, now_ms: int) -> SlotExport:
    """Every row of `slot` in the source database `conn`, in one snapshot (see the module's
    docstring); `now_ms` places the agreements' limit windows, as the start-up load does."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        shard, shard_count = await _topology(conn)
        through_seq = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers"))
        export = SlotExport(SlotImage(slot, shard), through_seq)
        account_ids = await _read_slot_rows(conn, slot, export, now_ms, shard_count)
        _add_transfers(export, await conn.fetch(_SNAPSHOT_TRANSFERS, account_ids))
    return export


async def export_tail(conn: asyncpg.Connection, slot: int, since: SnapshotPoint, *, now_ms: int) -> SlotExport:
    """What changed in `slot` after the snapshot point `since` (`staged_point` on the target):
    accounts, agreements and outbox legs whole, the journal rows new or changed since."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        shard, shard_count = await _topology(conn)
        through_seq = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers"))
        export = SlotExport(SlotImage(slot, shard), through_seq, is_tail=True)
        account_ids = await _read_slot_rows(conn, slot, export, now_ms, shard_count)
        new_rows = await conn.fetch(_TAIL_TRANSFERS, account_ids, since.through_seq)
        _add_transfers(export, new_rows)
        changed = set(since.in_process_ids)
        for transfer in export.image.transfers.values():
            if transfer.kind == Kind.REFUND and transfer.details and "payment_id" in transfer.details:
                changed.add(str(transfer.details["payment_id"]))
        _add_transfers(export, await conn.fetch(_CHANGED_TRANSFERS, account_ids, sorted(changed), since.through_seq))
    return export


# ---- staging (target) -----------------------------------------------------------------------
async def staged_point(conn: asyncpg.Connection, slot: int) -> SnapshotPoint | None:
    """The snapshot point of the target's staged copy of `slot`; None: nothing staged."""
    through_seq = await conn.fetchval("SELECT through_seq FROM slot_staged WHERE slot = $1", slot)
    if through_seq is None:
        return None
    ids = await conn.fetch(
        "SELECT id FROM slot_staged_transfers WHERE slot = $1 AND kind = 'payment' AND status = $2 ORDER BY id",
        slot,
        Status.IN_PROCESS,
    )
    return SnapshotPoint(int(through_seq), tuple(r["id"] for r in ids))


async def stage_slot(conn: asyncpg.Connection, export: SlotExport, *, now_ms: int) -> None:
    """Write `export` into the target's staging tables in one transaction. A snapshot replaces
    the slot's staged copy; a tail (only onto a copy staged from the same source: ValueError
    otherwise) replaces its accounts, agreements, events and outbox legs and the journal rows it
    carries. Staging the same export twice leaves one copy."""
    image = export.image
    slot = image.slot
    transfers = list(image.transfers.values())
    async with conn.transaction():
        if export.is_tail:
            # A tail completes a staged copy from the same source; alone it would stage a slot
            # without the rows it did not carry.
            header = await conn.fetchrow("SELECT source_shard FROM slot_staged WHERE slot = $1 FOR UPDATE", slot)
            if header is None or header["source_shard"] != image.source_shard:
                raise ValueError(f"slot {slot}: a tail from shard {image.source_shard} needs its snapshot staged first")
            for table in ("slot_staged_accounts", "slot_staged_agreements", "slot_staged_agreement_events"):
                await conn.execute(f"DELETE FROM {table} WHERE slot = $1", slot)
            await conn.execute("DELETE FROM slot_staged_outbox WHERE slot = $1", slot)
            await conn.execute(
                "DELETE FROM slot_staged_transfers WHERE slot = $1 AND id = ANY($2::text[])",
                slot,
                [t.id for t in transfers],
            )
        else:
            for table in _STAGING_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE slot = $1", slot)
        await conn.execute(
            "INSERT INTO slot_staged (slot, source_shard, through_seq, staged_at_ms) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (slot) DO UPDATE SET source_shard = excluded.source_shard,"
            " through_seq = excluded.through_seq, staged_at_ms = excluded.staged_at_ms",
            slot,
            image.source_shard,
            export.through_seq,
            now_ms,
        )
        await conn.copy_records_to_table(
            "slot_staged_accounts",
            columns=("slot", *_ACCOUNT_COLUMNS),
            records=[
                (slot, a.id, a.kind, a.currency, a.balance_minor, a.allow_negative, a.partner_id, a.created_at_ms)
                for a in image.accounts.values()
            ],
        )
        await conn.copy_records_to_table(
            "slot_staged_agreements",
            columns=("slot", *AGREEMENT_COLUMNS),
            records=[(slot, *agreement_record(g)) for g in image.agreements.values()],
        )
        await conn.copy_records_to_table(
            "slot_staged_agreement_events",
            columns=("slot", "source_seq", *_EVENT_COLUMNS),
            records=[(slot, e["seq"], *(e[c] for c in _EVENT_COLUMNS)) for e in export.agreement_events],
        )
        await conn.copy_records_to_table(
            "slot_staged_transfers",
            columns=("slot", *TRANSFER_COLUMNS),
            records=[(slot, *transfer_record(t)) for t in transfers],
        )
        await conn.copy_records_to_table(
            "slot_staged_outbox",
            columns=("slot", *_OUTBOX_COLUMNS),
            records=[
                (slot, leg.transfer_id, export.outbox_targets[leg.transfer_id], leg.creditor_account)
                + (leg.amount_minor, leg.currency, leg.at_ms)
                for leg in image.outbox.values()
            ],
        )


# ---- install (target) -----------------------------------------------------------------------
def _check_fault(fault_at: str | None, step: str) -> None:
    if fault_at == step:
        raise InstallFault(f"injected failure at the install's {step} step")


# The staged journal rows numbered in the source's order from $2 (the first new seq).
_NUMBERED: Final = (
    "WITH n AS (SELECT *, $2::bigint + row_number() OVER (ORDER BY seq) - 1 AS new_seq"
    " FROM slot_staged_transfers WHERE slot = $1)"
)
_NEW_SEQ_COLUMNS: Final = ", ".join("new_seq" if c == "seq" else c for c in TRANSFER_COLUMNS)
# An incoming credit leg whose payment is here: the move joined the two halves.
_JOINS_A_PAYMENT: Final = (
    "n.kind = 'credit_leg' AND EXISTS (SELECT 1 FROM transfers t WHERE t.id = n.id AND t.kind = 'payment')"
)


async def install_slot(
    conn: asyncpg.Connection,
    slot: int,
    *,
    now_ms: int,
    first_seq: int | None = None,
    fault_at: str | None = None,
) -> InstallResult | None:
    """Move the staged copy of `slot` into the target's live tables in ONE transaction (see the
    module's docstring). None: nothing staged (never staged, or installed already).
    `first_seq`: the first seq to give the copied rows (a live worker's next seq; default
    after the journal's end). `fault_at` (tests): fail at that step, inside the transaction."""
    async with conn.transaction():
        header = await conn.fetchrow("SELECT source_shard FROM slot_staged WHERE slot = $1 FOR UPDATE", slot)
        if header is None:
            return None
        source_shard = int(header["source_shard"])
        shard, _ = await _topology(conn)
        if first_seq is None:
            first_seq = 1 + int(
                await conn.fetchval(
                    "SELECT greatest((SELECT coalesce(max(seq), 0) FROM transfers),"
                    " (SELECT coalesce(max(seq), 0) FROM slot_joined_legs))"
                )
            )
        accounts = await conn.fetchval(
            f"WITH i AS (INSERT INTO accounts ({', '.join(_ACCOUNT_COLUMNS)}) SELECT {', '.join(_ACCOUNT_COLUMNS)}"
            " FROM slot_staged_accounts WHERE slot = $1 RETURNING 1) SELECT count(*) FROM i",
            slot,
        )
        _check_fault(fault_at, "accounts")
        agreements = await conn.fetchval(
            f"WITH i AS (INSERT INTO agreements ({', '.join(AGREEMENT_COLUMNS)})"
            f" SELECT {', '.join(AGREEMENT_COLUMNS)} FROM slot_staged_agreements WHERE slot = $1 RETURNING 1)"
            " SELECT count(*) FROM i",
            slot,
        )
        events = await conn.fetchrow(
            f"WITH i AS (INSERT INTO agreement_events ({', '.join(_EVENT_COLUMNS)}) SELECT {', '.join(_EVENT_COLUMNS)}"
            " FROM slot_staged_agreement_events WHERE slot = $1 ORDER BY source_seq RETURNING seq)"
            " SELECT min(seq) AS first, max(seq) AS last FROM i",
            slot,
        )
        _check_fault(fault_at, "agreements")
        clashes = await conn.fetch(
            "SELECT s.id, s.kind AS incoming, t.kind AS held FROM slot_staged_transfers s"
            " JOIN transfers t ON t.id = s.id WHERE s.slot = $1",
            slot,
        )
        for c in clashes:
            invariant(
                {c["incoming"], c["held"]} == {Kind.PAYMENT, Kind.CREDIT_LEG},
                f"transfer {c['id']} is on both shards as {c['held']} and {c['incoming']}",
            )
        # A held credit leg whose payment comes in: the payment takes the id, the leg is joined.
        await conn.execute(
            "WITH m AS (DELETE FROM transfers t USING slot_staged_transfers s WHERE s.slot = $1 AND s.id = t.id"
            " AND s.kind = 'payment' AND t.kind = 'credit_leg' RETURNING t.*)"
            " INSERT INTO slot_joined_legs SELECT * FROM m",
            slot,
        )
        joined = await conn.fetchval(
            f"{_NUMBERED}, i AS (INSERT INTO slot_joined_legs ({_COLUMNS}) SELECT {_NEW_SEQ_COLUMNS} FROM n"
            f" WHERE {_JOINS_A_PAYMENT} RETURNING 1) SELECT count(*) FROM i",
            slot,
            first_seq,
        )
        transfers = await conn.fetchval(
            f"{_NUMBERED}, i AS (INSERT INTO transfers ({_COLUMNS}) SELECT {_NEW_SEQ_COLUMNS} FROM n"
            f" WHERE NOT ({_JOINS_A_PAYMENT}) RETURNING 1) SELECT count(*) FROM i",
            slot,
            first_seq,
        )
        next_seq = first_seq + joined + transfers
        _check_fault(fault_at, "transfers")
        await conn.execute(
            f"INSERT INTO outbox ({', '.join(_OUTBOX_COLUMNS)}) SELECT {', '.join(_OUTBOX_COLUMNS)}"
            " FROM slot_staged_outbox WHERE slot = $1",
            slot,
        )
        settled, next_seq = await _settle_local_legs(conn, shard, source_shard, slot, next_seq)
        _check_fault(fault_at, "settle")
        await conn.execute(
            "DELETE FROM slot_redirects WHERE id IN (SELECT id FROM slot_staged_transfers WHERE slot = $1"
            " UNION ALL SELECT id FROM slot_staged_agreements WHERE slot = $1)",
            slot,
        )
        await conn.execute(
            "INSERT INTO slot_installs (slot, source_shard, first_seq, last_seq, events_first_seq, events_last_seq,"
            " installed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            slot,
            source_shard,
            first_seq,
            next_seq - 1,
            events["first"],
            events["last"],
            now_ms,
        )
        for table in _STAGING_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE slot = $1", slot)
        await conn.execute("DELETE FROM slot_staged WHERE slot = $1", slot)
        _check_fault(fault_at, "staging")
    return InstallResult(
        slot, source_shard, first_seq, next_seq, accounts, agreements, transfers, joined, tuple(settled)
    )


async def _settle_local_legs(
    conn: asyncpg.Connection, shard: int, source_shard: int, slot: int, next_seq: int
) -> tuple[list[str], int]:
    """`ledger.slot_move.settle_local_legs` in SQL: every outbox leg whose creditor is now a
    customer account here is applied once (clearing to the creditor, a joined leg row under
    the payment's id) unless a leg of it is already joined here, its payment completed, the
    outbox row deleted. Returns the ids applied now and the next seq."""
    legs = await conn.fetch(
        "SELECT o.transfer_id, o.creditor_account, o.amount_minor, o.currency, o.created_at_ms,"
        " (j.id IS NOT NULL) AS joined, (s.transfer_id IS NOT NULL) AS staged"
        " FROM outbox o JOIN accounts a ON a.id = o.creditor_account AND a.kind = 'customer'"
        " LEFT JOIN slot_joined_legs j ON j.id = o.transfer_id"
        " LEFT JOIN slot_staged_outbox s ON s.slot = $1 AND s.transfer_id = o.transfer_id"
        " ORDER BY o.created_at_ms, o.transfer_id",
        slot,
    )
    if not legs:
        return [], next_seq
    applied = [leg for leg in legs if not leg["joined"]]
    rows = []
    deltas: dict[str, int] = {}
    for leg in applied:
        creditor, amount_minor = leg["creditor_account"], leg["amount_minor"]
        made_on = source_shard if leg["staged"] else shard
        rows.append(
            transfer_record(
                Transfer(
                    id=leg["transfer_id"],
                    seq=next_seq,
                    kind=Kind.CREDIT_LEG,
                    debit_account=CLEARING_ACCOUNT,
                    credit_account=creditor,
                    amount_minor=amount_minor,
                    currency=leg["currency"],
                    status=Status.COMPLETED,
                    created_at_ms=leg["created_at_ms"],
                    creditor_account=creditor,
                    reference=f"from shard {made_on}",
                )
            )
        )
        next_seq += 1
        deltas[CLEARING_ACCOUNT] = deltas.get(CLEARING_ACCOUNT, 0) - amount_minor
        deltas[creditor] = deltas.get(creditor, 0) + amount_minor
    if rows:
        await conn.copy_records_to_table("slot_joined_legs", columns=TRANSFER_COLUMNS, records=rows)
        updated = await conn.fetchval(
            "WITH u AS (UPDATE accounts a SET balance_minor = a.balance_minor + d.delta"
            " FROM unnest($1::text[], $2::bigint[]) AS d(id, delta) WHERE a.id = d.id RETURNING 1)"
            " SELECT count(*) FROM u",
            list(deltas),
            list(deltas.values()),
        )
        invariant(updated == len(deltas), f"settling legs touched {updated} of {len(deltas)} accounts")
    ids = [leg["transfer_id"] for leg in legs]
    await conn.execute(
        "UPDATE transfers SET status = $2 WHERE id = ANY($1::text[]) AND status = $3",
        ids,
        Status.COMPLETED,
        Status.IN_PROCESS,
    )
    await conn.execute("DELETE FROM outbox WHERE transfer_id = ANY($1::text[])", ids)
    return [leg["transfer_id"] for leg in applied], next_seq


# ---- release (source) -----------------------------------------------------------------------
async def installed_ids(conn: asyncpg.Connection, slot: int) -> SlotIds:
    """What the target holds of `slot` (its accounts and agreements, and the journal rows of its
    latest install of the slot): the ids the source may delete."""
    accounts = await conn.fetch(
        f"SELECT id FROM accounts WHERE kind = 'customer' AND {SLOT_SQL_FUNCTION}(id) = $1 ORDER BY id", slot
    )
    agreements = await conn.fetch(
        f"SELECT id FROM agreements WHERE {SLOT_SQL_FUNCTION}(debtor_account) = $1 ORDER BY id", slot
    )
    transfers = await conn.fetch(
        "WITH r AS (SELECT first_seq, last_seq FROM slot_installs WHERE slot = $1 ORDER BY seq DESC LIMIT 1)"
        " SELECT t.id FROM transfers t, r WHERE t.seq BETWEEN r.first_seq AND r.last_seq"
        " UNION SELECT j.id FROM slot_joined_legs j, r WHERE j.seq BETWEEN r.first_seq AND r.last_seq ORDER BY 1",
        slot,
    )
    return SlotIds(
        tuple(r["id"] for r in accounts), tuple(r["id"] for r in agreements), tuple(r["id"] for r in transfers)
    )


async def release_slot(conn: asyncpg.Connection, slot: int, moved: SlotIds, *, now_ms: int) -> ReleaseResult:
    """Delete from the source `conn` the rows of `slot` that the target holds (`moved`, from
    `installed_ids`) and keep a redirect (id -> slot) per agreement and transfer id deleted, in
    ONE transaction. A leg joined here to a payment that leaves is a plain journal row again."""
    transfer_ids = list(moved.transfers)
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM outbox WHERE transfer_id IN"
            f" (SELECT id FROM transfers WHERE id = ANY($2::text[]) AND {_OWNED_BY_SLOT})",
            slot,
            transfer_ids,
        )
        gone = await conn.fetch(
            f"DELETE FROM transfers WHERE id = ANY($2::text[]) AND {_OWNED_BY_SLOT} RETURNING id, kind",
            slot,
            transfer_ids,
        )
        gone_legs = await conn.fetch(
            f"DELETE FROM slot_joined_legs WHERE id = ANY($2::text[]) AND {_OWNED_BY_SLOT} RETURNING id",
            slot,
            transfer_ids,
        )
        left_payments = [r["id"] for r in gone if r["kind"] == Kind.PAYMENT]
        await conn.execute(
            f"WITH m AS (DELETE FROM slot_joined_legs WHERE id = ANY($1::text[]) RETURNING *)"
            f" INSERT INTO transfers ({_COLUMNS}) SELECT {_COLUMNS} FROM m",
            left_payments,
        )
        agreement_ids = await conn.fetch(
            f"SELECT id FROM agreements WHERE id = ANY($2::text[]) AND {SLOT_SQL_FUNCTION}(debtor_account) = $1",
            slot,
            list(moved.agreements),
        )
        gone_agreements = [r["id"] for r in agreement_ids]
        await conn.execute("DELETE FROM agreement_events WHERE agreement_id = ANY($1::text[])", gone_agreements)
        await conn.execute("DELETE FROM agreements WHERE id = ANY($1::text[])", gone_agreements)
        accounts = await conn.fetchval(
            f"WITH d AS (DELETE FROM accounts WHERE id = ANY($2::text[]) AND kind = 'customer'"
            f" AND {SLOT_SQL_FUNCTION}(id) = $1 RETURNING 1) SELECT count(*) FROM d",
            slot,
            list(moved.accounts),
        )
        redirected = [*gone_agreements, *(r["id"] for r in gone), *(r["id"] for r in gone_legs)]
        redirects = await conn.fetchval(
            "WITH i AS (INSERT INTO slot_redirects (id, slot, at_ms) SELECT id, $2, $3 FROM unnest($1::text[]) AS id"
            " ON CONFLICT (id) DO NOTHING RETURNING 1) SELECT count(*) FROM i",
            redirected,
            slot,
            now_ms,
        )
        accounts_left = await conn.fetchval(
            f"SELECT count(*) FROM accounts WHERE kind = 'customer' AND {SLOT_SQL_FUNCTION}(id) = $1", slot
        )
        agreements_left = await conn.fetchval(
            f"SELECT count(*) FROM agreements WHERE {SLOT_SQL_FUNCTION}(debtor_account) = $1", slot
        )
    return ReleaseResult(
        accounts, len(gone_agreements), len(gone) + len(gone_legs), redirects, accounts_left, agreements_left
    )


async def redirect_of(conn: asyncpg.Connection, entity_id: str) -> int | None:
    """The slot an agreement or transfer id this shard gave away went with; None: not given away."""
    slot: int | None = await conn.fetchval("SELECT slot FROM slot_redirects WHERE id = $1", entity_id)
    return slot
