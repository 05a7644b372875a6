"""The quick-payment batch: up to batch_items_max payments in one request, each failing alone."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from kernel.limits import INTERACTION_ID_MAX
from ledger.client import ShardError, ShardOverloaded, ShardUnavailable

from ..errors import ApiError, field_error
from ..requests import read_batch_body
from ..responses import _internal, _json, _shard_error, _unavailable
from ..schemas import QuickPaymentBatchItem, QuickPaymentBatchRequest, decode_body
from ..state import RATE_VERDICT, Gateway
from .payments import place_payment

_KEY_HEADER_PATH = "header.x-idempotency-key"


def _rate_limited_item(index: int, retry_after_s: int) -> dict[str, Any]:
    """The result of a batch item past the partner's tokens (nothing was placed)."""
    message = f"over this partner's rate limit (one token per payment); retry after {retry_after_s} s"
    return {
        "status": 429,
        "error": {
            "code": "QP.RateLimit.Exceeded",
            "message": message,
            "errors": [{"code": "QP.RateLimit.Exceeded", "message": message, "path": f"$.payments[{index}]"}],
        },
    }


def _item_path(index: int, path: str) -> str:
    """An error path of a batch item: `$.amount` -> `$.payments[3].amount`; the key's header
    path -> `$.payments[3].idempotency_key`."""
    if path == _KEY_HEADER_PATH:
        return f"$.payments[{index}].idempotency_key"
    if path == "$" or path.startswith("$.") or path.startswith("$["):
        return f"$.payments[{index}]{path[1:]}"
    return path


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """POST /v1/quick-payments/batch."""
    config = gw.config

    async def batch_item(partner_id: str, index: int, raw: msgspec.Raw, interaction_id: str) -> dict[str, Any]:
        """One item's result; never raises (one bad item fails alone)."""
        try:
            item: QuickPaymentBatchItem = decode_body(raw, QuickPaymentBatchItem)  # type: ignore[assignment]
            resource, replayed = await place_payment(gw, partner_id, item.idempotency_key, item)
            return {"status": 201, "payment": resource, "replayed": replayed}
        except ApiError as exc:
            error = exc
        except (ShardUnavailable, ShardOverloaded) as exc:
            error = _unavailable(f"the ledger did not answer ({exc}); retry with the same idempotency_key")
        except ShardError as exc:
            error = _shard_error(exc, interaction_id)
        except Exception as exc:  # a bug: this item's 500, logged; the others stand
            error = _internal(exc, interaction_id)
        return {
            "status": error.status,
            "error": {
                "code": error.code,
                "message": error.message,
                "errors": [{**e, "path": _item_path(index, e["path"])} for e in error.errors],
            },
        }

    @routes.post("/v1/quick-payments/batch")
    async def create_payment_batch(request: web.Request) -> web.Response:
        partner_id = gw.partner_of(request)
        envelope: QuickPaymentBatchRequest = decode_body(  # type: ignore[assignment]
            await read_batch_body(request), QuickPaymentBatchRequest
        )
        items = envelope.payments
        items_max = config.batch_items_max
        if len(items) > items_max:
            raise field_error(
                400,
                "QP.Batch.TooManyItems",
                f"a batch holds 1-{items_max} payments; this one holds {len(items)}",
                "$.payments",
            )
        for index, raw in enumerate(items):
            if bytes(memoryview(raw)[:1]) != b"{":
                raise field_error(
                    400, "QP.Field.Invalid", "each item of payments must be a JSON object", f"$.payments[{index}]"
                )
        interaction_id = request.headers.get("x-fapi-interaction-id", "-")[:INTERACTION_ID_MAX]
        # One token per payment: partner_of took the first; items past the partner's tokens
        # are refused one by one (429 item errors, in order), the others proceed.
        granted = 1 + gw.take_items(request, partner_id, len(items) - 1)
        retry_after_s = request[RATE_VERDICT].retry_after_s if granted < len(items) else 0
        # All items are sent in the same event-loop tick where they need no creditor lookup,
        # so the shard clients put them in one frame per shard and the shards decide and
        # commit them in their group commits. Each answer comes after its commit: the 200
        # leaves only when every item is durable or has failed on its own.
        results = await asyncio.gather(
            *(batch_item(partner_id, index, raw, interaction_id) for index, raw in enumerate(items[:granted]))
        )
        if granted == len(items):
            return _json(200, {"results": results})
        results += [_rate_limited_item(index, retry_after_s) for index in range(granted, len(items))]
        return _json(200, {"results": results}, {"Retry-After": str(retry_after_s)})
