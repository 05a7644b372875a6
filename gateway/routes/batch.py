"""The quick-payment batch: up to batch_items_max payments in one request, each failing alone."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kernel.ids import is_striped
from kernel.limits import INTERACTION_ID_MAX
from ledger.client import ShardError, ShardOverloaded, ShardUnavailable

from ..errors import ApiError, field_error
from ..requests import read_batch_body
from ..responses import _internal, _json, _shard_error, _unavailable
from ..schemas import QuickPaymentBatchItem, QuickPaymentBatchRequest, decode_body
from ..shards import retargeted
from ..state import RATE_VERDICT, Gateway
from .payments import payment_outcome, prepare_payment

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


def _item_error(index: int, error: ApiError) -> dict[str, Any]:
    return {
        "status": error.status,
        "error": {
            "code": error.code,
            "message": error.message,
            "errors": [{**e, "path": _item_path(index, e["path"])} for e in error.errors],
        },
    }


def _call_error(exc: BaseException, interaction_id: str) -> ApiError:
    """What a failed shard call (or creditor lookup) means for each item it carried."""
    if isinstance(exc, (ShardUnavailable, ShardOverloaded)):
        return _unavailable(f"the ledger did not answer ({exc}); retry with the same idempotency_key")
    if isinstance(exc, ShardError):
        return _shard_error(exc, interaction_id)
    return _internal(exc, interaction_id)  # a bug: these items' 500, logged; the others stand


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    """POST /v1/quick-payments/batch."""
    config = gw.config
    router = gw.router

    async def lookup_creditors(items: list[Any]) -> dict[str, Any]:
        """The creditors on another shard than their debtor, not yet cached, looked up
        together (each once), so that placing the items waits for none of them. A failed
        lookup's exception is kept as its answer: the items paying that creditor fail with
        it (alone), without asking again one after the other."""
        needed = {
            item.creditor_account
            for item in items
            if item is not None
            and not is_striped(item.creditor_account)
            and router.known_account(item.creditor_account) is None
            and router.shard_of_account(item.creditor_account) != router.shard_of(item.agreement_id)
        }
        if not needed:
            return {}
        names = list(needed)
        answers = await asyncio.gather(*(router.lookup_account(c) for c in names), return_exceptions=True)
        return dict(zip(names, answers))

    async def send(
        shard: int,
        indexes: list[int],
        commands: list[dict[str, Any]],
        results: list[Any],
        interaction_id: str,
        *,
        follow: bool = True,
    ) -> None:
        """One pay_many call to a shard for its items; each item's result in its place. Items
        the shard refuses as MOVED (ledger/dispatch.py, the slot guard) are sent once more, to
        the shard named (follow); MOVED again is the item's retryable 503."""
        try:
            answers = await router.clients[shard].call("pay_many", commands)
            if type(answers) is not list or len(answers) != len(commands):
                raise ShardError({"code": "INTERNAL", "message": f"pay_many answered {type(answers).__name__}"})
        except Exception as exc:
            failed = _call_error(exc, interaction_id)
            for index in indexes:
                results[index] = _item_error(index, failed)
            return
        moved: dict[int, tuple[list[int], list[dict[str, Any]]]] = {}
        for index, command, pair in zip(indexes, commands, answers):
            try:
                ok, answer = pair
                if not ok and follow and type(answer) is dict and answer.get("code") == "MOVED":
                    target = await router.follow_moved(answer)
                    again_indexes, again_commands = moved.setdefault(target, ([], []))
                    again_indexes.append(index)
                    again_commands.append(retargeted("pay", command, target, answer))
                    continue
                if not ok:
                    raise ShardError(answer)
                resource, replayed = payment_outcome(answer)
                results[index] = {"status": 201, "payment": resource, "replayed": replayed}
            except ApiError as exc:
                results[index] = _item_error(index, exc)
            except Exception as exc:
                results[index] = _item_error(index, _call_error(exc, interaction_id))
        if moved:
            await asyncio.gather(
                *(
                    send(target, again_indexes, again_commands, results, interaction_id, follow=False)
                    for target, (again_indexes, again_commands) in moved.items()
                )
            )

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
        results: list[Any] = [None] * granted
        # Decode every item, then validate each and group the commands by shard: one
        # pay_many call per shard carries them all, decided and committed in the shard's
        # group commits. Each item still fails alone (its own result), and the 200 leaves
        # only when every item is durable or has failed.
        decoded: list[QuickPaymentBatchItem | None] = []
        for index in range(granted):
            try:
                decoded.append(decode_body(items[index], QuickPaymentBatchItem))  # type: ignore[arg-type]
            except ApiError as exc:
                decoded.append(None)
                results[index] = _item_error(index, exc)
            except Exception as exc:  # a bug: this item's 500, logged; the others stand
                decoded.append(None)
                results[index] = _item_error(index, _internal(exc, interaction_id))
        creditors = await lookup_creditors(decoded)
        by_shard: dict[int, tuple[list[int], list[dict[str, Any]]]] = {}
        for index, item in enumerate(decoded):
            if item is None:
                continue
            try:
                shard, command = await prepare_payment(gw, partner_id, item.idempotency_key, item, creditors)
            except ApiError as exc:
                results[index] = _item_error(index, exc)
                continue
            except Exception as exc:
                results[index] = _item_error(index, _call_error(exc, interaction_id))
                continue
            indexes, commands = by_shard.setdefault(shard, ([], []))
            indexes.append(index)
            commands.append(command)
        if by_shard:
            await asyncio.gather(
                *(
                    send(shard, indexes, commands, results, interaction_id)
                    for shard, (indexes, commands) in by_shard.items()
                )
            )
        if granted == len(items):
            return _json(200, {"results": results})
        results += [_rate_limited_item(index, retry_after_s) for index in range(granted, len(items))]
        return _json(200, {"results": results}, {"Retry-After": str(retry_after_s)})
