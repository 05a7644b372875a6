"""Refunds of a partner's payments."""

from __future__ import annotations

from aiohttp import web

from kernel.ids import refund_id_for, shard_of_payment, shard_of_refund
from kernel.money import AmountError, parse_amount
from kernel.resources import refund_resource

from ..errors import ApiError, field_error
from ..requests import body_hash, read_body
from ..responses import _REPLAYED, _json, _raise_for
from ..schemas import RefundRequest, decode_body
from ..state import Gateway
from .payments import own_transfer


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """POST /v1/quick-payments/{payment_id}/refunds and GET /v1/refunds/{refund_id}."""
    router = gw.router

    # -- refunds --
    @routes.post(r"/v1/quick-payments/{payment_id:(?!batch\Z)[^{}/]+}/refunds")
    async def create_refund(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        key = gw.idempotency_key(request)
        payment_id = request.match_info["payment_id"]
        body: RefundRequest = decode_body(await read_body(request) or b"{}", RefundRequest)  # type: ignore[assignment]
        shard = shard_of_payment(payment_id, router.count)
        if shard is None:
            raise ApiError(404, "QP.Payment.NotFound", "no such payment")
        amount_minor = None
        if body.amount is not None:
            # The amount's grammar depends on the payment's currency: read it first.
            found = await own_transfer(router, shard, payment_id, "payment", partner_id)
            if found is None:
                raise ApiError(404, "QP.Payment.NotFound", "no such payment")
            try:
                amount_minor = parse_amount(body.amount, found["currency"])
            except AmountError as error:
                # The grammar is the document's; more decimals than this payment's currency has
                # is a rule of this payment, so 422.
                status = 422 if error.code == "QP.Amount.TooManyDecimals" else 400
                raise field_error(status, error.code, error.message, "$.amount") from None
        result = await router.call(
            shard,
            "refund",
            {
                "refund_id": refund_id_for(partner_id, key, shard),
                "partner_id": partner_id,
                "payment_id": payment_id,
                "amount_minor": amount_minor,
                "reason": body.reason,
                "reference": body.reference,
                "body_hash": body_hash(payment_id, amount_minor, body.reason, body.reference),
            },
        )
        code = result["code"]
        if code in ("OK", "REPLAY"):
            return _json(201, refund_resource(result["transfer"]), _REPLAYED if code == "REPLAY" else None)
        _raise_for(code)
        raise AssertionError("unreachable")

    @routes.get("/v1/refunds/{refund_id}")
    async def get_refund(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        refund_id = request.match_info["refund_id"]
        found = await own_transfer(router, shard_of_refund(refund_id, router.count), refund_id, "refund", partner_id)
        if found is None:
            raise ApiError(404, "QP.Refund.NotFound", "no such refund")
        return _json(200, refund_resource(found))
