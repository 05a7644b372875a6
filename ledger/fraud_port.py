"""Wires the fraud filter into a shard worker: rule versions, lists, window rebuild.

The filter runs inside the worker that owns the debtor, so its keyed windows sit
beside the account. Rule sets are versioned per shard and persisted in the
shard's `meta` table; a change is applied by the batcher between two payments.

Rule changes are two-phase (the gateway's `gateway/fraud_rollout.py` coordinates):
`stage` validates, compiles and stores a text under its content hash without
enforcing it (idempotent); `activate` / `rollback` then switch, guarded by the
version the coordinator saw active, and are no-ops when already done. A stored
version that does not build at start-up never stops the worker: it enforces the
newest version in its history that builds and reports the problem (`status()`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import fraud
from fraud.registry import RegistryConflict

from .model import PaymentCommand
from .rows import QUARANTINE, RowError, check_row
from .state import ShardState, WriteSet
from .undo import UndoLog


class FraudHost(Protocol):
    """What the adapter needs of the shard worker that hosts it (ledger.worker.ShardWorker
    is one), so that this module does not import the worker: the worker imports it."""

    config: Any  # ledger.worker.WorkerConfig: shard, rules, no_rules
    write_conn: Any  # asyncpg.Connection | None
    state: ShardState
    clock_ms: Callable[[], int]


__all__ = ["REBUILD_WINDOW_MS", "FraudAdapter", "facts_of_payment", "replay_journal"]

log = logging.getLogger("quickpay.fraud")

# Window state is rebuilt after a restart by replaying the journal over the active
# rule set's longest window, capped here to bound start-up time (a rule with a
# longer window starts from a partial window after a restart; say so in the rules).
REBUILD_WINDOW_MS = 7 * 24 * 3_600_000
_DISABLED = {"code": "FRAUD_DISABLED", "message": "this stack runs without the fraud filter (--no-rules)"}
_REGISTRY_KEY = "fraud_registry"
_LISTS_KEY = "fraud_lists"


def make_facts(cmd: PaymentCommand, debtor_account: str) -> Any:
    return fraud.PaymentFacts(
        transfer_id=cmd.payment_id,
        partner_id=cmd.partner_id,
        agreement_id=cmd.agreement_id,
        debtor_account=debtor_account,
        creditor_account=cmd.creditor_account,
        amount_minor=cmd.amount_minor,
        currency=cmd.currency,
        device_id=cmd.device_id,
        ip=cmd.ip,
        at_ms=cmd.at_ms,
    )


def facts_of_payment(payment: Any) -> Any:
    """The facts a payment (a Transfer, or a journal row's fields) was recorded with:
    what a refund needs to find its event in the windows again."""
    return fraud.PaymentFacts(
        transfer_id=payment.id,
        partner_id=payment.partner_id,
        agreement_id=payment.agreement_id,
        debtor_account=payment.debit_account,
        creditor_account=payment.creditor_account,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        device_id=payment.device_id,
        ip=payment.ip,
        at_ms=payment.created_at_ms,
    )


def replay_journal(engine: Any, rows: Any) -> tuple[int, int]:
    """Rebuild window state from journal rows in `seq` order, exactly as the live path
    built it: every accepted payment is `record`ed when its row comes, every succeeded
    refund is `refund`ed when its row comes (so a payment refunded later was in the
    windows meanwhile, as it was live: same expiry, trimming, eviction and late-event
    times). Rows are mappings with the transfers table's columns id, kind, partner_id,
    agreement_id, debit_account, creditor_account, amount_minor, currency, device_id, ip,
    created_at_ms, and refund_of (a refund's details->>'payment_id'; its amount_minor is
    what it gave back). Returns (payments, refunds).
    A refund whose payment is older than the rows read changes nothing: that payment was
    made before the longest window, so no window reads its event, live or rebuilt (as
    before, a late event recorded at a newer time than its own is the one exception: the
    rebuild, which reads by created_at_ms, never had it). Pure (no I/O): the property
    tests call it."""
    # Facts are kept only for payments a later row refunds.
    refunded_ids = {r["refund_of"] for r in rows if r["kind"] == "refund"}
    facts_by_id: dict[str, Any] = {}
    payments = refunds = 0
    for r in rows:
        if r["kind"] == "payment":
            facts = fraud.PaymentFacts(
                transfer_id=r["id"],
                partner_id=r["partner_id"],
                agreement_id=r["agreement_id"],
                debtor_account=r["debit_account"],
                creditor_account=r["creditor_account"],
                amount_minor=r["amount_minor"],
                currency=r["currency"],
                device_id=r["device_id"],
                ip=r["ip"],
                at_ms=r["created_at_ms"],
            )
            engine.record(facts)
            if facts.transfer_id in refunded_ids:
                facts_by_id[facts.transfer_id] = facts
            payments += 1
        elif r["kind"] == "refund":
            refunded = facts_by_id.get(r["refund_of"])
            if refunded is not None:
                engine.refund(refunded, r["amount_minor"])
                refunds += 1
    return payments, refunds


class FraudAdapter:
    def __init__(self, worker: FraudHost | None) -> None:
        # None: the shard-side logic alone (decide/read/load), as the coordinator tests use it.
        self._worker = worker
        self.registry: Any = None
        self.filter: Any = None
        # Start-up problems that are not versions in the registry (a --rules file
        # that does not build), and the rule set enforced when no stored version builds.
        self.startup_problems: list[dict[str, Any]] = []
        self.fallback: dict[str, Any] | None = None
        self._fallback_ruleset: Any = None

    @property
    def worker(self) -> FraudHost:
        assert self._worker is not None, "this FraudAdapter has no shard worker"
        return self._worker

    async def start(self) -> None:
        worker = self.worker
        cfg = worker.config
        if cfg.no_rules:
            return
        assert worker.write_conn is not None
        from . import pg

        stored = await pg.read_setting(worker.write_conn, _REGISTRY_KEY)
        now_ms = worker.clock_ms()
        registry = fraud.RuleRegistry.from_dict(json.loads(stored)) if stored is not None else fraud.RuleRegistry()
        changed = self.load(registry, cfg.rules_path, now_ms)
        if changed:
            await worker.write_conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                _REGISTRY_KEY,
                json.dumps(self.registry.to_dict()),
            )
        # Lists as operators left them; the rule file only seeds lists that don't exist yet.
        stored_lists = await pg.read_setting(worker.write_conn, _LISTS_KEY)
        lists = fraud.NamedLists(json.loads(stored_lists) if stored_lists is not None else None)
        self.filter = fraud.FraudFilter(self._enforced_ruleset(), lists=lists)
        await self._rebuild_windows(now_ms)
        worker.state.fraud = self.filter
        worker.state.make_facts = make_facts
        worker.state.payment_facts = facts_of_payment

    def load(self, registry: Any, rules_path: str | None, now_ms: int) -> bool:
        """Settle which rule set this shard enforces at start; True if the registry changed.

        * A --rules file whose content this shard has never stored becomes a new active
          version (recorded, so the history of what judged which payment survives).
          A file it already knows is not re-activated: a restarted worker must not undo,
          on its shard alone, a change an operator made since on every shard.
        * With nothing stored, the file (default: the shipped rules) is staged and activated.
        * Nothing here raises for rule text: a file or a stored version that does not
          build is logged loudly and reported, and the newest version in the activation
          history that builds is enforced (else the shipped default rules, in memory only).
        """
        self.registry = registry
        self.startup_problems = []
        self.fallback = None
        path = rules_path or str(fraud.default_rules_path())
        changed = False
        if rules_path is not None or registry.active_version is None:
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                version, created = registry.stage(text, author="startup", at_ms=now_ms, filename=path)
                if created:
                    registry.activate(version, author="startup", at_ms=now_ms)
                    changed = True
                elif registry.active_version is None:
                    registry.activate(version, author="startup", at_ms=now_ms)
                    changed = True
            except (OSError, UnicodeDecodeError, fraud.RuleError, ValueError) as exc:
                log.error(
                    "FRAUD RULES: shard %s cannot use rule file %s: %s; keeping the stored rule set",
                    self._shard(),
                    path,
                    exc,
                )
                self.startup_problems.append({"source": path, "error": str(exc)})
        for item in registry.versions():
            if item["error"] is not None:
                log.error(
                    "FRAUD RULES: shard %s stored rule-set version %s does not build: %s",
                    self._shard(),
                    item["version"][:12],
                    item["error"],
                )
        if registry.active_ruleset is None:
            default = fraud.load_rules_file(fraud.default_rules_path())
            self.fallback = {
                "source": str(fraud.default_rules_path()),
                "version": fraud.registry.version_of(default.text),
            }
            log.error(
                "FRAUD RULES: shard %s has no stored rule set that builds; enforcing the shipped default rules"
                " until an operator activates one",
                self._shard(),
            )
            self._fallback_ruleset = default
        elif registry.enforced_version != registry.active_version:
            log.error(
                "FRAUD RULES: shard %s enforces version %s, the newest that builds, instead of the active %s",
                self._shard(),
                str(registry.enforced_version)[:12],
                str(registry.active_version)[:12],
            )
        return changed

    def _shard(self) -> Any:
        return self._worker.config.shard if self._worker is not None else None

    def _enforced_ruleset(self) -> Any:
        ruleset = self.registry.active_ruleset
        return ruleset if ruleset is not None else self._fallback_ruleset

    def status(self) -> dict[str, Any] | None:
        """What this shard enforces and whether that is what operators activated."""
        if self.registry is None:
            return None
        enforced = self.registry.enforced_version
        if enforced is None and self.fallback is not None:
            enforced = self.fallback["version"]
        problems = self.registry.problems() + self.startup_problems
        return {
            "active_version": self.registry.active_version,
            "previous_version": self.registry.previous_version,
            "enforced_version": enforced,
            "degraded": bool(problems) or enforced != self.registry.active_version,
            "problems": problems,
            "fallback": self.fallback,
        }

    async def _rebuild_windows(self, now_ms: int) -> None:
        """Replay the journal of the last REBUILD_WINDOW_MS into the windows: accepted
        payments and succeeded refunds, in the order they were decided (replay_journal)."""
        assert self.worker.write_conn is not None
        rows = await self.worker.write_conn.fetch(
            "SELECT id, kind, partner_id, agreement_id, debit_account, creditor_account, amount_minor,"
            " currency, device_id, ip, created_at_ms, details->>'payment_id' AS refund_of FROM transfers"
            " WHERE ((kind = 'payment' AND status <> 'Rejected') OR (kind = 'refund' AND status <> 'Rejected'))"
            " AND created_at_ms > $1 ORDER BY seq",
            now_ms - min(REBUILD_WINDOW_MS, self.filter.ruleset.max_window_s * 1000),
        )
        readable = []
        for row in rows:
            try:
                readable.append(check_row("transfers", row))  # a row it cannot read is quarantined, not replayed
            except RowError as exc:
                QUARANTINE.skip("fraud_rebuild", exc, self.worker.config.shard)
        payments, refunds = replay_journal(self.filter, readable)
        if rows:
            log.info(
                "shard %s rebuilt fraud windows from %d payments and %d refunds",
                self.worker.config.shard,
                payments,
                refunds,
            )

    def decide(self, args: dict[str, Any], ws: WriteSet, now_ms: int, undo: UndoLog | None = None) -> tuple[bool, Any]:
        """Apply one rule or list change; called by the batcher between payments.

        Nothing is stored unless it builds, and the registry changes in memory only
        together with `ws.settings` (committed with the batch; a failed commit stops
        the worker, so memory never runs ahead of the database after a restart).
        Atomic: every change is recorded in `undo` (the batcher's, which rolls back a
        command that fails or answers an error); the switch of the enforced rule set is
        deferred until the command has succeeded. Without `undo` (the coordinator tests'
        adapter with no worker), a private log is committed or rolled back here.
        """
        own = undo is None
        log_ = UndoLog() if undo is None else undo
        if own:
            log_.begin()
        ok, result = self._decide(args, ws, now_ms, log_)
        if own:
            if ok:
                for fn, fn_args in log_.commit():
                    fn(*fn_args)
            else:
                log_.rollback()
        return ok, result

    def _save_registry(self, undo: UndoLog) -> None:
        registry = self.registry
        saved = (dict(registry._versions), list(registry._activation_stack), list(registry._audit))

        def restore() -> None:
            registry._versions, registry._activation_stack, registry._audit = (saved[0], saved[1], saved[2])

        undo.on_undo(restore)

    def _change_lists(self, action: str, name: str, values: list[Any], undo: UndoLog) -> None:
        lists = self.filter.lists
        sets = lists._sets
        # Each compensation is recorded before its change (a failure between the two must
        # not leave a change without its undo).
        if name not in sets:
            undo.on_undo(lambda: sets.pop(name, None))
            lists.ensure(name)
        for value in values:
            present = lists.contains(name, value) if type(value) is str else False
            if action == "list_add":
                if not present:
                    undo.on_undo(functools.partial(sets[name].discard, value))
                lists.add(name, value)
            else:
                if present:
                    undo.on_undo(functools.partial(sets[name].add, value))
                lists.remove(name, value)

    def _switch_enforced(self) -> None:
        enforced = self._enforced_ruleset()
        if enforced is not self.filter.ruleset:
            self.filter.activate(enforced)

    def _decide(self, args: dict[str, Any], ws: WriteSet, now_ms: int, undo: UndoLog) -> tuple[bool, Any]:
        if self.filter is None:
            return False, _DISABLED
        action = args["action"]
        author = args.get("author", "admin")
        registry = self.registry
        before_active = registry.active_version
        created = False
        extra: dict[str, Any] = {}
        try:
            if action in ("stage", "activate", "rollback"):
                self._save_registry(undo)
            if action == "stage":
                version, created = registry.stage(
                    args["text"], author=author, at_ms=now_ms, filename=args.get("filename", "<api>")
                )
                extra = {"version": version, "staged": created}
            elif action == "activate":
                registry.activate(
                    str(args["version"]), author=author, at_ms=now_ms, expect_active=args.get("expect_active")
                )
            elif action == "rollback":
                registry.rollback(
                    author=author,
                    at_ms=now_ms,
                    expect_from=args.get("expect_from"),
                    expect_to=args.get("expect_to"),
                    undo=bool(args.get("undo", False)),
                )
            elif action in ("list_add", "list_remove"):
                self._change_lists(action, args["list"], args["values"], undo)
                undo.setitem(ws.settings, _LISTS_KEY, json.dumps(self.filter.lists.snapshot()))
                return True, {"lists": self.filter.lists.snapshot()}
            else:
                return False, {"code": "BAD_REQUEST", "message": f"unknown fraud action {action!r}"}
        except fraud.RuleError as exc:
            return False, {"code": "RULE_ERROR", "message": str(exc)}
        except RegistryConflict as exc:
            return False, {"code": "CONFLICT", "message": str(exc), **self._state()}
        except (KeyError, ValueError, TypeError) as exc:
            return False, {"code": "BAD_REQUEST", "message": str(exc), **self._state()}
        if created or registry.active_version != before_active:
            # Re-staging a known text or re-activating the active version writes nothing.
            undo.setitem(ws.settings, _REGISTRY_KEY, json.dumps(registry.to_dict()))
        if registry.active_ruleset is not None and self.fallback is not None:
            undo.setattr(self, "fallback", None)
        undo.defer(self._switch_enforced)
        # The answer describes the registry as this command leaves it (status() reads the
        # registry, not the filter, so it is the same before and after the deferred switch).
        return True, {**self.read({"what": "rules"}), **extra}

    def _state(self) -> dict[str, Any]:
        status = self.status() or {}
        return {**status, "shard": self._shard()}

    def read(self, args: dict[str, Any]) -> Any:
        if self.filter is None:
            return {"disabled": True, **_DISABLED}
        what = args.get("what", "rules")
        if what == "lists":
            return {"lists": self.filter.lists.snapshot()}
        if what == "state":
            return {**self._state(), "versions": [v["version"] for v in self.registry.versions()]}
        if what == "text":
            version = str(args.get("version", ""))
            if not self.registry.has(version):
                return None
            return {"version": version, "text": self.registry.text(version)}
        return {**self._state(), "versions": self.registry.versions(), "audit": self.registry.audit()}
