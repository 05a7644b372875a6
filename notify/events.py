"""Journal rows to events. Pure: no I/O, no clock.

Events come only from what committed, in each shard's journal order:
- a payment row: `payment.completed` when it completed on its own shard (a same-shard
  creditor, or the partner's settlement stripe), `payment.rejected` when Rejected; a
  cross-shard payment (InProcess) completes when its credit leg commits on the creditor
  shard, so that credit-leg row is its `payment.completed` (a held leg completes nothing);
- a refund row: `refund.succeeded` or `refund.rejected`;
- an agreement transition (agreement_events): created, authorised, rejected, suspended,
  resumed, revoked; `agreement.expired` is found by time (valid_to passed, not ended);
- a cut-off action on the partner (partner_events, the audit trail): disabled, enabled,
  secret_rotated, secret_retired, tokens_revoked (`evt_<shard>_p<seq>`).
Ids are derived from the source row, so producing the same row twice gives the same event
(`evt_<shard>_t<seq>` for transfers, `evt_<shard>_a<seq>` for transitions,
`evt_<shard>_x_<agreement id>` for expiries), and a redelivery carries the same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kernel.ids import CLEARING_ACCOUNT
from kernel.resources import agreement_resource, iso_ms, payment_resource, refund_resource

__all__ = [
    "EVENT_TYPES",
    "PARTNER_EVENT_TYPES",
    "Event",
    "encode_event",
    "expiry_event",
    "partner_event",
    "transfer_event",
    "transition_event",
]

EVENT_TYPES = (
    "payment.completed",
    "payment.rejected",
    "refund.succeeded",
    "refund.rejected",
    "agreement.created",
    "agreement.authorised",
    "agreement.rejected",
    "agreement.suspended",
    "agreement.resumed",
    "agreement.revoked",
    "agreement.expired",
    "partner.disabled",
    "partner.enabled",
    "partner.secret_rotated",
    "partner.secret_retired",
    "partner.tokens_revoked",
)
PARTNER_EVENT_TYPES = {
    "disable": "partner.disabled",
    "enable": "partner.enabled",
    "rotate_secret": "partner.secret_rotated",
    "retire_secret": "partner.secret_retired",
    "revoke_tokens": "partner.tokens_revoked",
}
COMPLETED = "AcceptedSettlementCompleted"


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    partner_id: str
    created_at_ms: int
    object: dict[str, Any]

    def body(self) -> str:
        return encode_event(self)


def encode_event(event: Event) -> str:
    """The event as delivered and listed: {id, type, created_at, data: {object}}."""
    return json.dumps(
        {
            "id": event.id,
            "type": event.type,
            "created_at": iso_ms(event.created_at_ms),
            "data": {"object": event.object},
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def transfer_event(shard: int, seq: int, row: dict[str, Any], debtor_row: dict[str, Any] | None = None) -> Event | None:
    """The event of one journal row (a Transfer's wire dict), or None. A credit leg needs
    its payment's row from the debtor shard (`debtor_row`); without it, no event."""
    kind, status = row["kind"], row["status"]
    event_id = f"evt_{shard}_t{seq}"
    if kind == "payment":
        if row["credit_account"] == CLEARING_ACCOUNT and status != "Rejected":
            # A cross-shard payment: its row turns Completed in place when the credit leg is
            # acknowledged, so reading it Completed says nothing new; the credit leg's own row
            # (on the creditor shard) is its one payment.completed.
            return None
        if status == COMPLETED:
            return Event(event_id, "payment.completed", row["partner_id"], row["created_at_ms"], payment_resource(row))
        if status == "Rejected":
            return Event(event_id, "payment.rejected", row["partner_id"], row["created_at_ms"], payment_resource(row))
        return None  # in process: its credit leg completes it
    if kind == "credit_leg":
        if status != COMPLETED or debtor_row is None or debtor_row.get("partner_id") is None:
            return None  # a held leg completed nothing
        resource = payment_resource({**debtor_row, "status": COMPLETED})
        return Event(event_id, "payment.completed", debtor_row["partner_id"], row["created_at_ms"], resource)
    if kind == "refund":
        kind_type = "refund.succeeded" if status == "Succeeded" else "refund.rejected"
        return Event(event_id, kind_type, row["partner_id"], row["created_at_ms"], refund_resource(row))
    return None  # fundings are the bank's own


_TRANSITION_TYPES = {
    "Authorised": "agreement.authorised",
    "Rejected": "agreement.rejected",
    "Suspended": "agreement.suspended",
    "Revoked": "agreement.revoked",
}


def transition_event(shard: int, seq: int, transition: dict[str, Any], agreement: dict[str, Any]) -> Event:
    """An agreement_events row (from_status, to_status, actor, at_ms) and the agreement's
    wire dict (Agreement.to_wire(at_ms)); the object shows the agreement as it was made by
    this transition."""
    to_status, from_status = transition["to_status"], transition["from_status"]
    if from_status is None:
        event_type = "agreement.created"
    elif to_status == "Authorised" and from_status == "Suspended":
        event_type = "agreement.resumed"
    else:
        event_type = _TRANSITION_TYPES.get(to_status, "agreement." + to_status.lower())
    at_ms = transition["at_ms"]
    obj = agreement_resource({**agreement, "status": to_status, "status_updated_at_ms": at_ms})
    return Event(f"evt_{shard}_a{seq}", event_type, agreement["partner_id"], at_ms, obj)


def expiry_event(shard: int, agreement: dict[str, Any], at_ms: int | None = None) -> Event:
    """An agreement whose valid_to (or, still awaiting the customer, its authorise_by) has
    passed while it was not ended (wire dict at a time after that, so its status reads
    Expired); at_ms: when it expired (default valid_to)."""
    at_ms = agreement["valid_to_ms"] if at_ms is None else at_ms
    obj = agreement_resource({**agreement, "status": "Expired"})
    return Event(f"evt_{shard}_x_{agreement['id']}", "agreement.expired", agreement["partner_id"], at_ms, obj)


def partner_event(shard: int, seq: int, row: dict[str, Any]) -> Event:
    """A partner_events row (partner_id, action, actor, at_ms, details): who did what, when.
    Times in details (`..._ms`) are shown as RFC 3339 without the suffix."""
    details = {}
    for key, value in (row["details"] or {}).items():
        if key.endswith("_ms"):
            details[key[:-3]] = iso_ms(value) if value is not None else None
        else:
            details[key] = value
    obj = {
        "object": "partner_action",
        "partner_id": row["partner_id"],
        "action": row["action"],
        "actor": row["actor"],
        "at": iso_ms(row["at_ms"]),
        "details": details,
    }
    return Event(f"evt_{shard}_p{seq}", PARTNER_EVENT_TYPES[row["action"]], row["partner_id"], row["at_ms"], obj)
