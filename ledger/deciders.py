"""The per-command deciders: synchronous, called only by the batcher, on checked commands.

Plain functions taking the worker (a WorkerBase), listed by op in _DECIDERS; each decides
one command in ShardState into the batch's WriteSet (ledger/batcher.py runs them atomically).
Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .agreements import AgreementStatus, PeriodicLimit
from .model import Account, Agreement, Code, CreditLeg, FundingCommand, PaymentCommand, RefundCommand, Transfer
from .state import WriteSet
from .worker_base import WorkerBase

__all__: list[str] = []


def _payment_result(code: str, transfer: Transfer | None) -> tuple[bool, Any]:
    return True, {"code": code, "transfer": transfer.to_wire() if transfer is not None else None}


# ---- deciders (synchronous; called only by the batcher, on checked commands) -----
def _decide_pay(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = PaymentCommand(
        payment_id=args["payment_id"],
        partner_id=args["partner_id"],
        agreement_id=args["agreement_id"],
        amount_minor=args["amount_minor"],
        currency=args["currency"],
        creditor_account=args["creditor_account"],
        creditor_shard=args["creditor_shard"],
        reference=args["reference"],
        body_hash=args["body_hash"],
        at_ms=now_ms,
        device_id=args.get("device_id"),
        ip=args.get("ip"),
    )
    return _payment_result(*worker.state.execute_payment(cmd, ws))


def _decide_fund(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = FundingCommand(
        args["transfer_id"],
        args["account_id"],
        args["amount_minor"],
        args["currency"],
        args["reference"],
        args["body_hash"],
        now_ms,
    )
    return _payment_result(*worker.state.execute_funding(cmd, ws))


def _decide_credit(worker: WorkerBase, args: list[Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    codes = []
    held_ids = []
    for transfer_id, source, creditor, amount_minor, currency, at_ms in args:
        code = worker.state.execute_credit(CreditLeg(transfer_id, source, creditor, amount_minor, currency, at_ms), ws)
        codes.append(code)
        if code == Code.HELD:
            held_ids.append(transfer_id)
    # IN_FLIGHT means a duplicate of a leg in this very batch: it commits with it.
    # HELD legs are recorded (acknowledged) but moved nothing: see Code.HELD. Their ids go
    # back to the debtor shard, whose payment then stays InProcess instead of Completed.
    applied, held = codes.count(Code.OK), len(held_ids)
    return True, {"applied": applied, "held": held, "held_ids": held_ids, "replayed": len(codes) - applied - held}


def _decide_delivered(worker: WorkerBase, args: list[str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for transfer_id in args:
        worker.state.mark_delivered(transfer_id, ws)
    return True, None


def _decide_delivered_held(worker: WorkerBase, args: list[str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for transfer_id in args:
        worker.state.mark_delivered(transfer_id, ws, held=True)
    return True, None


def _decide_open_accounts(
    worker: WorkerBase, args: list[dict[str, Any]], ws: WriteSet, now_ms: int
) -> tuple[bool, Any]:
    created = 0
    for a in args:
        account = Account(a["id"], a.get("kind", "customer"), a["currency"], 0, False, a.get("partner_id"), now_ms)
        created += worker.state.open_account(account, ws)
    return True, {"created": created}


def _decide_create_partner(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    partner = {
        "id": args["id"],
        "name": args["name"],
        "secret_sha256": args["secret_sha256"],
        "settlement_account": args["settlement_account"],
        "created_at_ms": now_ms,
        "rate_limit_rps": None,
        "rate_limit_burst": None,
        "previous_secret_sha256": None,
        "previous_secret_until_ms": None,
        "disabled_at_ms": None,
        "tokens_valid_after_ms": None,
    }
    ws.partners.append(partner)
    worker.state.undo.setitem(worker.state.partners_cache, args["id"], partner)
    return True, {"id": args["id"]}


def _decide_create_agreement(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    existing = worker.state.agreements.get(args["id"])
    if existing is not None:
        return True, {"code": "EXISTS", "agreement": existing.to_wire(now_ms)}
    agreement = Agreement(
        args["id"],
        args["partner_id"],
        args["debtor_account"],
        args["currency"],
        args["per_payment_limit_minor"],
        [PeriodicLimit(period, alignment, amount) for period, alignment, amount in args["periodic_limits"]],
        AgreementStatus.AWAITING,
        now_ms,
        args.get("valid_from_ms"),
        args.get("valid_to_ms"),
    )
    code = worker.state.create_agreement(agreement, ws)
    if code == Code.OK:
        ws.agreement_events.append((agreement.id, None, AgreementStatus.AWAITING, "partner", now_ms))
    return True, {"code": code, "agreement": agreement.to_wire(now_ms) if code == Code.OK else None}


def _decide_agreement_action(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    code, agreement = worker.state.transition_agreement(
        args["id"], args.get("partner_id"), args["action"], args["actor"], now_ms, ws
    )
    return True, {"code": code, "agreement": agreement.to_wire(now_ms) if agreement is not None else None}


def _decide_partner_rate_limit(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    undo = worker.state.undo
    undo.setitem(ws.partner_limits, args["id"], (args["requests_per_s"], args["burst"]))
    cached = worker.state.partners_cache.get(args["id"])
    if cached is not None:
        undo.setitem(cached, "rate_limit_rps", args["requests_per_s"])
        undo.setitem(cached, "rate_limit_burst", args["burst"])
    return True, {"id": args["id"], "requests_per_s": args["requests_per_s"], "burst": args["burst"]}


def _decide_partner_action(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    code, status = worker.state.partner_action(
        args["id"],
        args["action"],
        args["actor"],
        now_ms,
        ws,
        secret_sha256=args.get("secret_sha256"),
        overlap_ms=args.get("overlap_ms", 0),
        reason=args.get("reason"),
    )
    return True, {"code": code, "partner": status}


def _decide_refund(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    cmd = RefundCommand(
        args["refund_id"],
        args["partner_id"],
        args["payment_id"],
        args.get("amount_minor"),
        args.get("reason"),
        args.get("reference"),
        args["body_hash"],
        now_ms,
    )
    return _payment_result(*worker.state.execute_refund(cmd, ws))


def _decide_settings(worker: WorkerBase, args: dict[str, str], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    for key, value in args.items():
        worker.state.undo.setitem(ws.settings, key, value)
    return True, None


def _decide_fraud(worker: WorkerBase, args: dict[str, Any], ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
    # Rule-set changes go through the batcher so that a switch happens between two
    # payments, never inside a batch's decision of one payment.
    decided: tuple[bool, Any] = worker.fraud_admin.decide(args, ws, now_ms, worker.state.undo)
    return decided


_DECIDERS: dict[str, Callable[[WorkerBase, Any, WriteSet, int], tuple[bool, Any]]] = {
    "pay": _decide_pay,
    "fund": _decide_fund,
    "credit": _decide_credit,
    "delivered": _decide_delivered,
    "delivered_held": _decide_delivered_held,
    "open_accounts": _decide_open_accounts,
    "create_partner": _decide_create_partner,
    "create_agreement": _decide_create_agreement,
    "settings": _decide_settings,
    "fraud": _decide_fraud,
    "agreement_action": _decide_agreement_action,
    "refund": _decide_refund,
    "partner_rate_limit": _decide_partner_rate_limit,
    "partner_action": _decide_partner_action,
}
_WRITE_OPS = frozenset(_DECIDERS)
# A decider raising one of these met a value it cannot decide or store: the command's own
# fault (400, nothing stored). Anything else is the ledger's (500, nothing stored).
_CLIENT_VALUE_ERRORS = (ArithmeticError, KeyError, TypeError, ValueError, IndexError, msgspec.EncodeError)
