"""Quick-payments: placing one (shared with the batch endpoint) and reading one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kernel.ids import is_striped, payment_id_for, shard_of_payment
from kernel.resources import payment_resource

from ..errors import ApiError
from ..requests import body_hash, read_body
from ..responses import _REPLAYED, _json, _raise_for
from ..schemas import QuickPaymentRequest, decode_body
from ..shards import ShardRouter
from ..state import Gateway


# -- quick-payments --
async def own_transfer(
    router: ShardRouter, shard: int | None, transfer_id: str, kind: str, partner_id: str
) -> dict[str, Any] | None:
    """A committed journal row of this kind and this partner's, else None (404 to the caller:
    another partner's row is "not found", never "forbidden")."""
    found = None if shard is None else await router.call(shard, "payment", {"id": transfer_id})
    if found is None or found["kind"] != kind or found["partner_id"] != partner_id:
        return None
    return dict(found)


_NOT_LOOKED_UP = object()


async def prepare_payment(
    gw: Gateway, partner_id: str, key: str, body: QuickPaymentRequest, creditors: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """Validate one payment and build its shard command: (debtor's shard, "pay" arguments).
    A refusal raises ApiError. A creditor on another shard is looked up unless `creditors`
    (the batch endpoint's lookups, made together beforehand) already holds its answer."""
    router = gw.router
    currency = gw.currency(body.currency)
    amount_minor = gw.amount(body.amount, currency, "$.amount")
    shard = router.shard_of(body.agreement_id)
    creditor = body.creditor_account
    if is_striped(creditor):
        creditor_shard = shard  # the local stripe takes the credit
        if not creditor.startswith("set_"):
            _raise_for("CREDITOR_NOT_FOUND")
    else:
        creditor_shard = router.shard_of_account(creditor)
        if creditor_shard != shard:
            found: Any = _NOT_LOOKED_UP if creditors is None else creditors.get(creditor, _NOT_LOOKED_UP)
            if found is _NOT_LOOKED_UP:
                found = await router.lookup_account(creditor)
            elif isinstance(found, BaseException):
                raise found  # the batch's lookup of this creditor failed
            if found is None or found["kind"] != "customer":
                _raise_for("CREDITOR_NOT_FOUND")
            elif found["currency"] != currency:
                _raise_for("CURRENCY_MISMATCH")
    risk = body.risk or None
    device_id = risk.device_id if risk else None
    ip = risk.ip if risk else None
    return shard, {
        "payment_id": payment_id_for(partner_id, key, shard),
        "partner_id": partner_id,
        "agreement_id": body.agreement_id,
        "amount_minor": amount_minor,
        "currency": currency,
        "creditor_account": creditor,
        "creditor_shard": creditor_shard,
        "reference": body.reference,
        "device_id": device_id,
        "ip": ip,
        "body_hash": body_hash(body.agreement_id, amount_minor, currency, creditor, body.reference, device_id, ip),
    }


def payment_outcome(result: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A shard's answer to "pay" as (resource, replayed); a refusal raises ApiError."""
    code = result["code"]
    if code == "OK":
        return payment_resource(result["transfer"]), False
    if code == "REPLAY":
        return payment_resource(result["transfer"]), True
    _raise_for(code)
    raise AssertionError("unreachable")


async def place_payment(
    gw: Gateway, partner_id: str, key: str, body: QuickPaymentRequest
) -> tuple[dict[str, Any], bool]:
    """Validate one payment, send it to its debtor's shard and wait for the answer (sent
    only after the shard's batch holding it committed). Returns (resource, replayed);
    a refusal raises ApiError, a shard that does not answer ShardUnavailable/Overloaded."""
    shard, args = await prepare_payment(gw, partner_id, key, body)
    return payment_outcome(await gw.router.call(shard, "pay", args))


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """POST /v1/quick-payments and GET /v1/quick-payments/{payment_id}."""
    router = gw.router

    @routes.post("/v1/quick-payments")
    async def create_payment(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        key = gw.idempotency_key(request)
        body: QuickPaymentRequest = decode_body(await read_body(request), QuickPaymentRequest)  # type: ignore[assignment]
        resource, replayed = await place_payment(gw, partner_id, key, body)
        return _json(201, resource, _REPLAYED if replayed else None)

    # Not "batch": that path is the batch endpoint (POST only), and its Allow header must
    # not advertise this GET (no payment id is "batch", ids are pay_...).
    @routes.get(r"/v1/quick-payments/{payment_id:(?!batch\Z)[^{}/]+}")
    async def get_payment(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        payment_id = request.match_info["payment_id"]
        found = await own_transfer(
            router, shard_of_payment(payment_id, router.count), payment_id, "payment", partner_id
        )
        if found is None:
            raise ApiError(404, "QP.Payment.NotFound", "no such payment")
        return _json(200, payment_resource(found))
