"""The shard's agreements in memory: the index that answers visibility and the pending caps
at once, and the agreement decisions (create, transition) and queries (list, can_see).

AgreementStateMixin, a part of ShardState (ledger/state.py); the attributes it uses are set
by ShardState.__init__, which also explains the index. The lifecycle rules themselves are
ledger/agreements.py's. Split out of ledger/state.py (issue 18, a pure move); ledger.state
re-exports the public names.
"""

from __future__ import annotations

import bisect
from typing import Any

from sortedcontainers import SortedList

from kernel.limits import PENDING_PER_ACCOUNT_MAX, PENDING_PER_PARTNER_MAX

from . import agreements as mandates
from .model import Account, Agreement, Code
from .undo import UndoLog
from .writeset import WriteSet

__all__ = [
    "AGREEMENT_SCAN_MAX",
    "PENDING_PER_ACCOUNT_MAX",
    "PENDING_PER_PARTNER_MAX",
    "VISIBLE_STATUSES",
    "AgreementStateMixin",
    "pending_share",
]

# Agreement statuses under which the partner may read the customer's account.
VISIBLE_STATUSES = frozenset({mandates.AgreementStatus.AUTHORISED, mandates.AgreementStatus.SUSPENDED})
# Agreements one list call looks at on one shard: a page filtered by status may come back
# short (with a cursor to go on) rather than scan a partner's whole book in one call.
AGREEMENT_SCAN_MAX = 1_000
# The pending caps (PENDING_PER_ACCOUNT_MAX, PENDING_PER_PARTNER_MAX: kernel.limits): the total
# is shared out over the shards (pending_share), so all shards together never exceed it.
# Stands for "no end" (valid_to NULL) in the sorted end lists below: above any time in ms.
_NO_END = 2**63


def pending_share(total_max: int, shard_count: int) -> int:
    """One shard's part of a partner's total pending cap: the floor of an even split (at least
    1), so the shards' parts never add up to more than the total (unless it is below the
    shard count)."""
    return max(1, total_max // shard_count)


def _insort(index: dict[Any, int | list[int]], key: Any, value: int) -> None:
    """Add value to the sorted multiset at index[key]: a bare int while it holds one value (the
    usual case: one agreement per account and partner), a sorted list beyond."""
    values = index.get(key)
    if values is None:
        index[key] = value
    elif isinstance(values, int):
        index[key] = [values, value] if values <= value else [value, values]
    else:
        bisect.insort(values, value)


def _discard(index: dict[Any, int | list[int]], key: Any, value: int) -> None:
    values = index.get(key)
    if values is None:
        return
    if isinstance(values, int):
        if values == value:
            del index[key]
        return
    position = bisect.bisect_left(values, value)
    if position < len(values) and values[position] == value:
        del values[position]
        if len(values) == 1:
            index[key] = values[0]


def _at_or_after(values: int | list[int] | None, at_ms: int) -> int:
    """How many of the values are >= at_ms (ends not yet past at at_ms)."""
    if values is None:
        return 0
    if isinstance(values, int):
        return 1 if values >= at_ms else 0
    return len(values) - bisect.bisect_left(values, at_ms)


class AgreementStateMixin:
    # Set by ShardState.__init__ (which explains the index).
    accounts: dict[str, Account]
    agreements: dict[str, Agreement]
    agreements_by_partner: dict[str, list[tuple[int, str]]]
    agreements_by_debtor: dict[str, list[tuple[int, str]]]
    visibility: dict[str, set[str]]
    visible_ends: dict[tuple[str, str], int | list[int]]
    pending_ends: dict[tuple[str, str], int | list[int]]
    pending_ends_by_partner: dict[str, SortedList]
    pending_expiry_ms: int
    pending_per_account_max: int
    pending_per_partner_max: int
    undo: UndoLog

    def load_agreement(self, agreement: Agreement) -> None:
        self.unload_agreement(agreement.id)  # a reload replaces the old row in every index
        self.agreements[agreement.id] = agreement
        self._index(agreement)
        key = (agreement.created_at_ms, agreement.id)
        for index, owner in self._lists_of(agreement):
            keys = index.setdefault(owner, [])
            if not keys or keys[-1] < key:
                keys.append(key)  # the usual case: created in time order
            else:
                bisect.insort(keys, key)

    def unload_agreement(self, agreement_id: str) -> Agreement | None:
        """load_agreement's inverse: the agreement out of the state and out of every index (its
        slot moving away: ledger/slot_move.py). Returns it, or None if it is not here."""
        agreement = self.agreements.pop(agreement_id, None)
        if agreement is None:
            return None
        self._unindex(agreement)
        key = (agreement.created_at_ms, agreement.id)
        for index, owner in self._lists_of(agreement):
            keys = index.get(owner)
            if keys is None:
                continue
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del keys[at]
            if not keys:
                del index[owner]
        return agreement

    # ---- the agreement index (see __init__) -------------------------------------------
    def _lists_of(self, agreement: Agreement) -> tuple[tuple[dict[str, list[tuple[int, str]]], str], ...]:
        """The per-partner and per-debtor lists of (created_at_ms, id) keys holding `agreement`."""
        return (
            (self.agreements_by_partner, agreement.partner_id),
            (self.agreements_by_debtor, agreement.debtor_account),
        )

    def _index(self, agreement: Agreement) -> None:
        pair = (agreement.debtor_account, agreement.partner_id)
        status = agreement.status
        if status in VISIBLE_STATUSES:
            _insort(self.visible_ends, pair, _NO_END if agreement.valid_to_ms is None else agreement.valid_to_ms)
        elif status == mandates.AgreementStatus.AWAITING:
            end = self._pending_end(agreement)
            _insort(self.pending_ends, pair, end)
            ends = self.pending_ends_by_partner.get(agreement.partner_id)
            if ends is None:
                ends = self.pending_ends_by_partner[agreement.partner_id] = SortedList()
            ends.add(end)

    def _unindex(self, agreement: Agreement) -> None:
        pair = (agreement.debtor_account, agreement.partner_id)
        status = agreement.status
        if status in VISIBLE_STATUSES:
            _discard(self.visible_ends, pair, _NO_END if agreement.valid_to_ms is None else agreement.valid_to_ms)
        elif status == mandates.AgreementStatus.AWAITING:
            end = self._pending_end(agreement)
            _discard(self.pending_ends, pair, end)
            ends = self.pending_ends_by_partner.get(agreement.partner_id)
            if ends is not None:
                ends.discard(end)
                if not ends:
                    del self.pending_ends_by_partner[agreement.partner_id]

    @staticmethod
    def _pending_end(agreement: Agreement) -> int:
        end = mandates.ends_at_ms(agreement.status, agreement.valid_to_ms, agreement.authorise_by_ms)
        return _NO_END if end is None else end

    def pending_count(self, partner_id: str, account_id: str | None, at_ms: int) -> int:
        """The partner's agreements AwaitingAuthorisation and not expired at at_ms, over
        `account_id` (None: over any account of this shard)."""
        if account_id is not None:
            return _at_or_after(self.pending_ends.get((account_id, partner_id)), at_ms)
        ends = self.pending_ends_by_partner.get(partner_id)
        return 0 if ends is None else len(ends) - ends.bisect_left(at_ms)

    def _add_agreement(self, agreement: Agreement) -> None:
        """load_agreement for a decision: recorded in the undo log."""
        undo = self.undo
        undo.setitem(self.agreements, agreement.id, agreement)
        undo.on_undo(lambda: self._unindex(agreement))
        self._index(agreement)
        key = (agreement.created_at_ms, agreement.id)
        for index, owner in self._lists_of(agreement):
            keys = index.get(owner)
            if keys is None:
                undo.setitem(index, owner, [key])
                continue
            undo.on_undo(lambda keys=keys, key=key: keys.remove(key))  # type: ignore[misc]
            keys.insert(bisect.bisect_left(keys, key), key)

    def create_agreement(self, agreement: Agreement, ws: WriteSet) -> str:
        debtor = self.accounts.get(agreement.debtor_account)
        if debtor is None or debtor.kind != "customer":
            return Code.ACCOUNT_NOT_FOUND
        if debtor.currency != agreement.currency:
            return Code.CURRENCY_MISMATCH
        at_ms = agreement.created_at_ms
        if self.pending_count(agreement.partner_id, agreement.debtor_account, at_ms) >= self.pending_per_account_max:
            return Code.TOO_MANY_PENDING_FOR_ACCOUNT
        if self.pending_count(agreement.partner_id, None, at_ms) >= self.pending_per_partner_max:
            return Code.TOO_MANY_PENDING
        # A new object: its own fields need no undo, only its place in the state.
        agreement.status = mandates.AgreementStatus.AWAITING
        agreement.status_updated_at_ms = agreement.created_at_ms
        agreement.authorise_by_ms = agreement.created_at_ms + self.pending_expiry_ms
        self._add_agreement(agreement)
        ws.agreements.append(agreement)
        return Code.OK

    def transition_agreement(
        self, agreement_id: str, partner_id: str | None, action: str, actor: str, at_ms: int, ws: WriteSet
    ) -> tuple[str, Agreement | None]:
        """Apply one lifecycle action. `partner_id` (when the partner asks) must own the
        agreement; the customer's channel (the admin API) passes None."""
        agreement = self.agreements.get(agreement_id)
        if agreement is None or (partner_id is not None and agreement.partner_id != partner_id):
            return Code.AGREEMENT_NOT_FOUND, None
        code, target = mandates.decide_transition(
            agreement.status, agreement.valid_to_ms, action, actor, at_ms, agreement.authorise_by_ms
        )
        if code != "OK":
            return (Code.SAME if code == "SAME" else code), agreement
        assert target is not None
        ws.agreement_events.append((agreement.id, agreement.status, target, actor, at_ms))
        undo = self.undo
        # Out of the index under its old status, back in under its new one; on rollback the
        # reverse, in reverse order (the undo log runs last-in first).
        undo.on_undo(lambda: self._index(agreement))
        self._unindex(agreement)
        undo.setattr(agreement, "status", target)
        undo.setattr(agreement, "status_updated_at_ms", at_ms)
        undo.on_undo(lambda: self._unindex(agreement))
        self._index(agreement)
        undo.setitem(ws.agreement_updates, agreement.id, agreement)
        return Code.OK, agreement

    def list_agreements(
        self,
        *,
        partner_id: str | None = None,
        debtor_account: str | None = None,
        status: str | None = None,
        before: tuple[int, str] | None = None,
        limit: int,
        at_ms: int,
    ) -> tuple[list[Agreement], tuple[int, str] | None]:
        """Agreements newest first (by created_at_ms, then id) strictly before `before`, at most
        `limit`, filtered by effective status. Returns (agreements, the key scanning stopped
        at when AGREEMENT_SCAN_MAX ran out before the page filled, else None)."""
        index = self.agreements_by_partner if partner_id is not None else self.agreements_by_debtor
        keys = index.get(partner_id if partner_id is not None else debtor_account or "", [])
        position = len(keys) if before is None else bisect.bisect_left(keys, before)
        found: list[Agreement] = []
        scanned = 0
        while position > 0 and len(found) < limit:
            if scanned >= AGREEMENT_SCAN_MAX:
                return found, keys[position]
            position -= 1
            scanned += 1
            agreement = self.agreements[keys[position][1]]
            if debtor_account is not None and agreement.debtor_account != debtor_account:
                continue
            if (
                status is None
                or mandates.effective_status(agreement.status, agreement.valid_to_ms, at_ms, agreement.authorise_by_ms)
                == status
            ):
                found.append(agreement)
        return found, None

    def can_see(self, partner_id: str, account_id: str, at_ms: int) -> bool:
        """A partner sees its own settlement account, and a customer's account while it holds
        an agreement over it the customer has authorised (Authorised or Suspended, not
        expired): not before consent, not after a rejection or revocation. O(1): the
        latest valid_to among those agreements (visible_ends) is not past."""
        if partner_id in self.visibility.get(account_id, ()):
            return True
        ends = self.visible_ends.get((account_id, partner_id))
        if ends is None:
            return False
        return (ends if isinstance(ends, int) else ends[-1]) >= at_ms

    def can_see_by_scan(self, partner_id: str, account_id: str, at_ms: int) -> bool:
        """can_see as it was before the index: every agreement over the account (the
        reference the property test compares the index with; not for the request path)."""
        if partner_id in self.visibility.get(account_id, ()):
            return True
        for _, agreement_id in self.agreements_by_debtor.get(account_id, ()):
            agreement = self.agreements[agreement_id]
            if (
                agreement.partner_id == partner_id
                and mandates.effective_status(agreement.status, agreement.valid_to_ms, at_ms, agreement.authorise_by_ms)
                in VISIBLE_STATUSES
            ):
                return True
        return False
