"""A slot's rows out of one shard's PostgreSQL database and into another's (ledger/slot_pg.py),
against a real (embedded) PostgreSQL: two shard databases written by the real decision code and
the real batch write, with a slot whose debtor pays a settlement account, a customer of another
slot on its shard, and customers on the other shard (delivered, delivered but unacknowledged,
undelivered), is refunded, is refused, and receives credit legs from the other shard.

What it proves: PostgreSQL's `quickpay_slot_of` is `kernel.slots.slot_of` (non-ASCII ids too);
the SQL export equals the pure `ledger.slot_move.export_slot` of a ShardState loaded by the real
start-up load (`ledger.pg.load_state`); a tail after the snapshot point brings the staged copy
up to date (new rows, a refunded total, a delivered status); snapshot, tail, install and release
across the two databases keep the books (all balances sum to zero, clearing holds what is in
flight, every customer's balance is its live rows', no row lives twice) and every moved id is
on the target or redirected there by the source; each step run again changes nothing; an install
that fails at any step leaves the target as it was; an unreadable row is reported, not moved,
and never deleted from the source.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kernel.ids import CLEARING_ACCOUNT, shard_of
from kernel.slots import SLOT_COUNT, slot_of
from ledger import pg, slot_move, slot_pg
from ledger.agreements import PeriodicLimit
from ledger.model import (
    Account,
    Agreement,
    Code,
    CreditLeg,
    FundingCommand,
    Kind,
    PaymentCommand,
    RefundCommand,
    Status,
    Transfer,
)
from ledger.rows import decode_transfer
from ledger.state import MS_PER_DAY, ShardState, WriteSet

SHARDS = 2
SLOT = 4_242  # on shard 0 under the initial map
PARTNER, SETTLEMENT, CURRENCY = "ptn_a", "set_ptn_a", "CNY"
NOW_MS = 20_000 * MS_PER_DAY + 3_600_000
FUNDED_MINOR = 10_000


def account_in_slot(slot: int, tag: str) -> str:
    for counter in itertools.count():
        candidate = f"acc_{tag}{counter}"
        if slot_of(candidate) == slot:
            return candidate
    raise AssertionError("unreachable")


def agreement_for(debtor: str) -> str:
    """An agreement id on its debtor's shard (kernel.ids.new_agreement_id's rule)."""
    for counter in itertools.count():
        candidate = f"agr_{debtor[4:]}_{counter}"
        if shard_of(candidate, SHARDS) == shard_of(debtor, SHARDS):
            return candidate
    raise AssertionError("unreachable")


M1 = account_in_slot(SLOT, "m")
M2 = account_in_slot(SLOT, "ü订")  # non-ASCII: the SQL slot must hash its UTF-8 bytes
A = account_in_slot(10, "a")  # shard 0, another slot
B = account_in_slot(11, "b")  # shard 1
AGREEMENTS = {debtor: agreement_for(debtor) for debtor in (M1, M2, A, B)}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from quickpay.embedded_pg import EmbeddedPostgres

    database = EmbeddedPostgres(Path(tmp_path_factory.mktemp("slotpg")))
    database.start()
    try:
        yield database
    finally:
        database.stop()


_names = itertools.count()


@pytest.fixture
def dsns(postgres: Any) -> list[str]:
    """Two fresh shard databases for one test."""
    names = [f"slot{next(_names)}_{shard}" for shard in range(SHARDS)]
    postgres.create_databases(names)
    return [postgres.dsn(name) for name in names]


class Shard:
    """One shard: its ShardState deciding, each command's WriteSet written by pg.write_batch."""

    def __init__(self, shard: int, conn: asyncpg.Connection) -> None:
        self.state = ShardState(shard, SHARDS)
        self.conn = conn
        self.seq = itertools.count(1)

    async def decide(self, run: Callable[[ShardState, WriteSet], Any]) -> Any:
        state = self.state
        ws = WriteSet()
        state.begin(ws)
        result = run(state, ws)
        for effect, args in state.commit():
            effect(*args)
        await pg.write_batch(self.conn, ws)
        for transfer in ws.transfers:
            transfer.committed = True
        for account_id, delta in ws.deltas.items():
            state.accounts[account_id].committed_balance_minor += delta
        return result

    async def pay(self, key: str, debtor: str, creditor: str, amount_minor: int, *, at_ms: int = NOW_MS) -> Transfer:
        agreement = AGREEMENTS[debtor]
        command = PaymentCommand(
            f"pay_{key}_{self.state.shard}",
            PARTNER,
            agreement,
            amount_minor,
            CURRENCY,
            creditor,
            shard_of(creditor, SHARDS) if creditor.startswith("acc_") else self.state.shard,
            f"order {key}",
            f"hash-{key}",
            at_ms,
        )
        code, transfer = await self.decide(lambda s, ws: s.execute_payment(command, ws))
        assert code == Code.OK and transfer is not None
        return transfer

    async def credit(self, payment: Transfer) -> None:
        leg = CreditLeg(
            payment.id, 1 - self.state.shard, payment.creditor_account or "", payment.amount_minor, CURRENCY, NOW_MS
        )
        assert await self.decide(lambda s, ws: s.execute_credit(leg, ws)) == Code.OK

    async def acknowledge(self, payment: Transfer) -> None:
        await self.decide(lambda s, ws: s.mark_delivered(payment.id, ws))


async def seed(shard: Shard, customers: list[str]) -> None:
    """Schema, the settlement stripe, the shard's customers (funded) and their agreements."""
    await pg.ensure_schema(shard.conn, shard.state.shard, SHARDS)
    await pg.load_state(shard.conn, shard.state, NOW_MS)
    ws = WriteSet()
    for account in [
        Account(SETTLEMENT, "settlement", CURRENCY, 0, True, PARTNER),
        *(Account(c, "customer", CURRENCY, 0, False, None, NOW_MS - MS_PER_DAY) for c in customers),
    ]:
        ws.accounts.append(account)
        shard.state.load_account(account)
    for customer in customers:
        agreement = Agreement(
            AGREEMENTS[customer],
            PARTNER,
            customer,
            CURRENCY,
            5_000,
            [PeriodicLimit("Day", "Calendar", 1_000_000), PeriodicLimit("Month", "Consent", 2_000_000)],
            "Authorised",
            NOW_MS - MS_PER_DAY,
            status_updated_at_ms=NOW_MS - MS_PER_DAY,
        )
        ws.agreements.append(agreement)
        ws.agreement_events.append((agreement.id, None, "AwaitingAuthorisation", "partner", NOW_MS - MS_PER_DAY))
        ws.agreement_events.append((agreement.id, "AwaitingAuthorisation", "Authorised", "customer", NOW_MS - 1))
        shard.state.load_agreement(agreement)
    await pg.write_batch(shard.conn, ws)
    for customer in customers:
        command = FundingCommand(f"fnd_{customer}", customer, FUNDED_MINOR, CURRENCY, "seed", f"h-{customer}", NOW_MS)
        code, _ = await shard.decide(lambda s, ws: s.execute_funding(command, ws))
        assert code == Code.OK


async def build_world(dsns: list[str]) -> tuple[Shard, Shard, dict[str, Transfer]]:
    """Shard 0 holds SLOT (M1, M2) and A; shard 1 holds B. Returns both and the payments."""
    s0 = Shard(0, await asyncpg.connect(dsns[0]))
    s1 = Shard(1, await asyncpg.connect(dsns[1]))
    await seed(s0, [M1, M2, A])
    await seed(s1, [B])
    paid = {
        "to_settlement": await s0.pay("p1", M1, SETTLEMENT, 700),
        "same_shard_other_slot": await s0.pay("p2", M1, A, 300),
        "cross_delivered": await s0.pay("p3", M1, B, 250),
        "cross_undelivered": await s0.pay("p4", M2, B, 150),
        "into_slot": await s0.pay("p5", A, M1, 125),
        "b_to_m2_delivered": await s1.pay("q1", B, M2, 90),
        "b_to_m1_unacknowledged": await s1.pay("q2", B, M1, 60),
        "b_to_m1_undelivered": await s1.pay("q3", B, M1, 40),
    }
    refused = PaymentCommand("pay_p6_0", PARTNER, AGREEMENTS[M1], 6_000, CURRENCY, SETTLEMENT, 0, "r", "h6", NOW_MS)
    code, rejected = await s0.decide(lambda s, ws: s.execute_payment(refused, ws))
    assert code == Code.OK and rejected is not None and rejected.status == Status.REJECTED
    paid["rejected"] = rejected
    await s1.credit(paid["cross_delivered"])
    await s0.acknowledge(paid["cross_delivered"])
    for key in ("b_to_m2_delivered", "b_to_m1_unacknowledged"):
        await s0.credit(paid[key])
    await s1.acknowledge(paid["b_to_m2_delivered"])
    refund = RefundCommand("ref_r1_0", PARTNER, paid["to_settlement"].id, 200, "returned", None, "hr1", NOW_MS)
    code, _ = await s0.decide(lambda s, ws: s.execute_refund(refund, ws))
    assert code == Code.OK
    for action in ("suspend", "resume"):
        code, _ = await s0.decide(
            lambda s, ws, a=action: s.transition_agreement(AGREEMENTS[M2], None, a, "customer", NOW_MS, ws)
        )
        assert code == Code.OK
    return s0, s1, paid


async def loaded_state(conn: asyncpg.Connection, shard: int) -> tuple[ShardState, dict[str, CreditLeg]]:
    """A ShardState as the worker's start-up load makes it, with every journal row in its
    transfer cache (the pure export reads the slot's transfers there), and the outbox."""
    state = ShardState(shard, SHARDS)
    await pg.load_state(conn, state, NOW_MS)
    for row in await conn.fetch(pg.SELECT_TRANSFER + " ORDER BY seq"):
        state.remember(decode_transfer(row))
    # load_outbox leaves a leg's source shard unset (-1): the relay sending it is that shard.
    outbox = {leg.transfer_id: dataclasses.replace(leg, source_shard=shard) for leg, _ in await pg.load_outbox(conn)}
    return state, outbox


def assert_same_image(sql: slot_move.SlotImage, pure: slot_move.SlotImage) -> None:
    assert sql.accounts == pure.accounts
    assert sql.agreements == pure.agreements
    assert sql.transfers == pure.transfers
    assert sql.outbox == pure.outbox


# ---- the slot function -------------------------------------------------------------------------
async def test_sql_slot_is_kernel_slot_of_for_many_ids_including_non_ascii(dsns: list[str]) -> None:
    conn = await asyncpg.connect(dsns[0])
    try:
        await pg.ensure_schema(conn, 0, SHARDS)
        samples = [f"acc_{n:08x}" for n in range(3_000)] + [f"agr_{n}" for n in range(1_000)]
        samples += ["", "ü", "订单", "acc_😀", "acc_\u00e9t\u00e9", "set_ptn_a", "sys_clearing", "x" * 300]
        samples += [f"acc_{chr(0x4E00 + n)}{chr(0x1F600 + n % 80)}{n}" for n in range(1_000)]
        rows = await conn.fetch(
            "SELECT quickpay_slot_of(x) AS slot, crc32(convert_to(x, 'UTF8')) % $2 AS direct"
            " FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n",
            samples,
            SLOT_COUNT,
        )
        assert [r["slot"] for r in rows] == [slot_of(s) for s in samples]
        assert [r["direct"] for r in rows] == [slot_of(s) for s in samples]
        assert len({r["slot"] for r in rows}) > 2_000  # spread over the slots, not a constant
    finally:
        await conn.close()


# ---- export ----------------------------------------------------------------------------------
async def test_sql_export_equals_the_pure_export_of_the_loaded_state(dsns: list[str]) -> None:
    s0, s1, paid = await build_world(dsns)
    try:
        export = await slot_pg.export_slot(s0.conn, SLOT, now_ms=NOW_MS)
        state, outbox = await loaded_state(s0.conn, 0)
        pure = slot_move.export_slot(state, SLOT, outbox)
        assert_same_image(export.image, pure)
        # Not vacuous: every kind of row of the slot is in it, and nothing of another slot.
        image = export.image
        assert set(image.accounts) == {M1, M2}
        assert set(image.agreements) == {AGREEMENTS[M1], AGREEMENTS[M2]}
        assert image.agreements[AGREEMENTS[M1]].periodic_limits[0].spent_minor == 700 + 300 + 250
        kinds = {t.kind for t in image.transfers.values()}
        assert kinds == {Kind.PAYMENT, Kind.REFUND, Kind.FUNDING, Kind.CREDIT_LEG}
        assert paid["rejected"].id in image.transfers
        assert paid["into_slot"].id not in image.transfers  # A's payment: A's slot
        assert image.transfers[paid["to_settlement"].id].refunded_minor == 200
        assert set(image.outbox) == {paid["cross_undelivered"].id}
        assert export.outbox_targets == {paid["cross_undelivered"].id: 1}
        assert [e["to_status"] for e in export.agreement_events if e["agreement_id"] == AGREEMENTS[M2]] == [
            "AwaitingAuthorisation",
            "Authorised",
            "Suspended",
            "Authorised",
        ]
        assert export.through_seq == max(t.seq for t in state.transfers.values())
        assert export.quarantined == []
    finally:
        await s0.conn.close()
        await s1.conn.close()


async def test_a_tail_brings_the_staged_copy_up_to_date(dsns: list[str]) -> None:
    s0, s1, paid = await build_world(dsns)
    try:
        snapshot = await slot_pg.export_slot(s0.conn, SLOT, now_ms=NOW_MS)
        await slot_pg.stage_slot(s1.conn, snapshot, now_ms=NOW_MS)
        point = await slot_pg.staged_point(s1.conn, SLOT)
        assert point == slot_pg.SnapshotPoint(snapshot.through_seq, (paid["cross_undelivered"].id,))
        # After the snapshot: a new payment, a refund (raises an old payment's refunded total),
        # the undelivered leg delivered (an old payment's status), and a row of another slot.
        new = await s0.pay("p7", M2, SETTLEMENT, 55)
        refund = RefundCommand("ref_r2_0", PARTNER, paid["to_settlement"].id, 100, None, None, "hr2", NOW_MS)
        code, _ = await s0.decide(lambda s, ws: s.execute_refund(refund, ws))
        assert code == Code.OK
        await s1.credit(paid["cross_undelivered"])
        await s0.acknowledge(paid["cross_undelivered"])
        await s0.pay("p8", A, SETTLEMENT, 5)
        tail = await slot_pg.export_tail(s0.conn, SLOT, point, now_ms=NOW_MS)
        assert set(tail.image.transfers) == {new.id, "ref_r2_0", paid["to_settlement"].id, paid["cross_undelivered"].id}
        assert tail.image.transfers[paid["to_settlement"].id].refunded_minor == 300
        assert tail.image.transfers[paid["cross_undelivered"].id].status == Status.COMPLETED
        state, outbox = await loaded_state(s0.conn, 0)
        assert_same_image(snapshot.image.merged(tail.image), slot_move.export_slot(state, SLOT, outbox))
        assert not tail.image.outbox
    finally:
        await s0.conn.close()
        await s1.conn.close()


async def test_a_tail_is_staged_only_onto_its_snapshot(dsns: list[str]) -> None:
    s0, s1, _ = await build_world(dsns)
    try:
        await pg.ensure_schema(s1.conn, 1, SHARDS)
        tail = await slot_pg.export_tail(s0.conn, SLOT, slot_pg.SnapshotPoint(0), now_ms=NOW_MS)
        with pytest.raises(ValueError, match="needs its snapshot staged first"):
            await slot_pg.stage_slot(s1.conn, tail, now_ms=NOW_MS)
        assert await slot_pg.staged_point(s1.conn, SLOT) is None
        assert not await s1.conn.fetchval("SELECT count(*) FROM slot_staged_transfers")
    finally:
        await s0.conn.close()
        await s1.conn.close()


# ---- the whole move --------------------------------------------------------------------------
_TABLES = (
    "accounts",
    "agreements",
    "agreement_events",
    "transfers",
    "outbox",
    "slot_staged",
    "slot_staged_accounts",
    "slot_staged_agreements",
    "slot_staged_agreement_events",
    "slot_staged_transfers",
    "slot_staged_outbox",
    "slot_joined_legs",
    "slot_installs",
    "slot_redirects",
)


async def dump(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a move touches, in a stable order."""
    return {table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")] for table in _TABLES}


async def books(conns: list[asyncpg.Connection]) -> dict[str, int]:
    """The model test's checks over both databases: returns each customer's balance."""
    balances: dict[str, int] = {}
    total = clearing = 0
    rows: list[Any] = []
    for conn in conns:
        for r in await conn.fetch("SELECT id, kind, balance_minor FROM accounts"):
            total += r["balance_minor"]
            if r["id"] == CLEARING_ACCOUNT:
                clearing += r["balance_minor"]
            if r["kind"] == "customer":
                assert r["id"] not in balances, f"account {r['id']} on both shards"
                balances[r["id"]] = r["balance_minor"]
        rows += await conn.fetch("SELECT id, kind, debit_account, credit_account, amount_minor, status FROM transfers")
        rows += await conn.fetch(
            "SELECT id, kind, debit_account, credit_account, amount_minor, status FROM slot_joined_legs"
        )
    assert total == 0, "money created or destroyed"
    keys = [(r["id"], r["kind"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row lives twice"
    replayed = dict.fromkeys(balances, 0)
    for r in rows:
        if r["status"] != Status.REJECTED:
            for account, sign in ((r["debit_account"], -1), (r["credit_account"], 1)):
                if account in replayed:
                    replayed[account] += sign * r["amount_minor"]
    assert replayed == balances, "a customer's balance is not its live rows'"
    legs = {r["id"] for r in rows if r["kind"] == Kind.CREDIT_LEG and r["status"] != Status.REJECTED}
    in_flight = sum(
        r["amount_minor"]
        for r in rows
        if r["kind"] == Kind.PAYMENT
        and r["status"] != Status.REJECTED
        and r["credit_account"] == CLEARING_ACCOUNT
        and r["id"] not in legs
    )
    assert clearing == in_flight, "clearing does not hold the credits in flight"
    return balances


async def move(source: Shard, target: Shard, *, twice: bool = False, late: bool = True) -> dict[str, Any]:
    """SNAPSHOT, TAIL, INSTALL, RELEASE of SLOT from `source` to `target` (each run twice if
    `twice`, checking the second run changes nothing); `late`: a payment of the slot decided
    on the source between the snapshot and the tail."""
    source_conn, target_conn = source.conn, target.conn

    async def step(run: Callable[[], Awaitable[Any]], conn: asyncpg.Connection) -> Any:
        result = await run()
        if twice:
            before = await dump(conn)
            again = await run()
            assert await dump(conn) == before, "a step run twice changed the database"
            return result, again
        return result, None

    snapshot = await slot_pg.export_slot(source_conn, SLOT, now_ms=NOW_MS)
    await step(lambda: slot_pg.stage_slot(target_conn, snapshot, now_ms=NOW_MS), target_conn)
    point = await slot_pg.staged_point(target_conn, SLOT)
    assert point is not None
    if late:
        paid = await source.pay("p9", M1, SETTLEMENT, 33)  # decided after the snapshot: in the tail
    tail = await slot_pg.export_tail(source_conn, SLOT, point, now_ms=NOW_MS)
    if late:
        assert paid.id in tail.image.transfers
    await step(lambda: slot_pg.stage_slot(target_conn, tail, now_ms=NOW_MS), target_conn)
    installed, install_again = await step(lambda: slot_pg.install_slot(target_conn, SLOT, now_ms=NOW_MS), target_conn)
    moved = await slot_pg.installed_ids(target_conn, SLOT)
    released, release_again = await step(
        lambda: slot_pg.release_slot(source_conn, SLOT, moved, now_ms=NOW_MS), source_conn
    )
    return {
        "image": snapshot.image.merged(tail.image),
        "installed": installed,
        "install_again": install_again,
        "released": released,
        "release_again": release_again,
    }


async def test_a_move_keeps_the_books_and_every_moved_id_resolves(dsns: list[str]) -> None:
    s0, s1, paid = await build_world(dsns)
    try:
        before = await books([s0.conn, s1.conn])
        done = await move(s0, s1)
        after = await books([s0.conn, s1.conn])
        # The legs the move made local were applied on the target, once each.
        installed = done["installed"]
        assert set(installed.settled_legs) == {paid["cross_undelivered"].id, paid["b_to_m1_undelivered"].id}
        assert installed.joined_legs == 2  # the delivered legs from shard 1 meet their payments
        assert after[B] == before[B] + 150 and after[M1] == before[M1] - 33 + 40
        assert {k: v for k, v in after.items() if k not in (B, M1)} == {
            k: v for k, v in before.items() if k not in (B, M1)
        }
        image: slot_move.SlotImage = done["image"]
        target_ids = {
            r["id"] for r in await s1.conn.fetch("SELECT id FROM transfers UNION SELECT id FROM slot_joined_legs")
        }
        target_agreements = {r["id"] for r in await s1.conn.fetch("SELECT id FROM agreements")}
        source_accounts = {r["id"] for r in await s0.conn.fetch("SELECT id FROM accounts")}
        assert not set(image.accounts) & source_accounts
        for entity_id in [*image.transfers, *image.agreements]:
            assert entity_id in target_ids | target_agreements, entity_id
            assert await slot_pg.redirect_of(s0.conn, entity_id) == SLOT, entity_id
        assert done["released"].redirects == len(image.transfers) + len(image.agreements)
        # Rows of other slots stayed where they were, without redirects.
        assert await slot_pg.redirect_of(s0.conn, paid["into_slot"].id) is None
        assert await s0.conn.fetchval("SELECT count(*) FROM transfers WHERE id = $1", paid["into_slot"].id) == 1
        # The copies' seqs are recorded for readers by seq; the target's journal stays unique.
        ranges = await s1.conn.fetchrow("SELECT first_seq, last_seq FROM slot_installs WHERE slot = $1", SLOT)
        assert ranges["last_seq"] - ranges["first_seq"] + 1 == len(image.transfers) + len(installed.settled_legs)
        assert installed.next_seq == ranges["last_seq"] + 1
        # The moved agreements' transitions came along.
        assert (
            await s1.conn.fetchval("SELECT count(*) FROM agreement_events WHERE agreement_id = $1", AGREEMENTS[M2]) == 4
        )
        assert not await s0.conn.fetchval("SELECT count(*) FROM outbox")
        assert not await s1.conn.fetchval("SELECT count(*) FROM slot_staged_transfers")
    finally:
        await s0.conn.close()
        await s1.conn.close()


async def test_each_step_run_again_changes_nothing(dsns: list[str]) -> None:
    s0, s1, _ = await build_world(dsns)
    try:
        done = await move(s0, s1, twice=True)
        assert done["install_again"] is None
        assert done["installed"] is not None and done["installed"].transfers > 0
        again = done["release_again"]
        assert (again.accounts, again.agreements, again.transfers, again.redirects) == (0, 0, 0, 0)
        assert done["released"].transfers > 0
        await books([s0.conn, s1.conn])
    finally:
        await s0.conn.close()
        await s1.conn.close()


@pytest.mark.parametrize("step", ["accounts", "agreements", "transfers", "settle", "staging"])
async def test_an_install_failing_midway_leaves_the_target_as_it_was(dsns: list[str], step: str) -> None:
    s0, s1, _ = await build_world(dsns)
    try:
        export = await slot_pg.export_slot(s0.conn, SLOT, now_ms=NOW_MS)
        await slot_pg.stage_slot(s1.conn, export, now_ms=NOW_MS)
        before = await dump(s1.conn)
        with pytest.raises(slot_pg.InstallFault):
            await slot_pg.install_slot(s1.conn, SLOT, now_ms=NOW_MS, fault_at=step)
        assert await dump(s1.conn) == before
        assert await slot_pg.install_slot(s1.conn, SLOT, now_ms=NOW_MS) is not None  # the staged copy is intact
    finally:
        await s0.conn.close()
        await s1.conn.close()


@pytest.mark.parametrize("broken", ["transfer", "account"])
async def test_an_unreadable_row_is_reported_not_moved_and_never_deleted(dsns: list[str], broken: str) -> None:
    s0, s1, paid = await build_world(dsns)
    try:
        if broken == "transfer":
            key, table, staying = paid["same_shard_other_slot"].id, "transfers", [paid["same_shard_other_slot"].id]
        else:  # M2 and everything of it stays: its agreement, its payments, the leg it received
            key, table = M2, "accounts"
            staying = [paid["cross_undelivered"].id, paid["b_to_m2_delivered"].id, AGREEMENTS[M2], f"fnd_{M2}"]
        await s0.conn.execute(f"UPDATE {table} SET created_at_ms = -5 WHERE id = $1", key)
        export = await slot_pg.export_slot(s0.conn, SLOT, now_ms=NOW_MS)
        assert [(e.table, e.key) for e in export.quarantined] == [(table, key)]
        assert not set(staying) & {*export.image.transfers, *export.image.agreements, *export.image.accounts}
        await slot_pg.stage_slot(s1.conn, export, now_ms=NOW_MS)
        assert await slot_pg.install_slot(s1.conn, SLOT, now_ms=NOW_MS) is not None
        released = await slot_pg.release_slot(s0.conn, SLOT, await slot_pg.installed_ids(s1.conn, SLOT), now_ms=NOW_MS)
        assert released.transfers == len(export.image.transfers)
        assert (released.accounts_left, released.agreements_left) == ((0, 0) if broken == "transfer" else (1, 1))
        for entity_id in staying:
            assert await slot_pg.redirect_of(s0.conn, entity_id) is None
        assert await s0.conn.fetchval(
            "SELECT count(*) FROM (SELECT id FROM transfers UNION ALL SELECT id FROM agreements) r"
            " WHERE id = ANY($1::text[])",
            staying,
        ) == len(staying)
        await s0.conn.execute(f"UPDATE {table} SET created_at_ms = 0 WHERE id = $1", key)  # repaired, to count
        await books([s0.conn, s1.conn])
    finally:
        await s0.conn.close()
        await s1.conn.close()


async def test_a_slot_moved_there_and_back_keeps_the_books_and_its_ids(dsns: list[str]) -> None:
    s0, s1, paid = await build_world(dsns)
    try:
        before = await books([s0.conn, s1.conn])
        there = await move(s0, s1)
        back = await move(s1, s0, late=False)  # s1's memory never loaded the slot: no new payment there
        after = await books([s0.conn, s1.conn])
        assert after[B] == before[B] + 150 and after[M1] == before[M1] - 33 + 40
        image: slot_move.SlotImage = back["image"]
        assert set(there["image"].transfers) <= set(image.transfers)  # all of it came back
        assert set(back["installed"].settled_legs) == set()  # settled on the first install, not again
        for entity_id in [*image.transfers, *image.agreements]:
            assert await slot_pg.redirect_of(s0.conn, entity_id) is None, entity_id  # live here again
            assert await slot_pg.redirect_of(s1.conn, entity_id) == SLOT, entity_id
        # The payment that joined its leg on shard 1 went home; its leg is a plain row there again.
        leg = paid["cross_undelivered"].id
        assert await s1.conn.fetchval("SELECT kind FROM transfers WHERE id = $1", leg) == Kind.CREDIT_LEG
        assert await s0.conn.fetchval("SELECT kind FROM transfers WHERE id = $1", leg) == Kind.PAYMENT
        assert not await s1.conn.fetchval("SELECT count(*) FROM slot_joined_legs WHERE id = $1", leg)
    finally:
        await s0.conn.close()
        await s1.conn.close()
