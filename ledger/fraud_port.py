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

import json
import logging
from typing import TYPE_CHECKING, Any

import fraud
from fraud.registry import RegistryConflict

from .model import PaymentCommand
from .rows import QUARANTINE, RowError, check_row
from .state import WriteSet

if TYPE_CHECKING:
    from .worker import ShardWorker

__all__ = ["FraudAdapter", "REBUILD_WINDOW_MS"]

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
        transfer_id=cmd.payment_id, partner_id=cmd.partner_id, agreement_id=cmd.agreement_id,
        debtor_account=debtor_account, creditor_account=cmd.creditor_account,
        amount_minor=cmd.amount_minor, currency=cmd.currency, device_id=cmd.device_id,
        ip=cmd.ip, at_ms=cmd.at_ms)


class FraudAdapter:
    def __init__(self, worker: "ShardWorker | None") -> None:
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
    def worker(self) -> "ShardWorker":
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
                _REGISTRY_KEY, json.dumps(self.registry.to_dict()))
        # Lists as operators left them; the rule file only seeds lists that don't exist yet.
        stored_lists = await pg.read_setting(worker.write_conn, _LISTS_KEY)
        lists = fraud.NamedLists(json.loads(stored_lists) if stored_lists is not None else None)
        self.filter = fraud.FraudFilter(self._enforced_ruleset(), lists=lists)
        await self._rebuild_windows(now_ms)
        worker.state.fraud = self.filter
        worker.state.make_facts = make_facts

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
                log.error("FRAUD RULES: shard %s cannot use rule file %s: %s; keeping the stored rule set",
                          self._shard(), path, exc)
                self.startup_problems.append({"source": path, "error": str(exc)})
        for item in registry.versions():
            if item["error"] is not None:
                log.error("FRAUD RULES: shard %s stored rule-set version %s does not build: %s",
                          self._shard(), item["version"][:12], item["error"])
        if registry.active_ruleset is None:
            default = fraud.load_rules_file(fraud.default_rules_path())
            self.fallback = {"source": str(fraud.default_rules_path()), "version": fraud.registry.version_of(default.text)}
            log.error("FRAUD RULES: shard %s has no stored rule set that builds; enforcing the shipped default rules"
                      " until an operator activates one", self._shard())
            self._fallback_ruleset = default
        elif registry.enforced_version != registry.active_version:
            log.error("FRAUD RULES: shard %s enforces version %s, the newest that builds, instead of the active %s",
                      self._shard(), str(registry.enforced_version)[:12], str(registry.active_version)[:12])
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
        """Replay accepted payments of the last REBUILD_WINDOW_MS into the windows."""
        assert self.worker.write_conn is not None
        rows = await self.worker.write_conn.fetch(
            "SELECT id, partner_id, agreement_id, debit_account, creditor_account, amount_minor,"
            " currency, device_id, ip, created_at_ms FROM transfers"
            " WHERE kind = 'payment' AND status <> 'Rejected' AND created_at_ms > $1 ORDER BY seq",
            now_ms - min(REBUILD_WINDOW_MS, self.filter.ruleset.max_window_s * 1000))
        for row in rows:
            try:
                r = check_row("transfers", row)   # a row it cannot read is quarantined, not replayed
            except RowError as exc:
                QUARANTINE.skip("fraud_rebuild", exc, self.worker.config.shard)
                continue
            self.filter.record(fraud.PaymentFacts(
                transfer_id=r["id"], partner_id=r["partner_id"], agreement_id=r["agreement_id"],
                debtor_account=r["debit_account"], creditor_account=r["creditor_account"],
                amount_minor=r["amount_minor"], currency=r["currency"], device_id=r["device_id"],
                ip=r["ip"], at_ms=r["created_at_ms"]))
        if rows:
            log.info("shard %s rebuilt fraud windows from %d payments", self.worker.config.shard, len(rows))

    def decide(self, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
        """Apply one rule or list change; called by the batcher between payments.

        Nothing is stored unless it builds, and the registry changes in memory only
        together with `ws.settings` (committed with the batch; a failed commit stops
        the worker, so memory never runs ahead of the database after a restart).
        """
        if self.filter is None:
            return False, _DISABLED
        action = args["action"]
        author = args.get("author", "admin")
        registry = self.registry
        before_active = registry.active_version
        created = False
        extra: dict[str, Any] = {}
        try:
            if action == "stage":
                version, created = registry.stage(args["text"], author=author, at_ms=now_ms,
                                                  filename=args.get("filename", "<api>"))
                extra = {"version": version, "staged": created}
            elif action == "activate":
                registry.activate(str(args["version"]), author=author, at_ms=now_ms,
                                  expect_active=args.get("expect_active"))
            elif action == "rollback":
                registry.rollback(author=author, at_ms=now_ms, expect_from=args.get("expect_from"),
                                  expect_to=args.get("expect_to"), undo=bool(args.get("undo", False)))
            elif action in ("list_add", "list_remove"):
                method = self.filter.lists.add if action == "list_add" else self.filter.lists.remove
                for value in args["values"]:
                    method(args["list"], value)
                ws.settings[_LISTS_KEY] = json.dumps(self.filter.lists.snapshot())
                return True, {"lists": self.filter.lists.snapshot()}
            else:
                return False, {"code": "BAD_REQUEST", "message": f"unknown fraud action {action!r}"}
        except fraud.RuleError as exc:
            return False, {"code": "RULE_ERROR", "message": str(exc)}
        except RegistryConflict as exc:
            return False, {"code": "CONFLICT", "message": str(exc), **self._state()}
        except (KeyError, ValueError) as exc:
            return False, {"code": "BAD_REQUEST", "message": str(exc), **self._state()}
        if created or registry.active_version != before_active:
            # Re-staging a known text or re-activating the active version writes nothing.
            ws.settings[_REGISTRY_KEY] = json.dumps(registry.to_dict())
        enforced = self._enforced_ruleset()
        if enforced is not self.filter.ruleset:
            self.filter.activate(enforced)
        if registry.active_ruleset is not None:
            self.fallback = None
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
