"""Moving one slot from a source shard to a target shard (issue 21): pure code, no I/O.

NOT wired into any process yet (ARCHITECTURE.md, "Elastic shards"). What is here:

- `export_slot` / `export_tail` / `import_slot` / `drop_slot`: a slot's rows out of one
  ShardState and into another. A slot's rows are its customer accounts (with balances), the
  agreements whose debtor is in the slot (with their period spend; the visibility and pending
  indexes are rebuilt by `ShardState.load_agreement`), the transfers whose owning account is in
  the slot (`transfer_slot`: a payment's debtor, a refund's refunded debtor, a funding's or a
  credit leg's credited account: so every idempotency answer moves with the account it
  protects), the outbox legs of the slot's payments, and the fraud window state keyed by the
  slot's debtors (`SlotImage`). Striped system accounts (funding, clearing, settlement) exist
  on every shard and never move.
- the protocol, as a state machine over two `ShardNode`s and a coordinator `MoveRecord`
  (`advance` runs one step): BEGIN (source MIGRATING, target IMPORTING) -> SNAPSHOT (the
  target stages a copy; it decides nothing from it) -> TAIL (the target stages what changed
  since) -> FENCE (the source refuses the slot's commands: `Moved(target, version + 1)`) ->
  FINAL (the last tail; complete, because the source decides nothing more for the slot) ->
  SWITCH (the coordinator's map goes to version + 1: the commit point of the move) -> INSTALL
  (the target puts the staged rows into its state, settles the credit legs the move made
  local, and starts deciding for the slot) -> RELEASE (the source drops the slot's rows and
  keeps a redirect per agreement and transfer id it gave away) -> DONE.

Durable, and what a crash loses (the model test crashes each party at every step):

- the coordinator's `MoveRecord` and the slot map (a control store: etcd or a control
  database, not built). A coordinator crash loses nothing: the step it was running either
  wrote its effect on a shard (durable there) or did not, and the record still names that
  step, so the restarted coordinator runs it again. Every step is idempotent for that reason.
- each shard's committed rows: its state (accounts, agreements, transfers), its outbox, and
  the protocol's own rows (`ShardNode.roles`, `staged`, `redirects`, `joined_legs`,
  `slot_map`), each written in one transaction with the step's effect. A shard crash loses
  its memory only: the decisions' state is reloaded from the rows, the fraud windows are
  rebuilt from the journal (`ledger.fraud_port.replay_journal`), and the relay's sent but
  unacknowledged legs are sent again from the outbox (the creditor dedupes). A crashed
  target still has its staged image; a crashed source still refuses a fenced slot.

An agreement leaves through `ShardState.unload_agreement` (load_agreement's inverse, every
index included) and the fraud windows and first-payment pairs through `FraudFilter`'s
`window_stores`, `first_payment_pairs`, `add_first_payment_pair` and
`forget_first_payment_pair`. Accounts, transfers and `next_seq` are still read and written as
ShardState's attributes (`accounts`, `visibility`, `transfers`).

Two things the wiring must change elsewhere (found while building this, not done here):
- a payment and its credit leg share one transfer id on two shards; a move can bring both to
  one shard, and the transfers table's primary key cannot hold both. Here the payment keeps
  the id and the leg half is kept in `ShardNode.joined_legs` (`import_slot`); PostgreSQL
  needs the leg row under an id of its own.
- `ShardState.execute_credit` dedupes a leg by `transfers[leg id]`, which after such a join
  is the payment. So INSTALL settles every leg the move made local (`settle_local_legs`)
  before the target decides anything, and a late resend then correctly answers REPLAY.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from fraud import FraudFilter
from kernel.ids import CLEARING_ACCOUNT, is_striped
from kernel.slots import SlotMap, slot_of

from .model import Account, Agreement, CreditLeg, Kind, Status, Transfer, invariant
from .state import ShardState

__all__ = [
    "MOVE_TAIL_ROUNDS_MAX",
    "MoveRecord",
    "Moved",
    "NotYet",
    "Phase",
    "Role",
    "ShardNode",
    "SlotImage",
    "account_slot",
    "advance",
    "agreement_slot",
    "creditor_shard",
    "drop_slot",
    "export_slot",
    "export_tail",
    "guard",
    "import_slot",
    "locate",
    "settle_local_legs",
    "start_move",
    "transfer_slot",
]

# Tail copies a coordinator makes before it fences the source: each copies what the source
# decided for the slot during the previous one, so a few rounds shrink the tail the fenced
# cut-over waits for. The pure protocol below makes one (the model test needs no more).
MOVE_TAIL_ROUNDS_MAX: Final = 8


# ---- which slot a row belongs to ------------------------------------------------------------
def account_slot(account_id: str) -> int | None:
    """A customer account's slot; None for striped system accounts (on every shard)."""
    return None if is_striped(account_id) else slot_of(account_id)


def agreement_slot(agreement: Agreement) -> int:
    """Its debtor's slot (not its own id's: an agreement id is colocated with its debtor by
    shard, `kernel.ids.new_agreement_id`, so the two slots differ in general)."""
    return slot_of(agreement.debtor_account)


def transfer_slot(transfer: Transfer) -> int | None:
    """The slot of the customer account a transfer belongs with: a payment's debtor, a
    refund's refunded debtor (its credit account), a funding's or a credit leg's credited
    account. None if that account is striped (nothing of a slot)."""
    owner = transfer.debit_account if transfer.kind == Kind.PAYMENT else transfer.credit_account
    return account_slot(owner)


# ---- the image ------------------------------------------------------------------------------
@dataclass(slots=True)
class SlotImage:
    """Every row of one slot, copied (no object is shared with the state it came from)."""

    slot: int
    source_shard: int
    accounts: dict[str, Account] = field(default_factory=dict)
    agreements: dict[str, Agreement] = field(default_factory=dict)
    transfers: dict[str, Transfer] = field(default_factory=dict)  # by id; installed in source seq order
    outbox: dict[str, CreditLeg] = field(default_factory=dict)  # legs of the slot's payments not yet delivered
    # fraud window store key (attribute names) -> key value -> its KeyState; only the stores
    # keyed by the debtor (windows keyed by ip or device alone span slots and stay).
    windows: dict[tuple[str, ...], dict[Any, Any]] = field(default_factory=dict)
    first_payment_pairs: list[tuple[str, str]] = field(default_factory=list)  # (debtor, creditor)

    def transfer_ids(self) -> list[str]:
        """The id-filter entries the target adds (ledger/idfilter.py: a Bloom filter, so the
        source cannot take them out; a stale entry costs a lookup, never a wrong answer)."""
        return list(self.transfers)

    def merged(self, tail: SlotImage) -> SlotImage:
        """This image brought up to date by a later tail (`export_tail`): accounts,
        agreements, outbox and windows as the tail has them, transfers added or replaced."""
        invariant(tail.slot == self.slot, "a tail of another slot")
        transfers = dict(self.transfers)
        transfers.update(tail.transfers)
        return SlotImage(
            self.slot,
            tail.source_shard,
            tail.accounts,
            tail.agreements,
            transfers,
            tail.outbox,
            tail.windows,
            tail.first_payment_pairs,
        )


def _fraud_filter(state: ShardState) -> FraudFilter | None:
    return state.fraud if isinstance(state.fraud, FraudFilter) else None


def _debtor_position(store_key: tuple[str, ...]) -> int | None:
    return store_key.index("debtor") if "debtor" in store_key else None


def _window_debtor(store_key: tuple[str, ...], position: int, key_value: Any) -> Any:
    return key_value if len(store_key) == 1 else key_value[position]


def _slot_windows(engine: Any, slot: int) -> Iterator[tuple[tuple[str, ...], Any, list[Any]]]:
    """(store key, store, the key values keyed by a debtor of `slot`) of every window store
    keyed by the debtor; stores keyed by ip or device alone span slots and are left out."""
    for store_key, store in engine.window_stores().items():
        position = _debtor_position(store_key)
        if position is not None:
            held = [k for k in store.states if slot_of(_window_debtor(store_key, position, k)) == slot]
            yield store_key, store, held


def export_slot(
    state: ShardState,
    slot: int,
    outbox: dict[str, CreditLeg] | None = None,
    joined_legs: dict[str, Transfer] | None = None,
) -> SlotImage:
    """Copy every row of `slot` out of `state` (and of `outbox`, the shard's undelivered legs).

    The transfers are those `state.transfers` holds: all of them in memory (the model tests
    keep every one); a live shard's export reads the slot's journal from PostgreSQL instead
    (not built), since the cache holds only recent ones."""
    image = SlotImage(slot, state.shard)
    for account_id, account in state.accounts.items():
        if account_slot(account_id) == slot:
            image.accounts[account_id] = copy.deepcopy(account)
    for agreement_id, agreement in state.agreements.items():
        if agreement_slot(agreement) == slot:
            image.agreements[agreement_id] = copy.deepcopy(agreement)
    for transfer_id, transfer in state.transfers.items():
        if transfer.committed and transfer_slot(transfer) == slot:
            image.transfers[transfer_id] = copy.deepcopy(transfer)
    for transfer_id, leg_row in (joined_legs or {}).items():
        # A leg joined to its payment here (import_slot) belongs with its creditor's slot.
        if transfer_slot(leg_row) == slot:
            image.transfers[transfer_id] = copy.deepcopy(leg_row)
    for transfer_id, leg in (outbox or {}).items():
        payment = state.transfers.get(transfer_id)
        invariant(payment is not None, f"outbox leg {transfer_id} without its payment")
        assert payment is not None
        if transfer_slot(payment) == slot:
            image.outbox[transfer_id] = copy.deepcopy(leg)
    engine = _fraud_filter(state)
    if engine is not None:
        for store_key, store, held in _slot_windows(engine, slot):
            if held:
                image.windows[store_key] = {key_value: copy.deepcopy(store.states[key_value]) for key_value in held}
        image.first_payment_pairs = [pair for pair in engine.first_payment_pairs() if slot_of(pair[0]) == slot]
    return image


def export_tail(
    state: ShardState,
    slot: int,
    since: SlotImage,
    outbox: dict[str, CreditLeg] | None = None,
    joined_legs: dict[str, Transfer] | None = None,
) -> SlotImage:
    """What changed in `slot` since the image `since`: its accounts, agreements, outbox legs
    and windows as they are now (a slot's share of them is small), and only the transfers
    that are new or changed (a status that advanced on delivery, a refunded total). The
    wiring reads these from the journal after the snapshot's sequence number instead."""
    now = export_slot(state, slot, outbox, joined_legs)
    now.transfers = {
        transfer_id: transfer
        for transfer_id, transfer in now.transfers.items()
        if since.transfers.get(transfer_id) != transfer
    }
    return now


def drop_slot(state: ShardState, slot: int, outbox: dict[str, CreditLeg] | None = None) -> list[str]:
    """Take every row of `slot` out of `state` (and `outbox`); returns the agreement and
    transfer ids dropped (what the source keeps redirects for). Idempotent."""
    dropped: list[str] = []
    for agreement_id, agreement in list(state.agreements.items()):
        if agreement_slot(agreement) != slot:
            continue
        state.unload_agreement(agreement_id)
        dropped.append(agreement_id)
    for account_id in [a for a in state.accounts if account_slot(a) == slot]:
        del state.accounts[account_id]
        state.visibility.pop(account_id, None)
    transfer_ids = [t for t, transfer in state.transfers.items() if transfer_slot(transfer) == slot]
    if outbox is not None:
        # The slot's legs went with its payments (SlotImage.outbox); the target delivers them.
        for transfer_id in set(transfer_ids) & set(outbox):
            del outbox[transfer_id]
    for transfer_id in transfer_ids:
        del state.transfers[transfer_id]
    dropped.extend(transfer_ids)
    engine = _fraud_filter(state)
    if engine is not None:
        for _, store, held in _slot_windows(engine, slot):
            for key_value in held:
                del store.states[key_value]
        for pair in [pair for pair in engine.first_payment_pairs() if slot_of(pair[0]) == slot]:
            engine.forget_first_payment_pair(pair)
    return dropped


def import_slot(
    state: ShardState,
    image: SlotImage,
    *,
    outbox: dict[str, CreditLeg] | None = None,
    joined_legs: dict[str, Transfer] | None = None,
) -> list[str]:
    """Put `image`'s rows into `state` (the target; the slot's rows it held before, if any,
    are replaced). Transfers get the target's sequence numbers in the source's order.

    A transfer id the target already holds is the other half of a cross-shard payment the
    move made local: the payment keeps the id in `state.transfers` and the credit leg goes to
    `joined_legs` (see the module's docstring). Any other clash is a broken invariant.
    Returns the transfer ids for the target's id filter."""
    drop_slot(state, image.slot)
    for account in image.accounts.values():
        state.load_account(copy.deepcopy(account))
    for agreement in image.agreements.values():
        state.load_agreement(copy.deepcopy(agreement))
    legs = joined_legs if joined_legs is not None else {}
    for transfer in sorted(image.transfers.values(), key=lambda t: t.seq):
        incoming = copy.deepcopy(transfer)
        incoming.seq = state.next_seq
        state.next_seq += 1
        held = state.transfers.get(incoming.id)
        if held is None:
            state.remember(incoming)
            continue
        kinds = {held.kind, incoming.kind}
        invariant(kinds == {Kind.PAYMENT, Kind.CREDIT_LEG}, f"transfer {incoming.id} on both shards")
        if incoming.kind == Kind.PAYMENT:
            legs[held.id] = held
            state.remember(incoming)
        else:
            legs[incoming.id] = incoming
    if outbox is not None:
        for transfer_id, leg in image.outbox.items():
            outbox.setdefault(transfer_id, copy.deepcopy(leg))
    engine = _fraud_filter(state)
    if engine is not None:
        for store_key, key_states in image.windows.items():
            store = engine.window_stores().get(store_key)
            if store is None:
                continue  # the target's rule set reads no window over this key
            for key_value, key_state in key_states.items():
                store.states[key_value] = copy.deepcopy(key_state)
                store.states.move_to_end(key_value)
                if len(store.states) > store.keys_max:
                    store.states.popitem(last=False)
                    store.evicted_keys += 1
        for pair in image.first_payment_pairs:
            engine.add_first_payment_pair(pair)
    return image.transfer_ids()


# ---- the protocol ---------------------------------------------------------------------------
class Role(enum.StrEnum):
    MIGRATING = "migrating"  # source: still deciding for the slot while the target copies
    FENCED = "fenced"  # source: refuses the slot's commands (Moved)
    IMPORTING = "importing"  # target: stages the slot, decides nothing for it (NotYet)


class Phase(enum.StrEnum):
    BEGIN = "begin"
    SNAPSHOT = "snapshot"
    TAIL = "tail"
    FENCE = "fence"
    FINAL = "final"
    SWITCH = "switch"
    INSTALL = "install"
    RELEASE = "release"
    DONE = "done"


_NEXT: Final = {
    Phase.BEGIN: Phase.SNAPSHOT,
    Phase.SNAPSHOT: Phase.TAIL,
    Phase.TAIL: Phase.FENCE,
    Phase.FENCE: Phase.FINAL,
    Phase.FINAL: Phase.SWITCH,
    Phase.SWITCH: Phase.INSTALL,
    Phase.INSTALL: Phase.RELEASE,
    Phase.RELEASE: Phase.DONE,
}


@dataclass(frozen=True, slots=True)
class Moved:
    """The answer for a slot this shard no longer decides: ask `shard`, from map `version`."""

    slot: int
    shard: int
    version: int


@dataclass(frozen=True, slots=True)
class NotYet:
    """The answer for a slot this shard is importing: retry shortly (the move is cutting over)."""

    slot: int


@dataclass(slots=True)
class ShardNode:
    """What the protocol needs of one shard. Every field but `state` stands for rows of the
    shard's database (durable); `state` is rebuilt from rows after a crash."""

    state: ShardState
    slot_map: SlotMap  # the map version this shard acts on
    outbox: dict[str, CreditLeg] = field(default_factory=dict)  # undelivered legs by transfer id
    roles: dict[int, tuple[Role, int, int]] = field(default_factory=dict)  # slot -> (role, other shard, version)
    staged: dict[int, SlotImage] = field(default_factory=dict)  # target: the slot's copy so far
    redirects: dict[str, int] = field(default_factory=dict)  # id given away -> its slot
    joined_legs: dict[str, Transfer] = field(default_factory=dict)

    @property
    def shard(self) -> int:
        return self.state.shard


def guard(node: ShardNode, slot: int) -> Moved | NotYet | None:
    """Whether `node` may decide a command of `slot` now (None: yes). A worker calls this at
    intake, before the command is queued (not wired)."""
    role = node.roles.get(slot)
    if role is not None:
        kind, other, version = role
        if kind == Role.FENCED:
            return Moved(slot, other, version)
        if kind == Role.IMPORTING:
            return NotYet(slot)
    owner = node.slot_map.shard_for_slot(slot)
    if owner != node.shard:
        return Moved(slot, owner, node.slot_map.version)
    return None


def creditor_shard(node: ShardNode, creditor_account: str) -> int:
    """Where the shard deciding a payment sends its credit, by its own map and roles: here for
    a striped account, the move's target for a slot it has fenced (its copy of that creditor
    is going away), else its map's owner. The shard decides this, not the gateway: a gateway's
    stale map could otherwise make a local payment cross-shard (a leg to itself) or credit a
    copy the move is about to drop."""
    if is_striped(creditor_account):
        return node.shard
    slot = slot_of(creditor_account)
    role = node.roles.get(slot)
    if role is not None and role[0] == Role.FENCED:
        return role[1]
    return node.slot_map.shard_for_slot(slot)


def locate(node: ShardNode, entity_id: str) -> bool | int | None:
    """Where `node` knows an agreement, payment, refund or funding id to be: True (held here),
    its slot (a redirect: ask the map's owner of that slot), or None (unknown here).

    A credit leg carries its payment's id but is never what the id names. Before slots it
    could not be on the payment's home shard (the leg is on the creditor's, another shard);
    after a move it can (a moved debtor pays a creditor on the old home), so a read by id
    must skip it, or it answers with the leg (the model test found this)."""
    transfer = node.state.transfers.get(entity_id)
    if entity_id in node.state.agreements or (transfer is not None and transfer.kind != Kind.CREDIT_LEG):
        return True
    return node.redirects.get(entity_id)


@dataclass(slots=True)
class MoveRecord:
    """The coordinator's durable record of one move, and the map it owns."""

    slot: int
    source: int
    target: int
    slot_map: SlotMap  # the authoritative map: moved (to_version) by SWITCH
    to_version: int  # the version the move switches to
    phase: Phase = Phase.BEGIN


def start_move(slot_map: SlotMap, slot: int, target: int) -> MoveRecord:
    source = slot_map.shard_for_slot(slot)
    invariant(source != target, f"slot {slot} is already on shard {target}")
    return MoveRecord(slot, source, target, slot_map, slot_map.version + 1)


def advance(record: MoveRecord, source: ShardNode, target: ShardNode, *, record_step: bool = True) -> Phase:
    """Run the step `record.phase` names; then (record_step) record the next phase. With
    record_step=False the coordinator "crashes" after the step's effect and before its
    record: the next call runs the same step again, which every step tolerates."""
    slot = record.slot
    phase = record.phase
    version = record.to_version
    if phase == Phase.BEGIN:
        source.roles[slot] = (Role.MIGRATING, target.shard, version)
        target.roles[slot] = (Role.IMPORTING, source.shard, version)
        target.staged.pop(slot, None)
    elif phase == Phase.SNAPSHOT:
        target.staged[slot] = export_slot(source.state, slot, source.outbox, source.joined_legs)
    elif phase in (Phase.TAIL, Phase.FINAL):
        staged = target.staged.get(slot)
        if staged is None:  # never copied (a target restored from an older backup): copy whole
            target.staged[slot] = export_slot(source.state, slot, source.outbox, source.joined_legs)
        else:
            target.staged[slot] = staged.merged(
                export_tail(source.state, slot, staged, source.outbox, source.joined_legs)
            )
    elif phase == Phase.FENCE:
        # Between two batches: what the source decided before is in the next tail.
        source.roles[slot] = (Role.FENCED, target.shard, version)
    elif phase == Phase.SWITCH:
        if record.slot_map.version < record.to_version:
            record.slot_map = record.slot_map.moved(slot, target.shard)
    elif phase == Phase.INSTALL:
        # One target transaction: the rows, the settled legs, the role and the map together;
        # the role still IMPORTING is what says it has not happened yet.
        role = target.roles.get(slot)
        if role is not None and role[0] == Role.IMPORTING:
            image = target.staged[slot]
            import_slot(target.state, image, outbox=target.outbox, joined_legs=target.joined_legs)
            settle_local_legs(target)
            del target.roles[slot]
            del target.staged[slot]
        if target.slot_map.version < record.slot_map.version:
            target.slot_map = record.slot_map
    elif phase == Phase.RELEASE:
        # One source transaction: the redirects, the rows dropped, the map; the fence stays
        # until the map says the slot is elsewhere (then the map answers Moved).
        for entity_id in drop_slot(source.state, slot, source.outbox):
            source.redirects[entity_id] = slot
        for transfer_id, leg_row in list(source.joined_legs.items()):
            if transfer_slot(leg_row) == slot:
                del source.joined_legs[transfer_id]  # went with its creditor's slot
            elif transfer_id not in source.state.transfers:
                # Its payment went with the debtor's slot: the leg is a plain row here again.
                del source.joined_legs[transfer_id]
                source.state.remember(leg_row)
        if source.slot_map.version < record.slot_map.version:
            source.slot_map = record.slot_map
        source.roles.pop(slot, None)
    if record_step and phase != Phase.DONE:
        record.phase = _NEXT[phase]
    return record.phase


def settle_local_legs(node: ShardNode) -> list[str]:
    """Complete the outbox legs whose creditor is now on this shard (a move made the payment
    local): apply each one not yet applied here, once, and take it out of the outbox. Returns
    the ids applied now."""
    state = node.state
    applied_now: list[str] = []
    for transfer_id, leg in list(node.outbox.items()):
        creditor = state.accounts.get(leg.creditor_account)
        if creditor is None or is_striped(creditor.id):
            continue
        payment = state.transfers.get(transfer_id)
        invariant(payment is not None and payment.kind == Kind.PAYMENT, f"outbox leg {transfer_id} without payment")
        assert payment is not None
        # A leg applied here before the move joined its payment lives in joined_legs (import_slot).
        if transfer_id not in node.joined_legs:
            clearing = state.accounts[CLEARING_ACCOUNT]
            clearing.balance_minor -= leg.amount_minor
            creditor.balance_minor += leg.amount_minor
            clearing.committed_balance_minor -= leg.amount_minor
            creditor.committed_balance_minor += leg.amount_minor
            node.joined_legs[transfer_id] = Transfer(
                id=transfer_id,
                seq=state.next_seq,
                kind=Kind.CREDIT_LEG,
                debit_account=CLEARING_ACCOUNT,
                credit_account=creditor.id,
                amount_minor=leg.amount_minor,
                currency=leg.currency,
                status=Status.COMPLETED,
                created_at_ms=leg.at_ms,
                creditor_account=creditor.id,
                reference=f"from shard {leg.source_shard}",
                committed=True,
            )
            state.next_seq += 1
            applied_now.append(transfer_id)
        if payment.status == Status.IN_PROCESS:
            payment.status = Status.COMPLETED
        del node.outbox[transfer_id]
    return applied_now
