"""Wires the fraud filter into a shard worker: rule versions, lists, window rebuild.

The filter runs inside the worker that owns the debtor, so its keyed windows sit
beside the account. Rule sets are versioned per shard and persisted in the
shard's `meta` table; a change is applied by the batcher between two payments.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import fraud

from .model import PaymentCommand
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
    def __init__(self, worker: "ShardWorker") -> None:
        self.worker = worker
        self.registry: Any = None
        self.filter: Any = None

    async def start(self) -> None:
        worker = self.worker
        cfg = worker.config
        if cfg.no_rules:
            return
        assert worker.write_conn is not None
        from . import pg
        stored = await pg.read_setting(worker.write_conn, _REGISTRY_KEY)
        now_ms = worker.clock_ms()
        if stored is not None and cfg.rules_path is None:
            self.registry = fraud.RuleRegistry.from_dict(json.loads(stored))
        else:
            # A --rules file given at start becomes a new active version (recorded),
            # so the history of what judged which payment survives restarts.
            self.registry = (fraud.RuleRegistry.from_dict(json.loads(stored))
                             if stored is not None else fraud.RuleRegistry())
            path = cfg.rules_path or str(fraud.default_rules_path())
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            candidate = fraud.parse_rules(text, filename=path)  # a bad file fails here, naming file:line:col
            active = self.registry.active_ruleset
            # A restarted worker gets the same --rules again: that is not a new version.
            if active is None or active.digest != candidate.digest:
                version = self.registry.propose(text, author="startup", at_ms=now_ms)
                self.registry.activate(version, author="startup", at_ms=now_ms)
                await worker.write_conn.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    _REGISTRY_KEY, json.dumps(self.registry.to_dict()))
        # Lists as operators left them; the rule file only seeds lists that don't exist yet.
        stored_lists = await pg.read_setting(worker.write_conn, _LISTS_KEY)
        lists = fraud.NamedLists(json.loads(stored_lists) if stored_lists is not None else None)
        self.filter = fraud.FraudFilter(self.registry.active_ruleset, lists=lists)
        await self._rebuild_windows(now_ms)
        worker.state.fraud = self.filter
        worker.state.make_facts = make_facts

    async def _rebuild_windows(self, now_ms: int) -> None:
        """Replay accepted payments of the last REBUILD_WINDOW_MS into the windows."""
        assert self.worker.write_conn is not None
        rows = await self.worker.write_conn.fetch(
            "SELECT id, partner_id, agreement_id, debit_account, creditor_account, amount_minor,"
            " currency, device_id, ip, created_at_ms FROM transfers"
            " WHERE kind = 'payment' AND status <> 'Rejected' AND created_at_ms > $1 ORDER BY seq",
            now_ms - min(REBUILD_WINDOW_MS, self.filter.ruleset.max_window_s * 1000))
        for r in rows:
            self.filter.record(fraud.PaymentFacts(
                transfer_id=r["id"], partner_id=r["partner_id"], agreement_id=r["agreement_id"],
                debtor_account=r["debit_account"], creditor_account=r["creditor_account"],
                amount_minor=r["amount_minor"], currency=r["currency"], device_id=r["device_id"],
                ip=r["ip"], at_ms=r["created_at_ms"]))
        if rows:
            log.info("shard %s rebuilt fraud windows from %d payments", self.worker.config.shard, len(rows))

    def decide(self, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
        """Apply one rule or list change; called by the batcher between payments."""
        if self.filter is None:
            return False, _DISABLED
        action = args["action"]
        author = args.get("author", "admin")
        try:
            if action == "propose":
                fraud.parse_rules(args["text"], filename=args.get("filename", "<api>"))
                version = self.registry.propose(args["text"], author=author, at_ms=now_ms)
                if args.get("activate", True):
                    self.registry.activate(version, author=author, at_ms=now_ms)
                    self.filter.activate(self.registry.active_ruleset)
            elif action == "activate":
                self.registry.activate(int(args["version"]), author=author, at_ms=now_ms)
                self.filter.activate(self.registry.active_ruleset)
            elif action == "rollback":
                self.registry.rollback(author=author, at_ms=now_ms)
                self.filter.activate(self.registry.active_ruleset)
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
        except (KeyError, ValueError) as exc:
            return False, {"code": "BAD_REQUEST", "message": str(exc)}
        ws.settings[_REGISTRY_KEY] = json.dumps(self.registry.to_dict())
        return True, self.read({"what": "rules"})

    def read(self, args: dict[str, Any]) -> Any:
        if self.filter is None:
            return {"disabled": True, **_DISABLED}
        what = args.get("what", "rules")
        if what == "lists":
            return {"lists": self.filter.lists.snapshot()}
        return {"active_version": self.registry.active_version, "versions": self.registry.versions(),
                "audit": self.registry.audit()}
