"""The slot-move protocol (ledger/slot_move.py) against a model, pure (no PostgreSQL).

Unit tests: a slot's export holds every row of the slot and nothing of another; export, then
import into an empty state, gives equal rows and indexes; fraud windows and first-payment
pairs move with their debtor; a drop leaves the other slots as they were.

The model test (a Hypothesis state machine over two shards and a coordinator): random
interleavings of payments (same slot, other slot, cross-shard, to the settlement account;
some committed with their answer lost), retries with the same idempotency key, refunds, agreement changes (suspend, resume, revoke),
credit legs sent and acknowledged by the relays, the move's steps, crashes of the source and
the target (memory rebuilt from their rows, unacknowledged sends forgotten) and of the
coordinator after a step's effect and before its record. After every step: the books sum to
zero over the live rows (the slot's rows live on its owner under the coordinator's map, or in
the target's staged copy during the cut-over), every committed payment (acknowledged or its
answer lost) and every refund is one live row (no more, no fewer), every customer's balance is what its live rows say, no credit
leg is applied twice, the clearing stripes hold exactly the legs in flight, and every id
resolves from its home shard to its one live holder. A retry answers the original result.
At the end the move is finished and every leg delivered: nothing is left in flight.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fraud
from kernel.ids import (
    CLEARING_ACCOUNT,
    FUNDING_ACCOUNT,
    payment_id_for,
    refund_id_for,
    shard_of,
    shard_of_payment,
    shard_of_refund,
)
from kernel.slots import SLOT_COUNT, SlotMap, slot_of
from ledger.agreements import PeriodicLimit
from ledger.fraud_port import facts_of_payment, make_facts, replay_journal
from ledger.model import (
    Account,
    Agreement,
    Code,
    CreditLeg,
    Kind,
    PaymentCommand,
    RefundCommand,
    Status,
    Transfer,
)
from ledger.slot_move import (
    Moved,
    MoveRecord,
    NotYet,
    Phase,
    Role,
    ShardNode,
    SlotImage,
    advance,
    agreement_slot,
    creditor_shard,
    drop_slot,
    export_slot,
    export_tail,
    guard,
    import_slot,
    locate,
    start_move,
    transfer_slot,
)
from ledger.state import MS_PER_DAY, ShardState, WriteSet

SHARDS = 2
PARTNER = "ptn_a"
SETTLEMENT = "set_ptn_a"
CURRENCY = "CNY"
DAY0_MS = 20_000 * MS_PER_DAY + 1_000
BALANCE_MINOR = 10_000


def account_in_slot(slot: int, tag: str) -> str:
    """A deterministic account id in `slot` (Hypothesis needs the same ids every run)."""
    for counter in range(SLOT_COUNT * 50):
        candidate = f"acc_{tag}{counter}"
        if slot_of(candidate) == slot:
            return candidate
    raise AssertionError("no id found")


def agreement_for(debtor: str) -> str:
    """A deterministic agreement id on its debtor's shard (kernel.ids.new_agreement_id's rule)."""
    for counter in range(1_000):
        candidate = f"agr_{debtor[4:]}_{counter}"
        if shard_of(candidate, SHARDS) == shard_of(debtor, SHARDS):
            return candidate
    raise AssertionError("no id found")


MOVING_SLOT = 4_242  # on shard 0 under the initial map (even)
OTHER_SLOT_A = 10
SLOT_B = 11
CUSTOMERS = (
    account_in_slot(MOVING_SLOT, "m"),
    account_in_slot(MOVING_SLOT, "n"),
    account_in_slot(OTHER_SLOT_A, "a"),
    account_in_slot(SLOT_B, "b"),
)
AGREEMENTS = {debtor: agreement_for(debtor) for debtor in CUSTOMERS}


def new_state(shard: int, *, with_fraud: bool = False) -> ShardState:
    engine = fraud.FraudFilter(fraud.load_rules_file(fraud.default_rules_path())) if with_fraud else None
    state = ShardState(shard, SHARDS, fraud=engine, make_facts=make_facts)
    state.payment_facts = facts_of_payment
    return state


def seed_state(shard: int, *, with_fraud: bool = False) -> ShardState:
    state = new_state(shard, with_fraud=with_fraud)
    mine = [c for c in CUSTOMERS if shard_of(c, SHARDS) == shard]
    state.load_account(Account(FUNDING_ACCOUNT, "funding", CURRENCY, -BALANCE_MINOR * len(mine), True))
    state.accounts[FUNDING_ACCOUNT].committed_balance_minor = -BALANCE_MINOR * len(mine)
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", CURRENCY, 0, True))
    state.load_account(Account(SETTLEMENT, "settlement", CURRENCY, 0, True, PARTNER))
    for customer in mine:
        state.load_account(Account(customer, "customer", CURRENCY, BALANCE_MINOR, False, None, 0, BALANCE_MINOR))
        state.load_agreement(
            Agreement(
                AGREEMENTS[customer],
                PARTNER,
                customer,
                CURRENCY,
                5_000,
                [PeriodicLimit("Day", "Calendar", 1_000_000)],
                "Authorised",
                0,
            )
        )
    return state


def decide(node: ShardNode, run: Any) -> tuple[Any, WriteSet]:
    """One command in its own batch, committed at once (as the writer would after its commit)."""
    state = node.state
    ws = WriteSet()
    state.begin(ws)
    result = run(state, ws)
    for effect, args in state.commit():
        effect(*args)
    ws.check_balanced()
    for transfer in ws.transfers:
        transfer.committed = True
    for account_id, delta in ws.deltas.items():
        state.accounts[account_id].committed_balance_minor += delta
    for leg in ws.outbox:
        node.outbox[leg.transfer_id] = leg
    for transfer_id in ws.delivered + ws.delivered_held:
        node.outbox.pop(transfer_id, None)
    return result, ws


def reload(node: ShardNode) -> None:
    """A crash: memory is lost and rebuilt from the shard's rows (accounts, agreements, the
    journal, the windows replayed from it); the protocol's rows and the outbox are durable."""
    old = node.state
    state = new_state(old.shard, with_fraud=old.fraud is not None)
    for account in old.accounts.values():
        account = copy.deepcopy(account)
        account.balance_minor = account.committed_balance_minor
        state.load_account(account)
    for agreement in old.agreements.values():
        state.load_agreement(copy.deepcopy(agreement))
    rows = sorted((copy.deepcopy(t) for t in old.transfers.values() if t.committed), key=lambda t: t.seq)
    for transfer in rows:
        state.remember(transfer)
    state.next_seq = max([t.seq for t in rows] + [j.seq for j in node.joined_legs.values()] + [0]) + 1
    if state.fraud is not None:
        replay_journal(
            state.fraud,
            [dict(_journal_row(t)) for t in rows if t.status != Status.REJECTED],
        )
    node.state = state


def _journal_row(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "kind": transfer.kind,
        "partner_id": transfer.partner_id,
        "agreement_id": transfer.agreement_id,
        "debit_account": transfer.debit_account,
        "creditor_account": transfer.creditor_account,
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "device_id": transfer.device_id,
        "ip": transfer.ip,
        "created_at_ms": transfer.created_at_ms,
        "refund_of": (transfer.details or {}).get("payment_id"),
    }


# ---- unit tests: export, import, drop ---------------------------------------------------------
def busy_state() -> tuple[ShardNode, list[str]]:
    """Shard 0 with payments (local, to settlement, cross-shard), a refund, a suspended
    agreement and fraud windows; returns the node and the payment ids."""
    node = ShardNode(seed_state(0, with_fraud=True), SlotMap.initial(SHARDS))
    ids = []
    for index, (debtor, creditor, amount) in enumerate(
        [
            (CUSTOMERS[0], SETTLEMENT, 700),
            (CUSTOMERS[0], CUSTOMERS[2], 300),
            (CUSTOMERS[1], CUSTOMERS[3], 250),  # cross-shard: a leg in the outbox
            (CUSTOMERS[2], CUSTOMERS[0], 125),
            (CUSTOMERS[2], SETTLEMENT, 90),
        ]
    ):
        agreement = AGREEMENTS[debtor]
        pid = payment_id_for(PARTNER, f"k{index}", shard_of(agreement, SHARDS))
        command = PaymentCommand(
            pid, PARTNER, agreement, amount, CURRENCY, creditor, creditor_shard(node, creditor), "r", "h", DAY0_MS
        )
        (code, transfer), _ = decide(node, lambda s, ws: s.execute_payment(command, ws))
        assert code == Code.OK and transfer.status != Status.REJECTED
        ids.append(pid)
    refund = RefundCommand(refund_id_for(PARTNER, "r0", 0), PARTNER, ids[0], 200, None, None, "h", DAY0_MS)
    (code, _), _ = decide(node, lambda s, ws: s.execute_refund(refund, ws))
    assert code == Code.OK
    (code, _), _ = decide(
        node, lambda s, ws: s.transition_agreement(AGREEMENTS[CUSTOMERS[1]], None, "suspend", "customer", DAY0_MS, ws)
    )
    assert code == Code.OK
    return node, ids


def test_export_holds_the_slot_and_nothing_else() -> None:
    node, ids = busy_state()
    image = export_slot(node.state, MOVING_SLOT, node.outbox)
    assert set(image.accounts) == {CUSTOMERS[0], CUSTOMERS[1]}
    assert set(image.agreements) == {AGREEMENTS[CUSTOMERS[0]], AGREEMENTS[CUSTOMERS[1]]}
    # the slot's debtors' payments, the refund of one (it credits the debtor), and the
    # payment from another slot's debtor that credited a slot account stays behind
    assert set(image.transfers) == {ids[0], ids[1], ids[2], refund_id_for(PARTNER, "r0", 0)}
    assert set(image.outbox) == {ids[2]}
    assert all(transfer_slot(t) == MOVING_SLOT for t in image.transfers.values())
    assert all(agreement_slot(a) == MOVING_SLOT for a in image.agreements.values())
    assert image.windows and all(
        slot_of(value if len(key) == 1 else value[key.index("debtor")]) == MOVING_SLOT
        for key, values in image.windows.items()
        for value in values
    )
    assert image.first_payment_pairs and all(slot_of(d) == MOVING_SLOT for d, _ in image.first_payment_pairs)
    other = export_slot(node.state, OTHER_SLOT_A, node.outbox)
    assert set(other.transfers) == {ids[3], ids[4]} and not other.outbox
    assert not set(other.accounts) & set(image.accounts)
    # the image is a copy: later decisions do not change it
    node.state.accounts[CUSTOMERS[0]].balance_minor += 1
    assert image.accounts[CUSTOMERS[0]].balance_minor == node.state.accounts[CUSTOMERS[0]].balance_minor - 1


def comparable(transfer: Transfer) -> Transfer:
    out = copy.copy(transfer)
    out.seq = 0  # the target's journal position, not the row's content
    return out


def test_export_then_import_into_an_empty_state_gives_equal_rows_and_indexes() -> None:
    node, _ = busy_state()
    source = node.state
    image = export_slot(source, MOVING_SLOT, node.outbox)
    target = new_state(1, with_fraud=True)
    outbox: dict[str, CreditLeg] = {}
    filter_ids = import_slot(target, image, outbox=outbox)
    mine = set(image.accounts)
    assert {k: v for k, v in target.accounts.items()} == {k: source.accounts[k] for k in mine}
    assert target.agreements == {k: source.agreements[k] for k in image.agreements}
    assert {k: comparable(v) for k, v in target.transfers.items()} == {
        k: comparable(source.transfers[k]) for k in image.transfers
    }
    assert sorted(filter_ids) == sorted(image.transfers) and outbox == image.outbox
    for index in ("agreements_by_debtor", "visible_ends", "pending_ends"):
        source_index = {
            k: v for k, v in getattr(source, index).items() if (k[0] if isinstance(k, tuple) else k) in mine
        }
        assert getattr(target, index) == source_index, index
    assert target.can_see(PARTNER, CUSTOMERS[0], DAY0_MS) and target.can_see(PARTNER, CUSTOMERS[1], DAY0_MS)
    # the fraud windows answer the same for the moved debtor on both shards
    facts = make_facts(
        PaymentCommand("pay_probe", PARTNER, AGREEMENTS[CUSTOMERS[0]], 10, CURRENCY, SETTLEMENT, 0, "r", "h", DAY0_MS),
        CUSTOMERS[0],
    )
    assert isinstance(source.fraud, fraud.FraudFilter) and isinstance(target.fraud, fraud.FraudFilter)
    moved_values = target.fraud._aggregate_values(facts, target.fraud._active)
    assert moved_values == source.fraud._aggregate_values(facts, source.fraud._active)
    assert moved_values[0] is False and max(moved_values[1:]) > 1  # the windows did hold this debtor's payments
    # target seqs are its own, in the source's order
    moved = sorted(image.transfers.values(), key=lambda t: t.seq)
    assert [target.transfers[t.id].seq for t in moved] == list(range(1, len(moved) + 1))


def test_drop_slot_takes_the_slot_out_and_leaves_the_rest() -> None:
    node, _ = busy_state()
    before_other = export_slot(node.state, OTHER_SLOT_A, node.outbox)
    dropped = drop_slot(node.state, MOVING_SLOT, node.outbox)
    after = export_slot(node.state, MOVING_SLOT, node.outbox)
    assert not (after.accounts or after.agreements or after.transfers or after.outbox or after.windows)
    assert after.first_payment_pairs == [] and dropped
    assert export_slot(node.state, OTHER_SLOT_A, node.outbox).transfers == before_other.transfers
    assert not node.state.can_see(PARTNER, CUSTOMERS[0], DAY0_MS)
    assert drop_slot(node.state, MOVING_SLOT, node.outbox) == []  # idempotent


def test_tail_carries_what_changed_since_the_snapshot() -> None:
    node, ids = busy_state()
    snapshot = export_slot(node.state, MOVING_SLOT, node.outbox)
    assert not export_tail(node.state, MOVING_SLOT, snapshot, node.outbox).transfers
    node.state.mark_delivered(ids[2], WriteSet())  # the cross-shard leg acknowledged
    node.outbox.pop(ids[2])
    tail = export_tail(node.state, MOVING_SLOT, snapshot, node.outbox)
    assert set(tail.transfers) == {ids[2]} and tail.transfers[ids[2]].status == Status.COMPLETED
    merged = snapshot.merged(tail)
    assert merged.transfers[ids[2]].status == Status.COMPLETED and not merged.outbox


def test_a_fenced_source_answers_moved_and_the_importing_target_not_yet() -> None:
    source = ShardNode(seed_state(0), SlotMap.initial(SHARDS))
    target = ShardNode(seed_state(1), SlotMap.initial(SHARDS))
    record = start_move(SlotMap.initial(SHARDS), MOVING_SLOT, 1)
    seen = []
    while record.phase != Phase.DONE:
        seen.append((record.phase, guard(source, MOVING_SLOT), guard(target, MOVING_SLOT)))
        advance(record, source, target)
    phases = {phase: (g_source, g_target) for phase, g_source, g_target in seen}
    assert phases[Phase.SNAPSHOT] == (None, NotYet(MOVING_SLOT))
    assert phases[Phase.FINAL] == (Moved(MOVING_SLOT, 1, 2), NotYet(MOVING_SLOT))
    assert guard(source, MOVING_SLOT) == Moved(MOVING_SLOT, 1, 2) and guard(target, MOVING_SLOT) is None
    assert record.slot_map.version == 2 and source.slot_map == target.slot_map == record.slot_map
    assert set(target.state.accounts) >= {CUSTOMERS[0], CUSTOMERS[1]}
    assert CUSTOMERS[0] not in source.state.accounts
    assert locate(source, AGREEMENTS[CUSTOMERS[0]]) == MOVING_SLOT and locate(target, AGREEMENTS[CUSTOMERS[0]])


def moved_pair() -> tuple[ShardNode, ShardNode]:
    """Shards 0 and 1 after MOVING_SLOT went from 0 to 1."""
    source = ShardNode(seed_state(0), SlotMap.initial(SHARDS))
    target = ShardNode(seed_state(1), SlotMap.initial(SHARDS))
    record = start_move(SlotMap.initial(SHARDS), MOVING_SLOT, 1)
    while record.phase != Phase.DONE:
        advance(record, source, target)
    return source, target


def test_a_read_by_id_on_the_home_shard_skips_the_credit_leg_of_a_moved_debtors_payment() -> None:
    # A moved debtor pays a creditor on its old home shard: the payment (named by that home)
    # is on the new owner, its credit leg, under the same id, on the home. Found by the model.
    source, target = moved_pair()
    agreement = AGREEMENTS[CUSTOMERS[0]]
    payment_id = payment_id_for(PARTNER, "k", shard_of(agreement, SHARDS))
    assert shard_of_payment(payment_id, SHARDS) == source.shard
    to = creditor_shard(target, CUSTOMERS[2])
    command = PaymentCommand(payment_id, PARTNER, agreement, 100, CURRENCY, CUSTOMERS[2], to, "r", "h", DAY0_MS)
    (code, _), _ = decide(target, lambda s, ws: s.execute_payment(command, ws))
    assert code == Code.OK and to == source.shard and set(target.outbox) == {payment_id}
    code, _ = decide(source, lambda s, ws: s.execute_credit(target.outbox[payment_id], ws))
    assert code == Code.OK and source.state.transfers[payment_id].kind == Kind.CREDIT_LEG
    assert locate(source, payment_id) is None  # not "held here": that row is the leg
    assert locate(target, payment_id) is True


def test_a_fenced_slots_creditor_is_remote_for_the_source() -> None:
    source = ShardNode(seed_state(0), SlotMap.initial(SHARDS))
    target = ShardNode(seed_state(1), SlotMap.initial(SHARDS))
    record = start_move(SlotMap.initial(SHARDS), MOVING_SLOT, 1)
    assert creditor_shard(source, CUSTOMERS[0]) == 0 and creditor_shard(source, SETTLEMENT) == 0
    while record.phase != Phase.FINAL:
        advance(record, source, target)
    # fenced: a payment from another slot of shard 0 to this creditor must go to the target,
    # or it would credit the copy RELEASE drops
    assert creditor_shard(source, CUSTOMERS[0]) == 1 and creditor_shard(source, CUSTOMERS[2]) == 0


# ---- the model test ---------------------------------------------------------------------------
class SlotMoveMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.map0 = SlotMap.initial(SHARDS)
        self.nodes = [ShardNode(seed_state(shard), self.map0) for shard in range(SHARDS)]
        self.record: MoveRecord = start_move(self.map0, MOVING_SLOT, 1)
        self.moves_started = 1
        self.pending_acks: list[list[tuple[str, bool]]] = [[] for _ in range(SHARDS)]
        self.clock_ms = DAY0_MS
        self.keys = 0
        # acknowledged commands: id -> (kind, the original answer)
        self.acked: dict[str, tuple[str, tuple[Any, ...]]] = {}
        self.unanswered: dict[str, tuple[str, tuple[Any, ...]]] = {}  # committed, the answer lost
        self.sent_payments: list[tuple[str, PaymentCommand]] = []  # (key, command) of every attempt
        self.refundable: list[str] = []
        self.fanouts = 0
        # A warm start: payments of every kind, two cross-shard legs in flight (one each way
        # across the moving slot), so that short runs already move a slot with legs pending.
        for debtor, creditor, amount_minor in (
            (CUSTOMERS[0], CUSTOMERS[3], 400),  # moving slot -> shard 1: a leg in shard 0's outbox
            (CUSTOMERS[3], CUSTOMERS[1], 300),  # shard 1 -> moving slot: a leg in shard 1's outbox
            (CUSTOMERS[2], CUSTOMERS[0], 200),  # shard 0, into the moving slot
            (CUSTOMERS[1], SETTLEMENT, 500),
        ):
            self.pay(debtor, creditor, amount_minor)
        assert len(self.acked) == 4 and all(node.outbox for node in self.nodes)

    # -- the gateway: resolve, route, follow one redirect ---------------------------------------
    def tick(self) -> int:
        self.clock_ms += 1_000
        return self.clock_ms

    def live_map(self) -> SlotMap:
        return self.record.slot_map

    def resolve(self, entity_id: str, home: int) -> ShardNode | NotYet | None:
        """From the id's home shard: held there, a redirect to its slot's owner, a fenced
        holder's Moved (followed), or, for an id a later owner made under an old home name, a
        fan-out over the shards. NotYet: the slot is cutting over (the partner retries)."""
        node = self.nodes[home]
        known_slot: int | None = None
        for _ in range(4):
            if known_slot is not None:
                answer = guard(node, known_slot)
                if isinstance(answer, NotYet):
                    return answer
                if isinstance(answer, Moved):
                    node = self.nodes[answer.shard]
                    continue
            where = locate(node, entity_id)
            if where is True:
                known_slot = self.slot_of_held(node, entity_id)
                if guard(node, known_slot) is None:
                    return node
            elif isinstance(where, int):
                known_slot = where
                node = self.nodes[self.live_map().shard_for_slot(where)]
            else:
                return self.fan_out(entity_id)
        return None

    def fan_out(self, entity_id: str) -> ShardNode | NotYet | None:
        self.fanouts += 1
        for node in self.nodes:
            if locate(node, entity_id) is not True:
                continue
            slot = self.slot_of_held(node, entity_id)
            answer = guard(node, slot)
            if answer is None:
                return node
            if isinstance(answer, Moved) and isinstance(guard(self.nodes[answer.shard], slot), NotYet):
                return NotYet(slot)
        return None

    @staticmethod
    def slot_of_held(node: ShardNode, entity_id: str) -> int:
        agreement = node.state.agreements.get(entity_id)
        if agreement is not None:
            return agreement_slot(agreement)
        slot = transfer_slot(node.state.transfers[entity_id])
        assert slot is not None
        return slot

    # -- commands ------------------------------------------------------------------------------
    def place(self, key: str, debtor: str, creditor: str, amount_minor: int, *, answer_lost: bool = False) -> None:
        agreement = AGREEMENTS[debtor]
        # The id names the agreement's home shard (version 1), never its current owner, so a
        # retry after any move computes the same id.
        payment_id = payment_id_for(PARTNER, key, shard_of(agreement, SHARDS))
        node = self.resolve(agreement, shard_of(agreement, SHARDS))
        command = PaymentCommand(
            payment_id, PARTNER, agreement, amount_minor, CURRENCY, creditor, 0, "r", f"{amount_minor}-{creditor}", 0
        )
        self.sent_payments.append((key, command))
        if not isinstance(node, ShardNode):
            return  # not acknowledged (cutting over): the partner retries
        command.creditor_shard = creditor_shard(node, creditor)
        command.at_ms = self.tick()
        (code, transfer), _ = decide(node, lambda s, ws: s.execute_payment(command, ws))
        self.answered(payment_id, code, transfer, answer_lost)

    def answered(self, payment_id: str, code: str, transfer: Transfer | None, answer_lost: bool) -> None:
        """Record the answer; answer_lost: committed, but the partner never heard (a crash
        or a timeout between the commit and the reply): only a retry can tell it."""
        if code == Code.OK:
            assert transfer is not None
            assert payment_id not in self.acked and payment_id not in self.unanswered, f"{payment_id} decided twice"
            answer = ("payment", (transfer.amount_minor, transfer.reasons, transfer.credit_account))
            if answer_lost:
                self.unanswered[payment_id] = answer
                return
            self.acked[payment_id] = answer
            if transfer.status != Status.REJECTED and transfer.creditor_account == SETTLEMENT:
                self.refundable.append(payment_id)
        elif code == Code.REPLAY:
            assert transfer is not None
            original = self.acked.get(payment_id) or self.unanswered[payment_id]
            assert original == (
                "payment",
                (transfer.amount_minor, transfer.reasons, transfer.credit_account),
            ), "a retry answered something else than the original"
            if not answer_lost and payment_id in self.unanswered:
                self.acked[payment_id] = self.unanswered.pop(payment_id)

    @rule(
        debtor=st.sampled_from(CUSTOMERS),
        creditor=st.sampled_from((*CUSTOMERS, SETTLEMENT)),
        amount_minor=st.integers(1, 3_000),
        answer_lost=st.sampled_from((False, False, False, True)),
    )
    def pay(self, debtor: str, creditor: str, amount_minor: int, answer_lost: bool = False) -> None:
        if creditor == debtor:
            return
        self.keys += 1
        self.place(f"k{self.keys}", debtor, creditor, amount_minor, answer_lost=answer_lost)

    @precondition(lambda self: self.sent_payments)
    @rule(pick=st.integers(0, 10_000), answer_lost=st.booleans())
    def retry(self, pick: int, answer_lost: bool) -> None:
        key, command = self.sent_payments[pick % len(self.sent_payments)]
        debtor = next(d for d, a in AGREEMENTS.items() if a == command.agreement_id)
        self.place(key, debtor, command.creditor_account, command.amount_minor, answer_lost=answer_lost)

    @precondition(lambda self: self.refundable)
    @rule(pick=st.integers(0, 10_000), amount_minor=st.integers(1, 2_000))
    def refund(self, pick: int, amount_minor: int) -> None:
        payment_id = self.refundable[pick % len(self.refundable)]
        self.keys += 1
        home = shard_of_payment(payment_id, SHARDS)
        assert home is not None
        refund_id = refund_id_for(PARTNER, f"r{self.keys}", home)
        node = self.resolve(payment_id, home)
        if not isinstance(node, ShardNode):
            return
        command = RefundCommand(refund_id, PARTNER, payment_id, amount_minor, None, None, "h", self.tick())
        (code, transfer), _ = decide(node, lambda s, ws: s.execute_refund(command, ws))
        if code == Code.OK:
            assert transfer is not None
            self.acked[refund_id] = ("refund", (transfer.amount_minor, transfer.status))
            assert shard_of_refund(refund_id, SHARDS) == home

    @rule(debtor=st.sampled_from(CUSTOMERS), action=st.sampled_from(("suspend", "resume", "resume", "revoke")))
    def change_agreement(self, debtor: str, action: str) -> None:
        if action == "revoke" and self.keys % 5:
            action = "suspend"  # revoking ends an agreement for good: keep it rare
        agreement = AGREEMENTS[debtor]
        node = self.resolve(agreement, shard_of(agreement, SHARDS))
        if isinstance(node, ShardNode):
            at_ms = self.tick()
            decide(node, lambda s, ws: s.transition_agreement(agreement, None, action, "customer", at_ms, ws))

    # -- the relays ----------------------------------------------------------------------------
    @rule(shard=st.integers(0, SHARDS - 1), pick=st.integers(0, 10_000))
    def relay_send(self, shard: int, pick: int) -> None:
        node = self.nodes[shard]
        if not node.outbox:
            return
        leg = node.outbox[sorted(node.outbox)[pick % len(node.outbox)]]
        to = node.slot_map.shard_for(leg.creditor_account)
        for _ in range(2):
            if to == shard:
                return  # the move makes it local; INSTALL settles it
            target = self.nodes[to]
            answer = guard(target, slot_of(leg.creditor_account))
            if isinstance(answer, Moved):
                to = answer.shard
                continue
            if isinstance(answer, NotYet):
                return
            code, _ = decide(target, lambda s, ws: s.execute_credit(leg, ws))
            assert code in (Code.OK, Code.REPLAY), code
            self.pending_acks[shard].append((leg.transfer_id, False))
            return

    @rule(shard=st.integers(0, SHARDS - 1))
    def relay_ack(self, shard: int) -> None:
        if not self.pending_acks[shard]:
            return
        transfer_id, held = self.pending_acks[shard].pop(0)
        node = self.nodes[shard]
        if transfer_id in node.outbox:
            decide(node, lambda s, ws: s.mark_delivered(transfer_id, ws, held=held))

    # -- the move and the crashes --------------------------------------------------------------
    @rule(steps=st.integers(1, 3), coordinator_crash_at=st.integers(0, 4))
    def move_steps(self, steps: int, coordinator_crash_at: int) -> None:
        """Up to three of the move's steps; the coordinator may crash after one step's effect
        and before its record (then that step runs again)."""
        for index in range(steps):
            record = self.record
            if record.phase == Phase.DONE:
                if self.moves_started < 2:
                    # Move it back: from the first move's map, redirects and joined legs.
                    self.record = start_move(record.slot_map, MOVING_SLOT, record.source)
                    self.moves_started += 1
                return
            source, target = self.nodes[record.source], self.nodes[record.target]
            advance(record, source, target, record_step=index != coordinator_crash_at)

    @rule(shard=st.integers(0, SHARDS - 1))
    def crash(self, shard: int) -> None:
        reload(self.nodes[shard])
        self.pending_acks[shard] = []  # sent, not acknowledged: the outbox sends them again

    # -- what must hold ------------------------------------------------------------------------
    def live_rows(self) -> tuple[dict[str, int], list[Transfer]]:
        """The customers' balances and the journal rows that count: a slot's rows on its owner
        under the coordinator's map, or the target's staged copy while it is importing."""
        balances: dict[str, int] = {}
        rows: list[Transfer] = []
        slot_map = self.live_map()
        for node in self.nodes:
            staged = node.staged.get(MOVING_SLOT)
            importing = node.roles.get(MOVING_SLOT, (None,))[0] == Role.IMPORTING
            owns_staged = importing and slot_map.shard_for_slot(MOVING_SLOT) == node.shard
            for account in node.state.accounts.values():
                slot = slot_of(account.id) if account.kind == "customer" else None
                if slot is None:
                    balances[f"{account.id}@{node.shard}"] = account.committed_balance_minor
                elif slot_map.shard_for_slot(slot) == node.shard and not (slot == MOVING_SLOT and owns_staged):
                    balances[account.id] = account.committed_balance_minor
            for transfer in [*node.state.transfers.values(), *node.joined_legs.values()]:
                slot = transfer_slot(transfer)
                assert slot is not None
                if slot_map.shard_for_slot(slot) == node.shard and not (slot == MOVING_SLOT and owns_staged):
                    rows.append(transfer)
            if owns_staged:
                assert staged is not None
                image: SlotImage = staged
                for account in image.accounts.values():
                    balances[account.id] = account.committed_balance_minor
                rows.extend(image.transfers.values())
        return balances, rows

    @invariant()
    def books_balance_and_every_command_is_applied_once(self) -> None:
        if not hasattr(self, "nodes"):
            return
        balances, rows = self.live_rows()
        assert sum(balances.values()) == 0, "money created or destroyed"
        assert set(CUSTOMERS) <= set(balances), "an account has no live owner"
        by_kind: dict[str, list[str]] = {}
        for row in rows:
            by_kind.setdefault(row.kind, []).append(row.id)
        for kind, ids in by_kind.items():
            assert len(ids) == len(set(ids)), f"a {kind} row lives twice"
        acked_payments = {i for i, (kind, _) in self.acked.items() if kind == "payment"} | set(self.unanswered)
        acked_refunds = {i for i, (kind, _) in self.acked.items() if kind == "refund"}
        assert set(by_kind.get(Kind.PAYMENT, [])) == acked_payments
        assert set(by_kind.get(Kind.REFUND, [])) == acked_refunds
        # each customer's balance is what its live rows say, each counted once
        expected = dict.fromkeys(CUSTOMERS, BALANCE_MINOR)
        for row in rows:
            if row.status == Status.REJECTED:
                continue
            for account_id, sign in ((row.debit_account, -1), (row.credit_account, 1)):
                if account_id in expected:
                    expected[account_id] += sign * row.amount_minor
        assert {c: balances[c] for c in CUSTOMERS} == expected
        # the clearing stripes hold exactly the accepted cross-shard payments not yet credited
        legs = set(by_kind.get(Kind.CREDIT_LEG, []))
        in_flight = sum(
            row.amount_minor
            for row in rows
            if row.kind == Kind.PAYMENT
            and row.status != Status.REJECTED
            and row.credit_account == CLEARING_ACCOUNT
            and row.id not in legs
        )
        clearing = sum(v for k, v in balances.items() if k.startswith(CLEARING_ACCOUNT + "@"))
        assert clearing == in_flight
        assert legs <= set(by_kind.get(Kind.PAYMENT, [])), "a credit without its payment"

    @invariant()
    def every_id_resolves_to_its_one_live_holder(self) -> None:
        if not hasattr(self, "nodes"):
            return
        for debtor, agreement in AGREEMENTS.items():
            found = self.resolve(agreement, shard_of(agreement, SHARDS))
            owner = self.live_map().shard_for(debtor)
            assert isinstance(found, NotYet) or (found is not None and found.shard == owner), agreement
        for entity_id, (kind, _) in self.acked.items():
            home = shard_of_payment(entity_id, SHARDS) if kind == "payment" else shard_of_refund(entity_id, SHARDS)
            assert home is not None
            found = self.resolve(entity_id, home)
            assert isinstance(found, NotYet) or found is not None, entity_id
            if isinstance(found, ShardNode):
                held = found.state.transfers[entity_id]
                assert held.kind == kind
                assert found.shard == self.live_map().shard_for_slot(transfer_slot(held) or 0)

    def teardown(self) -> None:
        if not hasattr(self, "nodes"):
            return
        # What the run reached before the end (hypothesis --hypothesis-show-statistics).
        event(f"moves started {self.moves_started}, phase reached {self.record.phase}")
        event(f"joined legs {sum(len(n.joined_legs) for n in self.nodes)}")
        event(f"commands acknowledged {min(len(self.acked), 20) // 5 * 5}+")
        event(f"fan-outs {min(self.fanouts, 1)}+")
        # Finish the move, then deliver every leg: nothing may stay in flight.
        while self.record.phase != Phase.DONE:
            advance(self.record, self.nodes[self.record.source], self.nodes[self.record.target])
        for _ in range(200):
            if not any(node.outbox for node in self.nodes) and not any(self.pending_acks):
                break
            for shard in range(SHARDS):
                self.relay_send(shard, 0)
                self.relay_ack(shard)
        assert not any(node.outbox for node in self.nodes), "a leg never delivered"
        self.books_balance_and_every_command_is_applied_once()
        _, rows = self.live_rows()
        assert all(row.status != Status.IN_PROCESS for row in rows), "a payment left in process"
        assert sum(node.state.accounts[CLEARING_ACCOUNT].balance_minor for node in self.nodes) == 0


SlotMoveMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_slot_move_model = SlotMoveMachine.TestCase


class SlotMoveMachineLong(SlotMoveMachine):
    pass


SlotMoveMachineLong.TestCase.settings = settings(
    max_examples=1_000, stateful_step_count=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_slot_move_model_long = pytest.mark.slow(SlotMoveMachineLong.TestCase)
