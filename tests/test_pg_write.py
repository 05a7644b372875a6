"""The group commit's two encodings write the same rows (issue 19, lever 3): a small batch of
payments goes as one JSON statement, a batch of pg.COPY_ROWS_MIN rows or more by binary COPY in
a transaction. Against a real PostgreSQL (a private embedded one), every row written either way
comes back field for field, through every reader of the journal (prefetch, the one-payment read,
an account's list, a reconciliation page, the notifier's read by seq), the balances move by the
batch's deltas, and the outbox rows of cross-shard legs are written with their debit legs.
A batch whose balance update fails after its rows went in leaves nothing, on either path (the
one-statement path used to check the count after its commit)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kernel.ids import CLEARING_ACCOUNT
from ledger import pg
from ledger.model import CreditLeg, Transfer
from ledger.state import WriteSet

NOW_MS = 1_780_000_000_000
_FLAGGED = {"decision": "review", "score": 40, "reasons": [{"rule_id": "velocity_1h"}], "reason_codes": ["VELOCITY"]}
DEBTOR, SETTLEMENT, PARTNER = "acc_pgwrite_debtor", "set_ptn_pgwrite", "ptn_pgwrite"


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from quickpay.embedded_pg import EmbeddedPostgres

    database = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pgwrite")))
    database.start()
    try:
        database.create_databases(["a", "b"])
        yield database.dsn("{}")
    finally:
        database.stop()


def _transfers(first_seq: int, count: int, tag: str) -> list[Transfer]:
    """Rows with every optional column exercised: NULLs, reasons, nested JSON, non-ASCII text,
    a cross-shard payment (its debit leg credits clearing, its credit leg goes to the outbox)."""
    rows = []
    for n in range(count):
        seq = first_seq + n
        kind = n % 5
        rows.append(
            Transfer(
                id=f"pay_{tag}_{seq:08d}_0",
                seq=seq,
                kind="payment",
                debit_account=DEBTOR,
                credit_account=CLEARING_ACCOUNT if kind == 4 else SETTLEMENT,
                amount_minor=1 + n,
                currency="CNY",
                status="AcceptedSettlementInProcess" if kind == 4 else "AcceptedSettlementCompleted",
                created_at_ms=NOW_MS + seq,
                partner_id=PARTNER,
                agreement_id="agr_pgwrite" if kind else None,
                reference=f"订单 {seq} ‘quoted’" if kind == 1 else f"order-{seq}",
                creditor_account="acc_elsewhere" if kind == 4 else SETTLEMENT,
                reasons=("velocity", "new_device") if kind == 2 else (),
                fraud=_FLAGGED if kind == 2 else None,
                body_hash=f"{seq:064x}",
                device_id="dev-1" if kind == 1 else None,
                ip="10.0.0.1" if kind != 3 else None,
                details={"reason": "über", "reason_details": {"limit_minor": 10**15}} if kind == 1 else None,
            )
        )
    return rows


def _batch(transfers: list[Transfer]) -> WriteSet:
    ws = WriteSet(transfers=transfers)
    for t in transfers:
        ws.deltas[t.debit_account] = ws.deltas.get(t.debit_account, 0) - t.amount_minor
        ws.deltas[t.credit_account] = ws.deltas.get(t.credit_account, 0) + t.amount_minor
        if t.credit_account == CLEARING_ACCOUNT:
            ws.outbox.append(CreditLeg(t.id, 0, "acc_elsewhere", t.amount_minor, t.currency, t.created_at_ms))
            ws.targets[t.id] = 1
    return ws


def _fields(t: Transfer) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(t).items() if k != "committed"}


_WRITTEN: dict[str, tuple[list[Transfer], dict[str, list[Transfer]], dict[str, Any]]] = {}


async def _write_and_read_once(
    dsn: str, count: int
) -> tuple[list[Transfer], dict[str, list[Transfer]], dict[str, Any]]:
    """The first batch of this database, written and read back once per test session."""
    if dsn not in _WRITTEN:
        _WRITTEN[dsn] = await _write_and_read(dsn, count)
    return _WRITTEN[dsn]


async def _write_and_read(dsn: str, count: int) -> tuple[list[Transfer], dict[str, list[Transfer]], dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        await pg.ensure_schema(conn, 0, 2)
        for account, kind, partner in ((DEBTOR, "customer", None), (SETTLEMENT, "settlement", PARTNER)):
            await conn.execute(
                "INSERT INTO accounts (id, kind, currency, balance_minor, allow_negative, partner_id, created_at_ms)"
                " VALUES ($1, $2, 'CNY', 0, true, $3, 0)",
                account,
                kind,
                partner,
            )
        written = _transfers(1, count, "w")
        await pg.write_batch(conn, _batch(written))
        ids = [t.id for t in written]
        found = {
            "prefetch": await pg.prefetch_transfers(conn, ids),
            "fetch": [t for i in ids if (t := await pg.fetch_transfer(conn, i)) is not None],
            "by_seq": [pg.row_to_transfer(r) for r in await conn.fetch(pg.SELECT_TRANSFER + " WHERE seq > 0")],
            "debtor_list": await pg.list_account_transfers(conn, DEBTOR, 10**9, count),
        }
        recon = await pg.partner_day_transfers(conn, PARTNER, NOW_MS, NOW_MS + 10**6, None, count)
        found["recon"] = [pg.row_to_transfer({**wire, "body_hash": None}) for _key, wire in recon if wire is not None]
        stored = {
            "balances": dict(await conn.fetch("SELECT id, balance_minor FROM accounts WHERE balance_minor <> 0")),
            "outbox": await conn.fetchval("SELECT count(*) FROM outbox"),
        }
        return written, found, stored
    finally:
        await conn.close()


@pytest.mark.parametrize("count", [7, pg.COPY_ROWS_MIN + 3])
def test_a_group_commit_round_trips_through_every_reader(dsn: str, count: int) -> None:
    database = "a" if count < pg.COPY_ROWS_MIN else "b"  # one path per database: the same seqs
    written, found, stored = asyncio.run(_write_and_read_once(dsn.format(database), count))
    expected = {t.id: _fields(t) for t in written}
    for reader, rows in found.items():
        got = {t.id: _fields(t) for t in rows}
        if reader == "recon":  # the file's wire form has no body hash
            got = {i: {**f, "body_hash": expected[i]["body_hash"]} for i, f in got.items()}
        assert got == expected, f"{reader} read back other values (path: {count} rows)"
    total = sum(t.amount_minor for t in written)
    cleared = sum(t.amount_minor for t in written if t.credit_account == CLEARING_ACCOUNT)
    assert stored["balances"] == {DEBTOR: -total, SETTLEMENT: total - cleared, CLEARING_ACCOUNT: cleared}
    assert stored["outbox"] == sum(1 for t in written if t.credit_account == CLEARING_ACCOUNT)


async def _failed_write_leaves_nothing(dsn: str, count: int) -> tuple[int, int, dict[str, int]]:
    """A batch whose balance update fails after its rows went in (a delta for an account
    that does not exist: the writer's invariant raises): neither its rows nor its deltas stay."""
    from ledger.model import LedgerInvariantError

    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT count(*) FROM transfers")
        balances = dict(await conn.fetch("SELECT id, balance_minor FROM accounts"))
        ws = _batch(_transfers(10**6, count, f"f{count}"))
        ws.deltas[SETTLEMENT] -= 1
        ws.deltas["acc_pgwrite_missing"] = 1
        with pytest.raises(LedgerInvariantError, match="balance update touched"):
            await pg.write_batch(conn, ws)
        after = await conn.fetchval("SELECT count(*) FROM transfers")
        changed = {
            r["id"]: r["balance_minor"]
            for r in await conn.fetch("SELECT id, balance_minor FROM accounts")
            if balances.get(r["id"]) != r["balance_minor"]
        }
        return before, after, changed
    finally:
        await conn.close()


@pytest.mark.parametrize("count", [7, pg.COPY_ROWS_MIN + 3])
def test_a_group_commit_that_fails_after_its_rows_leaves_nothing(dsn: str, count: int) -> None:
    database = "a" if count < pg.COPY_ROWS_MIN else "b"
    asyncio.run(_write_and_read_once(dsn.format(database), count))
    before, after, changed = asyncio.run(_failed_write_leaves_nothing(dsn.format(database), count))
    assert after == before > 0
    assert changed == {}
