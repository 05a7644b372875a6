"""Partner cut-off: what an operator may do to a partner (disable, enable, rotate or retire
its secret, revoke its tokens), the markers the gateways poll, and what the admin API shows.

PartnerStateMixin, a part of ShardState (ledger/state.py); the attributes it uses are set
by ShardState.__init__. Split out of ledger/state.py (issue 18, a pure move); ledger.state
re-exports the public names.
"""

from __future__ import annotations

from typing import Any

from kernel.limits import SECRET_OVERLAP_MAX_MS

from .model import Code
from .undo import UndoLog
from .writeset import WriteSet

__all__ = [
    "PARTNER_ACTIONS",
    "PARTNER_CUTOFF_FIELDS",
    "SECRET_OVERLAP_MAX_MS",
    "PartnerStateMixin",
    "partner_status",
]

# Cut-off (ShardState.partner_action): what an operator may do to a partner, and the
# partner-record fields those actions change (written as one UPDATE per partner and batch).
PARTNER_ACTIONS = ("disable", "enable", "rotate_secret", "retire_secret", "revoke_tokens")
PARTNER_CUTOFF_FIELDS = (
    "secret_sha256",
    "previous_secret_sha256",
    "previous_secret_until_ms",
    "disabled_at_ms",
    "tokens_valid_after_ms",
)


class PartnerStateMixin:
    # Set by ShardState.__init__.
    partners_cache: dict[str, dict[str, Any]]
    cutoff_version: int
    undo: UndoLog

    def partner_action(
        self,
        partner_id: str,
        action: str,
        actor: str,
        at_ms: int,
        ws: WriteSet,
        *,
        secret_sha256: str | None = None,
        overlap_ms: int = 0,
        reason: str | None = None,
    ) -> tuple[str, dict[str, Any] | None]:
        """Cut a partner off, or let it back in: one of PARTNER_ACTIONS. Returns (code, the
        partner's status as partner_status shows it). OK records one audit row (who, when,
        what) in the same batch; SAME (disable when disabled, enable when enabled, retire
        with no previous secret) records nothing and answers the partner as it is.

        - disable / enable: the gateways refuse a disabled partner's tokens and issue it none
          (payments already accepted settle: nothing here touches the journal or the outbox);
        - rotate_secret: `secret_sha256` becomes the secret, the old one stays valid until
          at_ms + overlap_ms (overlap 0: retired at once); a previous one still overlapping
          is dropped (at most two secrets are ever valid);
        - retire_secret: the previous secret stops being valid now;
        - revoke_tokens: every token issued at or before at_ms is refused."""
        partner = self.partners_cache.get(partner_id)
        if partner is None:
            return Code.PARTNER_NOT_FOUND, None
        changes: dict[str, Any] = {}
        details: dict[str, Any] = {}
        if action == "disable":
            if partner.get("disabled_at_ms") is not None:
                return Code.SAME, partner_status(partner, at_ms)
            changes["disabled_at_ms"] = at_ms
        elif action == "enable":
            if partner.get("disabled_at_ms") is None:
                return Code.SAME, partner_status(partner, at_ms)
            changes["disabled_at_ms"] = None
        elif action == "rotate_secret":
            if (
                type(secret_sha256) is not str
                or type(overlap_ms) is not int
                or not 0 <= overlap_ms <= SECRET_OVERLAP_MAX_MS
            ):
                raise ValueError("rotate_secret takes secret_sha256 and overlap_ms (0-30 days)")
            until = at_ms + overlap_ms if overlap_ms > 0 else None
            changes.update(
                secret_sha256=secret_sha256,
                previous_secret_sha256=partner["secret_sha256"] if until is not None else None,
                previous_secret_until_ms=until,
            )
            details["previous_secret_valid_until_ms"] = until
        elif action == "retire_secret":
            if partner.get("previous_secret_sha256") is None:
                return Code.SAME, partner_status(partner, at_ms)
            changes.update(previous_secret_sha256=None, previous_secret_until_ms=None)
        elif action == "revoke_tokens":
            changes["tokens_valid_after_ms"] = max(at_ms, partner.get("tokens_valid_after_ms") or 0)
            details["tokens_issued_until_ms"] = changes["tokens_valid_after_ms"]
        else:
            raise ValueError(f"a partner action is one of {', '.join(PARTNER_ACTIONS)}")
        if reason is not None:
            details["reason"] = reason
        undo = self.undo
        for name, value in changes.items():
            undo.setitem(partner, name, value)
        undo.setitem(ws.partner_updates, partner_id, {name: partner.get(name) for name in PARTNER_CUTOFF_FIELDS})
        ws.partner_events.append((partner_id, action, actor, at_ms, details))
        if "disabled_at_ms" in changes or "tokens_valid_after_ms" in changes:
            undo.setattr(self, "cutoff_version", self.cutoff_version + 1)
        return Code.OK, partner_status(partner, at_ms)

    def partner_cutoffs(self) -> dict[str, list[int | None]]:
        """partner id -> [disabled_at_ms, tokens_valid_after_ms], for every partner with either."""
        return {
            partner_id: [p.get("disabled_at_ms"), p.get("tokens_valid_after_ms")]
            for partner_id, p in self.partners_cache.items()
            if p.get("disabled_at_ms") is not None or p.get("tokens_valid_after_ms") is not None
        }


def partner_status(partner: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """What the admin API shows of a partner's cut-off state (never a secret's digest)."""
    until = partner.get("previous_secret_until_ms")
    overlapping = partner.get("previous_secret_sha256") is not None and until is not None and at_ms < until
    return {
        "id": partner["id"],
        "disabled_at_ms": partner.get("disabled_at_ms"),
        "tokens_valid_after_ms": partner.get("tokens_valid_after_ms"),
        "previous_secret_until_ms": until if overlapping else None,
    }
