"""Intake: how a request reaches the shard, and the checks a write command passes first.

DispatchMixin, a part of ShardWorker, routes each request: a write command is checked
(the per-command intake checks below, plain functions taking the worker) and queued for
the batcher (ledger/batcher.py); a read is answered at once or by a task (ledger/reads.py).
Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from typing import Any

from kernel.ids import is_striped
from kernel.limits import BATCH_ITEMS_MAX, RATE_LIMIT_MAX
from kernel.money import CURRENCY_EXPONENTS
from kernel.slots import SLOT_COUNT

from . import validate as v
from .agreements import ACTORS, ALIGNMENTS, PERIODIC_LIMITS_MAX, PERIODS
from .deciders import _WRITE_OPS
from .reads import _READ_OPS
from .state import PARTNER_ACTIONS, SECRET_OVERLAP_MAX_MS
from .worker_base import Reply, WorkerBase

__all__ = ["CREDIT_LEGS_MAX", "OPEN_ACCOUNTS_MAX", "RATE_LIMIT_MAX", "REFUND_REASONS", "DispatchMixin"]

log = logging.getLogger("quickpay.shard")

# Payments per pay_many call: the gateway sends at most one batch request's items to a shard.
PAY_MANY_ITEMS_MAX = BATCH_ITEMS_MAX


class DispatchMixin(WorkerBase):
    # ---- intake --------------------------------------------------------------
    def enqueue(self, op: str, args: Any, reply: Reply, *, internal: bool = False) -> None:
        if not internal and self.queued_weight >= self.config.queue_max:
            reply(False, {"code": "OVERLOADED", "message": f"shard {self.config.shard} queue is full"})
            return
        self.queue.append((op, args, reply))
        self.queued_weight += 1
        self.work_ready.set()

    def dispatch(self, op: str, args: Any, reply: Reply) -> None:
        if op == "pay_many":
            self._dispatch_pay_many(args, reply)
            return
        if op in _WRITE_OPS:
            try:
                _CHECKS[op](self, args)
            except v.BadCommand as exc:  # refused alone, before it can reach a batch
                reply(False, {"code": "BAD_REQUEST", "message": str(exc)})
                return
            guard = _GUARDS.get(op)
            moved = guard(self, args) if guard is not None and self.held_slot_map is not None else None
            if moved is not None:  # not ours under the held map: refused before it is queued
                reply(False, moved)
                return
            if op == "pay" and self.naive_pool is not None:
                from .naive import naive_pay

                asyncio.get_running_loop().create_task(
                    self._finish(naive_pay(self.naive_pool, self.config.shard, args, self.clock_ms()), reply)
                )
                return
            self.enqueue(op, args, reply)
            return
        handler = _READ_OPS.get(op)
        if handler is None:
            reply(False, {"code": "UNKNOWN_OP", "message": f"unknown op {op!r}"})
            return
        try:
            result = handler(self, args)
        except Exception as exc:  # a bad read request must not kill the worker
            log.exception("read op %s failed", op)
            reply(False, {"code": "INTERNAL", "message": str(exc)})
            return
        if asyncio.iscoroutine(result):
            asyncio.get_running_loop().create_task(self._finish(result, reply))
        else:
            reply(True, result)

    def _dispatch_pay_many(self, items: Any, reply: Reply) -> None:
        """Many payments in one call (the gateway's batch endpoint sends one per shard), taken
        as one column: every item is checked in one pass here (what _check_pay checks, with the
        values the items share, such as the partner, creditor and currency, checked once); the
        items that pass go to the batcher as ONE queue entry, which decides each of them
        atomically as a lone "pay" is decided (ledger/batcher.py) and answers once, after the
        group commit holding them. An item refused here fails alone with its own error; the
        answer is `[[ok, result], ...]` in item order."""
        if type(items) is not list or not 1 <= len(items) <= PAY_MANY_ITEMS_MAX:
            reply(
                False, {"code": "BAD_REQUEST", "message": f"pay_many takes a list of 1-{PAY_MANY_ITEMS_MAX} payments"}
            )
            return
        if self.naive_pool is not None:  # the naive baseline: each item its own "pay"
            self._dispatch_pay_items(items, reply)
            return
        results: list[Any] = [None] * len(items)
        pending: list[tuple[int, dict[str, Any]]] = []
        proven: set[tuple[Any, ...]] = set()  # (check, value) pairs that passed in this call
        held = self.held_slot_map
        owner_of = held.assignment if held is not None else None
        agreements = self.state.agreements
        shard = self.config.shard
        for index, item in enumerate(items):
            if _pay_item_ok(self, item, proven):
                if owner_of is not None:  # the slot guard, per item (see _guard_pay)
                    agreement = agreements.get(item["agreement_id"])
                    if agreement is None:
                        moved = _moved_slot(self, item.get("slot"))
                        if moved is not None:
                            results[index] = [False, moved]
                            continue
                    elif owner_of[zlib.crc32(agreement.debtor_account.encode()) % SLOT_COUNT] != shard:
                        results[index] = [False, _moved(self, agreement.debtor_account)]
                        continue
                pending.append((index, item))
                continue
            try:
                _check_pay(self, item)  # the exact refusal (it raises for what the fast pass refused)
            except v.BadCommand as exc:
                results[index] = [False, {"code": "BAD_REQUEST", "message": str(exc)}]
                continue
            pending.append((index, item))  # pragma: no cover (the fast pass refuses no more than _check_pay)
        if not pending:
            reply(True, results)
            return
        if self.queued_weight + len(pending) > self.config.queue_max:
            overloaded = {"code": "OVERLOADED", "message": f"shard {self.config.shard} queue is full"}
            for index, _ in pending:
                results[index] = [False, overloaded]
            reply(True, results)
            return
        self.queue.append(("pay_many", PayMany(results, pending), reply))
        self.queued_weight += len(pending)
        self.work_ready.set()

    def _dispatch_pay_items(self, items: list[Any], reply: Reply) -> None:
        """pay_many as one "pay" per item (the naive baseline's path)."""
        results: list[Any] = [None] * len(items)
        remaining = [len(items)]

        def item_reply(index: int) -> Reply:
            def answer(ok: bool, result: Any) -> None:
                if results[index] is not None:
                    return  # answered once already
                results[index] = [ok, result]
                remaining[0] -= 1
                if remaining[0] == 0:
                    reply(True, results)

            return answer

        for index, item in enumerate(items):
            self.dispatch("pay", item, item_reply(index))

    async def _finish(self, coro: Any, reply: Reply) -> None:
        try:
            reply(True, await coro)
        except Exception as exc:
            log.exception("async read failed")
            reply(False, {"code": "INTERNAL", "message": str(exc)})


class PayMany:
    """A pay_many command as queued: its answer so far (the items refused at intake hold
    theirs) and the items still to decide, with their places in the answer."""

    __slots__ = ("pending", "results")

    def __init__(self, results: list[Any], pending: list[tuple[int, dict[str, Any]]]) -> None:
        self.results = results
        self.pending = pending


def queue_weight(op: str, args: Any) -> int:
    """Commands a queue entry counts for (against queue_max and batch_size_max)."""
    return len(args.pending) if op == "pay_many" else 1


# The fields a "pay" must carry: _check_pay and the fast pass of pay_many both check these.
_PAY_REQUIRED = (
    "payment_id",
    "partner_id",
    "agreement_id",
    "amount_minor",
    "currency",
    "creditor_account",
    "creditor_shard",
    "reference",
    "body_hash",
)
_PAY_FIELDS = frozenset(_PAY_REQUIRED)
_ident_match = v._ID.fullmatch


def _pay_item_ok(worker: WorkerBase, item: Any, proven: set[tuple[Any, ...]]) -> bool:
    """True if _check_pay would pass `item`, checking what `proven` (the values that passed
    earlier in the same call) does not already vouch for. False: let _check_pay say why."""
    if type(item) is not dict or not _PAY_FIELDS <= item.keys():
        return False
    payment_id = item["payment_id"]
    if type(payment_id) is not str or _ident_match(payment_id) is None:
        return False
    amount_minor = item["amount_minor"]
    if type(amount_minor) is not int or not 1 <= amount_minor <= v.INT64_MAX:
        return False
    for key in ("partner_id", "agreement_id", "creditor_account"):
        value = item[key]
        if type(value) is not str:
            return False
        if ("id", value) not in proven:
            if _ident_match(value) is None:
                return False
            proven.add(("id", value))
    currency, creditor_shard = item["currency"], item["creditor_shard"]
    if type(currency) is not str or type(creditor_shard) is not int:
        return False
    shared = ("shard", currency, creditor_shard, item["creditor_account"])
    if shared not in proven:
        if currency not in CURRENCY_EXPONENTS or not 0 <= creditor_shard < worker.config.shard_count:
            return False
        if creditor_shard != worker.config.shard and is_striped(item["creditor_account"]):
            return False
        proven.add(shared)
    for key, max_chars in _PAY_TEXTS:
        value = item.get(key)
        if value is None and key in _PAY_OPTIONAL:
            continue
        if type(value) is not str:
            return False
        if (key, value) not in proven:
            if not v.is_safe_text(value, max_chars):
                return False
            proven.add((key, value))
    return True


_PAY_TEXTS = (
    ("reference", v.REFERENCE_MAX),
    ("body_hash", v.HASH_MAX),
    ("device_id", v.DEVICE_ID_MAX),
    ("ip", v.IP_MAX),
)
_PAY_OPTIONAL = frozenset(("device_id", "ip"))


# ---- the slot guard (issue 21) ---------------------------------------------------
# A write command for an account whose slot this shard does not own under its held slot map
# is refused at intake, before it is queued, with MOVED naming the owner and the map version:
# the gateway refetches the map and retries once there (gateway/shards.py). Each guard takes a
# command that passed its intake check and returns None (ours) or the MOVED answer. With the
# map of version 1 nothing is ever refused: every shard owns the slots of its own ids.
def _moved(worker: WorkerBase, account_id: str) -> dict[str, Any] | None:
    if is_striped(account_id):
        return None  # striped accounts are on every shard and never move
    return _moved_slot(worker, zlib.crc32(account_id.encode()) % SLOT_COUNT)


def _moved_slot(worker: WorkerBase, slot: Any) -> dict[str, Any] | None:
    held = worker.held_slot_map
    if held is None or type(slot) is not int or not 0 <= slot < SLOT_COUNT:
        return None
    owner = held.assignment[slot]
    if owner == worker.config.shard:
        return None
    return {
        "code": "MOVED",
        "message": f"slot {slot} is on shard {owner} under slot map version {held.version}",
        "slot": slot,
        "shard": owner,
        "version": held.version,
    }


def _guard_pay(worker: WorkerBase, args: Any) -> dict[str, Any] | None:
    """A payment by its debtor's slot when this shard holds the agreement; else by the `slot`
    a gateway's retry after MOVED carries (gateway/shards.py `retargeted`), if any. Without
    either the decider answers as before (an unknown agreement)."""
    agreement = worker.state.agreements.get(args["agreement_id"])
    if agreement is None:
        return _moved_slot(worker, args.get("slot"))
    return _moved(worker, agreement.debtor_account)


def _guard_open_accounts(worker: WorkerBase, args: Any) -> dict[str, Any] | None:
    for account in args:  # refused whole: the gateway opens one account per call
        moved = _moved(worker, account["id"])
        if moved is not None:
            return moved
    return None


_GUARDS: dict[str, Callable[[WorkerBase, Any], dict[str, Any] | None]] = {
    "pay": _guard_pay,
    "fund": lambda worker, args: _moved(worker, args["account_id"]),
    "create_agreement": lambda worker, args: _moved(worker, args["debtor_account"]),
    "open_accounts": _guard_open_accounts,
}


# ---- intake checks: what a shard can store (ledger/validate.py) ------------------
# Run by dispatch() before a write command is queued, so a value PostgreSQL would
# refuse (a NUL, a surrogate, an int beyond int64, an unknown currency) never reaches
# the prefetch, the decision or the batch write: it is answered BAD_REQUEST alone.
def _check_pay(worker: WorkerBase, args: Any) -> None:
    v.fields(args, *_PAY_REQUIRED)
    for key in ("payment_id", "partner_id", "agreement_id", "creditor_account"):
        v.ident(args, key)
    v.amount(args, "amount_minor")
    v.currency(args)
    if v.int64(args, "creditor_shard", 0, worker.config.shard_count - 1) != worker.config.shard and is_striped(
        args["creditor_account"]
    ):
        # A striped account is credited on the debtor's shard; a leg to another shard's
        # clearing stripe would write a transfer from clearing to clearing there.
        raise v.BadCommand("a striped account is never credited across shards")
    v.text(args, "reference", v.REFERENCE_MAX)
    v.text(args, "body_hash", v.HASH_MAX)
    v.text(args, "device_id", v.DEVICE_ID_MAX, optional=True)
    v.text(args, "ip", v.IP_MAX, optional=True)


def _check_fund(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "transfer_id", "account_id", "amount_minor", "currency", "reference", "body_hash")
    v.ident(args, "transfer_id")
    v.ident(args, "account_id")
    v.amount(args, "amount_minor")
    v.currency(args)
    v.text(args, "reference", v.REFERENCE_MAX)
    v.text(args, "body_hash", v.HASH_MAX)


CREDIT_LEGS_MAX = 100_000
_LEG_FIELDS = ("transfer_id", "source_shard", "creditor", "amount_minor", "currency", "at_ms")


def _check_credit(worker: WorkerBase, args: Any) -> None:
    # All legs are checked before any is applied: a malformed call is refused whole.
    if type(args) is not list or len(args) > CREDIT_LEGS_MAX:
        raise v.BadCommand(f"credit takes a list of at most {CREDIT_LEGS_MAX} legs")
    for leg in args:
        if type(leg) is not list or len(leg) != 6:
            raise v.BadCommand("a credit leg is [" + ", ".join(_LEG_FIELDS) + "]")
        named = dict(zip(_LEG_FIELDS, leg))
        v.ident(named, "transfer_id")
        v.int64(named, "source_shard", 0, worker.config.shard_count - 1)
        if is_striped(v.ident(named, "creditor")):  # type: ignore[arg-type]
            raise v.BadCommand("a credit leg never credits a striped account")
        v.amount(named, "amount_minor")
        v.currency(named)
        v.timestamp_ms(named, "at_ms")


def _check_delivered(worker: WorkerBase, args: Any) -> None:
    if type(args) is not list:
        raise v.BadCommand("delivered takes a list of transfer ids")
    for transfer_id in args:
        v.ident({"transfer_id": transfer_id}, "transfer_id")


OPEN_ACCOUNTS_MAX = 10_000


def _check_open_accounts(worker: WorkerBase, args: Any) -> None:
    if type(args) is not list or len(args) > OPEN_ACCOUNTS_MAX:
        raise v.BadCommand(f"open_accounts takes a list of at most {OPEN_ACCOUNTS_MAX} accounts")
    for a in args:
        v.fields(a, "id", "currency")
        v.ident(a, "id")
        v.currency(a)
        v.ident(a, "partner_id", optional=True)
        if a.get("kind", "customer") not in ("customer", "settlement"):
            raise v.BadCommand("only customer and settlement accounts can be opened")


def _check_create_partner(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "id", "name", "secret_sha256", "settlement_account")
    v.ident(args, "id")
    v.text(args, "name", v.NAME_MAX)
    v.text(args, "secret_sha256", v.HASH_MAX)
    v.ident(args, "settlement_account")


def _check_create_agreement(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "id", "partner_id", "debtor_account", "currency", "per_payment_limit_minor", "periodic_limits")
    for key in ("id", "partner_id", "debtor_account"):
        v.ident(args, key)
    v.currency(args)
    v.amount(args, "per_payment_limit_minor")
    limits = args["periodic_limits"]
    if type(limits) is not list or len(limits) > PERIODIC_LIMITS_MAX:
        raise v.BadCommand(f"periodic_limits is a list of at most {PERIODIC_LIMITS_MAX} [period, alignment, amount]")
    seen = set()
    for limit in limits:
        if type(limit) is not list or len(limit) != 3 or limit[0] not in PERIODS or limit[1] not in ALIGNMENTS:
            raise v.BadCommand("a periodic limit is [Day|Week|Month|Year, Calendar|Consent, amount_minor]")
        v.amount({"amount_minor": limit[2]}, "amount_minor")
        if (limit[0], limit[1]) in seen:
            raise v.BadCommand("one periodic limit per period and alignment")
        seen.add((limit[0], limit[1]))
    window = [args.get(key) for key in ("valid_from_ms", "valid_to_ms")]
    for key in ("valid_from_ms", "valid_to_ms"):
        v.timestamp_ms(args, key, optional=True)
    if window[0] is not None and window[1] is not None and window[0] > window[1]:
        raise v.BadCommand("valid_from_ms is after valid_to_ms")


def _check_agreement_action(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "id", "action", "actor")
    v.ident(args, "id")
    v.ident(args, "partner_id", optional=True)
    if args["actor"] not in ACTORS or type(args["action"]) is not str:
        raise v.BadCommand(f"actor is one of {', '.join(ACTORS)}; action is text")


def _check_partner_rate_limit(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "id", "requests_per_s", "burst")
    v.ident(args, "id")
    v.int64(args, "requests_per_s", 1, RATE_LIMIT_MAX)
    v.int64(args, "burst", 1, RATE_LIMIT_MAX)


def _check_partner_action(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "id", "action", "actor")
    v.ident(args, "id")
    if args["action"] not in PARTNER_ACTIONS:
        raise v.BadCommand(f"action is one of {', '.join(PARTNER_ACTIONS)}")
    v.text(args, "actor", v.NAME_MAX)
    v.text(args, "reason", v.REFERENCE_MAX, optional=True)
    if args["action"] == "rotate_secret":
        v.fields(args, "secret_sha256", "overlap_ms")
        v.text(args, "secret_sha256", v.HASH_MAX)
        v.int64(args, "overlap_ms", 0, SECRET_OVERLAP_MAX_MS)


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def _check_refund(worker: WorkerBase, args: Any) -> None:
    v.fields(args, "refund_id", "partner_id", "payment_id", "body_hash")
    for key in ("refund_id", "partner_id", "payment_id"):
        v.ident(args, key)
    if args.get("amount_minor") is not None:
        v.amount(args, "amount_minor")
    if args.get("reason") is not None and args["reason"] not in REFUND_REASONS:
        raise v.BadCommand(f"reason is one of {', '.join(REFUND_REASONS)}")
    v.text(args, "reference", v.REFERENCE_MAX, optional=True)
    v.text(args, "body_hash", v.HASH_MAX)


def _check_settings(worker: WorkerBase, args: Any) -> None:
    if type(args) is not dict or not all(
        v.is_safe_text(key, 200) and v.is_storable_text(value) for key, value in args.items()
    ):
        raise v.BadCommand("settings take a map of text keys to text values without NUL")


def _check_fraud(worker: WorkerBase, args: Any) -> None:
    # The fraud adapter checks what a change means; here, only that its text can be stored.
    if type(args) is not dict:
        raise v.BadCommand("fraud takes a map")
    for key, value in args.items():
        for item in value if type(value) is list else (value,):
            if type(item) is str and not v.is_storable_text(item):
                raise v.BadCommand(f"{key} holds a NUL or a lone surrogate")


_CHECKS: dict[str, Callable[[WorkerBase, Any], None]] = {
    "pay": _check_pay,
    "fund": _check_fund,
    "credit": _check_credit,
    "delivered": _check_delivered,
    "delivered_held": _check_delivered,
    "open_accounts": _check_open_accounts,
    "create_partner": _check_create_partner,
    "create_agreement": _check_create_agreement,
    "settings": _check_settings,
    "fraud": _check_fraud,
    "agreement_action": _check_agreement_action,
    "refund": _check_refund,
    "partner_rate_limit": _check_partner_rate_limit,
    "partner_action": _check_partner_action,
}
