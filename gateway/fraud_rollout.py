"""All-or-nothing fraud rule changes across shards (the gateway is the coordinator).

Every shard keeps its own rule registry (its `meta` table), so a change is a small
two-phase commit driven from here, with the shards' idempotent, guarded operations:

1. **Stage** on every shard: validate, compile, store under the content hash
   (`fraud.registry.version_of`). Staging enforces nothing and staging the same text
   again is the same version, so a failure here (a rule error, an unreachable shard)
   leaves every shard enforcing what it did, and a retry just re-stages.
2. **Activate** on every shard, only after every shard staged it, each guarded by the
   version that shard had active (`expect_active`). Re-activating the active version
   is a no-op, so a retry after a partial failure finishes the change.
3. If an activation fails, the shards that switched (or may have: a timeout) are
   switched back with a guarded undo (a no-op where nothing switched), and the
   caller hears 409/503 with "nothing changed; retry". Only if that undo cannot reach
   a shard do shards disagree; the answer says so, `GET /admin/v1/fraud/rules`
   shows `consistent: false`, and re-running the same request converges.

Rollback is the same: every shard must be readable; the target is the version every
shard either enforces already or has right below its active one; shards pop (guarded)
and a failure pushes the popped version back.
Between the first and the last shard switching, a payment is judged by the old or
the new version depending on its shard; each payment by exactly one version.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.client import ShardError, ShardOverloaded, ShardUnavailable

from .errors import ApiError

__all__ = ["VERSION_RE", "FraudRollout"]

# A full version id (sha256 hex) or an unambiguous prefix of at least 8 characters.
VERSION_RE = re.compile(r"[0-9a-f]{8,64}")  # use fullmatch: "$" would let a trailing newline through
_RETRY = {"Retry-After": "1"}


@dataclass
class _Outcome:
    shard: int
    ok: bool
    result: Any = None
    # A refusal is definite: the shard answered and changed nothing. Otherwise
    # (no answer in time, connection lost) the call may or may not have happened.
    refused: bool = False

    @property
    def code(self) -> str | None:
        if isinstance(self.result, dict):
            code = self.result.get("code")
            return str(code) if code is not None else None
        return None

    @property
    def message(self) -> str:
        if isinstance(self.result, dict) and "message" in self.result:
            return str(self.result["message"])
        return str(self.result)


def _short(version: Any) -> str:
    return "none" if version is None else str(version)[:12]


class FraudRollout:
    def __init__(self, clients: Sequence[Any]) -> None:
        self.clients = clients

    # ---- plumbing --------------------------------------------------------------
    async def _one(self, shard: int, op: str, args: Any) -> _Outcome:
        try:
            return _Outcome(shard, True, await self.clients[shard].call(op, args))
        except ShardError as exc:
            detail = exc.args[0] if exc.args else {}
            refused = not (isinstance(detail, dict) and detail.get("code") == "INTERNAL")
            return _Outcome(
                shard, False, detail if isinstance(detail, dict) else {"message": str(detail)}, refused=refused
            )
        except ShardOverloaded as exc:
            return _Outcome(shard, False, {"code": "OVERLOADED", "message": str(exc)}, refused=True)
        except (ShardUnavailable, OSError) as exc:
            return _Outcome(shard, False, {"code": "UNAVAILABLE", "message": str(exc)})

    async def _all(self, op: str, args_of: dict[int, Any]) -> dict[int, _Outcome]:
        shards = sorted(args_of)
        outcomes = await asyncio.gather(*(self._one(i, op, args_of[i]) for i in shards))
        return dict(zip(shards, outcomes))

    @staticmethod
    def _raise_disabled(outcomes: Any) -> None:
        for o in outcomes:
            if o.code == "FRAUD_DISABLED" or (o.ok and isinstance(o.result, dict) and o.result.get("disabled")):
                message = o.message if o.code else str(o.result.get("message"))
                raise ApiError(409, "QP.Fraud.Disabled", message)

    async def _states(self) -> list[dict[str, Any]]:
        outcomes = await self._all("fraud_read", {i: {"what": "state"} for i in range(len(self.clients))})
        self._raise_disabled(outcomes.values())
        failed = [o for o in outcomes.values() if not o.ok]
        if failed:
            raise _unavailable(f"shard {failed[0].shard} did not answer ({failed[0].message}); nothing was changed")
        return [outcomes[i].result for i in range(len(self.clients))]

    # ---- reads -----------------------------------------------------------------
    async def read_rules(self) -> dict[str, Any]:
        outcomes = await self._all("fraud_read", {i: {"what": "rules"} for i in range(len(self.clients))})
        self._raise_disabled(outcomes.values())
        failed = [o for o in outcomes.values() if not o.ok]
        if failed:
            raise _unavailable(f"shard {failed[0].shard} did not answer ({failed[0].message})")
        shards = [outcomes[i].result for i in range(len(self.clients))]
        return {**_summary(shards), "shards": shards}

    # ---- changes ---------------------------------------------------------------
    async def propose(self, text: str, author: str, filename: str, activate: bool) -> dict[str, Any]:
        n = len(self.clients)
        staged = await self._all(
            "fraud", {i: {"action": "stage", "text": text, "author": author, "filename": filename} for i in range(n)}
        )
        self._raise_disabled(staged.values())
        for o in staged.values():
            if o.code == "RULE_ERROR":
                raise ApiError(
                    422,
                    "QP.Rules.Invalid",
                    o.message,
                    [{"code": "QP.Rules.Invalid", "message": o.message, "path": "$.text"}],
                )
        self._raise_if_not_staged(staged)
        versions = {o.result["version"] for o in staged.values()}
        if len(versions) != 1:
            raise ApiError(500, "QP.Rules.Inconsistent", f"shards computed different version ids: {sorted(versions)}")
        version = versions.pop()
        results = [staged[i].result for i in range(n)]
        if activate:
            olds = {i: staged[i].result.get("active_version") for i in range(n)}
            results = await self._activate_everywhere(version, olds, author)
        return {"version": version, **_summary(results), "shards": results}

    async def activate(self, wanted: str, author: str) -> dict[str, Any]:
        wanted = wanted.lower()
        states = await self._states()
        matches = sorted({v for s in states for v in s["versions"] if v.startswith(wanted)})
        if not matches:
            raise ApiError(404, "QP.Rules.NotFound", f"no stored rule-set version {wanted}")
        if len(matches) > 1:
            raise ApiError(
                409, "QP.Rules.Ambiguous", f"{wanted} matches {len(matches)} versions; give more of the version id"
            )
        version = matches[0]
        missing = [i for i, s in enumerate(states) if version not in s["versions"]]
        olds = {i: s.get("active_version") for i, s in enumerate(states)}
        if missing:
            # Staged on some shards only (a change that failed half way): stage it on
            # the others from a shard that has it, then activate as usual.
            holder = next(i for i, s in enumerate(states) if version in s["versions"])
            text = await self._one(holder, "fraud_read", {"what": "text", "version": version})
            if not text.ok or not text.result:
                raise _unavailable(f"shard {holder} did not give version {_short(version)}'s text; nothing was changed")
            staged = await self._all(
                "fraud", {i: {"action": "stage", "text": text.result["text"], "author": author} for i in missing}
            )
            self._raise_if_not_staged(staged)
            for i in missing:
                olds[i] = staged[i].result.get("active_version")
        results = await self._activate_everywhere(version, olds, author)
        return {"version": version, **_summary(results), "shards": results}

    async def rollback(self, author: str) -> dict[str, Any]:
        states = await self._states()
        target = _rollback_target(states)
        froms = {i: s["active_version"] for i, s in enumerate(states) if s["active_version"] != target}
        outcomes = await self._all(
            "fraud",
            {i: {"action": "rollback", "author": author, "expect_from": froms[i], "expect_to": target} for i in froms},
        )
        if all(o.ok for o in outcomes.values()):
            return await self._after_change(target)
        # Push back what was popped (a no-op where the pop did not happen).
        undo = {
            i: {"action": "activate", "version": froms[i], "expect_active": target, "author": author}
            for i, o in outcomes.items()
            if not o.refused
        }
        undone = await self._all("fraud", undo)
        self._fail_change("rollback", target, outcomes, undone)
        raise AssertionError("unreachable")

    async def change_list(self, action: str, name: str, values: list[str]) -> dict[str, Any]:
        outcomes = await self._all(
            "fraud", {i: {"action": action, "list": name, "values": values} for i in range(len(self.clients))}
        )
        self._raise_disabled(outcomes.values())
        failed = [o for o in outcomes.values() if not o.ok]
        if failed:
            raise _unavailable(
                f"shard {failed[0].shard} did not apply the list change ({failed[0].message}); "
                "list changes are idempotent: retry the same request"
            )
        result: dict[str, Any] = outcomes[0].result
        return result

    async def read_lists(self) -> dict[str, Any]:
        outcome = await self._one(0, "fraud_read", {"what": "lists"})
        self._raise_disabled([outcome])
        if not outcome.ok:
            raise _unavailable(f"shard 0 did not answer ({outcome.message})")
        result: dict[str, Any] = outcome.result
        return result

    # ---- internals -------------------------------------------------------------
    @staticmethod
    def _raise_if_not_staged(staged: dict[int, _Outcome]) -> None:
        failed = [o for o in staged.values() if not o.ok]
        if not failed:
            return
        first = failed[0]
        message = (
            f"shard {first.shard} could not stage the rule set ({first.message}); no shard enforces it, "
            "every shard enforces what it did before; retry the same request"
        )
        if first.code == "BAD_REQUEST":
            raise ApiError(409, "QP.Rules.Conflict", message)
        raise _unavailable(message)

    async def _activate_everywhere(self, version: str, olds: dict[int, Any], author: str) -> list[Any]:
        n = len(self.clients)
        outcomes = await self._all(
            "fraud",
            {
                i: {"action": "activate", "version": version, "author": author, "expect_active": olds[i]}
                for i in range(n)
            },
        )
        if all(o.ok for o in outcomes.values()):
            return [outcomes[i].result for i in range(n)]
        undo = {
            i: {"action": "rollback", "author": author, "expect_from": version, "expect_to": olds[i], "undo": True}
            for i, o in outcomes.items()
            if not o.refused and olds[i] is not None and olds[i] != version
        }
        undone = await self._all("fraud", undo)
        self._fail_change("activation of " + _short(version), version, outcomes, undone)
        raise AssertionError("unreachable")

    async def _after_change(self, target: str) -> dict[str, Any]:
        outcomes = await self._all("fraud_read", {i: {"what": "rules"} for i in range(len(self.clients))})
        shards = [o.result if o.ok else {"shard": i, "error": o.message} for i, o in sorted(outcomes.items())]
        return {"version": target, **_summary(shards), "shards": shards}

    @staticmethod
    def _fail_change(what: str, version: str, outcomes: dict[int, _Outcome], undone: dict[int, _Outcome]) -> None:
        failed = [o for o in outcomes.values() if not o.ok]
        first = failed[0]
        conflict = any(o.code == "CONFLICT" for o in failed)
        stuck = sorted(i for i, o in undone.items() if not o.ok)
        cause = f"{what} failed on shard {first.shard} ({first.message})"
        if stuck:
            raise _unavailable(
                f"{cause}; undoing it did not reach shard(s) {stuck}, so shards may disagree "
                "(GET /admin/v1/fraud/rules shows each); re-run the same request to converge"
            )
        message = f"{cause}; it was undone: every shard enforces what it did before; retry the same request"
        if conflict:
            raise ApiError(409, "QP.Rules.Conflict", message + " (another rule change ran at the same time)")
        if first.code == "BAD_REQUEST":
            raise ApiError(409, "QP.Rules.Conflict", message)
        raise _unavailable(message)


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "QP.Service.Unavailable", message, headers=_RETRY)


def _summary(shards: list[Any]) -> dict[str, Any]:
    """What every shard agrees on (None where they differ), and whether any is degraded."""
    good = [s for s in shards if isinstance(s, dict) and "active_version" in s]
    active = {s.get("active_version") for s in good}
    enforced = {s.get("enforced_version") for s in good}
    consistent = len(good) == len(shards) and len(active) == 1 and len(enforced) == 1
    return {
        "active_version": active.pop() if len(active) == 1 else None,
        "enforced_version": enforced.pop() if len(enforced) == 1 else None,
        "consistent": consistent,
        "degraded_shards": [s.get("shard") for s in good if s.get("degraded")],
    }


def _rollback_target(states: list[dict[str, Any]]) -> str:
    """The version to roll back to, or a 409.

    All shards on one version: the version below it (it must be the same everywhere).
    Shards on different versions (a change that could not be undone everywhere): the
    one version that every shard either enforces already or has right below its
    active one; that finishes a half-done rollback and undoes a half-done activation.
    """
    actives = {s.get("active_version") for s in states}
    if len(actives) == 1:
        previous = {s.get("previous_version") for s in states}
        if None in previous:
            raise ApiError(409, "QP.Rules.Conflict", "no previously active version to roll back to")
        if len(previous) != 1:
            raise ApiError(
                409,
                "QP.Rules.Conflict",
                "shards disagree on the previously active version; activate a version explicitly",
            )
        return str(previous.pop())
    candidates = [
        v
        for v in actives
        if v is not None and all(s.get("active_version") == v or s.get("previous_version") == v for s in states)
    ]
    candidates += [
        v
        for v in {s.get("previous_version") for s in states}
        if v is not None
        and v not in candidates
        and all(s.get("active_version") == v or s.get("previous_version") == v for s in states)
    ]
    if len(candidates) != 1:
        listing = ", ".join(f"shard {i}: {_short(s.get('active_version'))}" for i, s in enumerate(states))
        raise ApiError(
            409,
            "QP.Rules.Conflict",
            f"shards enforce different versions ({listing}) and no single version to roll back to;"
            " activate a version explicitly (quickpay fraud activate VERSION)",
        )
    return str(candidates[0])
