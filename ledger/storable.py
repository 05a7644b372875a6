"""Accepted means storable and readable: what one command adds to a batch must come back,
through the writer's encoding and every reader's decoding, exactly as it went in.

The batcher calls `check_command` after each command's decision and before it keeps it
(ShardState.begin / commit / rollback): a value that would make the batch write fail (and
stop the worker), or that a reader could not decode or render (the API's ISO times, the
notifier's event bodies, a restart's load), fails that command alone, and its changes are
rolled back; the partner is told nothing was stored, which is the truth.

Each row goes through the same functions the system uses: the batch write's encodings
(`pg.transfer_record`, the fast path's msgspec JSON of the Transfer, `pg.agreement_record`)
and the readers' decoders (`pg.row_to_transfer`, `pg.row_to_agreement`), plus what the
column types take (bigint, text without NUL, jsonb) and what the renderers take (times in
`kernel.timestamps`' range, amounts within int64). The reply goes through the shard
protocol's msgpack encoding and back.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from kernel.timestamps import is_representable_ms

from . import pg
from .model import Agreement, Transfer
from .state import WriteSet
from .undo import UndoLog

__all__ = ["NotStorable", "check_agreement", "check_command", "check_transfer", "check_value"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# jsonb and text refuse NUL; UTF-8 cannot carry a lone surrogate.
_UNSTORABLE_CHARS = ("\x00",)
_NESTING_MAX = 32

_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder().decode
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class NotStorable(ValueError):
    """A value the database, the wire or a reader cannot hold as it is."""


def _text_ok(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_value(value: Any, where: str, depth: int = 0) -> None:
    """What PostgreSQL's bigint, text and jsonb columns and JSON take."""
    kind = type(value)
    if kind is str:
        if not _text_ok(value):
            raise NotStorable(f"{where}: text with NUL or a lone surrogate")
    elif kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise NotStorable(f"{where}: integer beyond int64")
    elif kind is bool or value is None:
        pass
    elif kind is float:
        if not math.isfinite(value):
            raise NotStorable(f"{where}: a number that is not finite")
    elif depth >= _NESTING_MAX:
        raise NotStorable(f"{where}: nested more than {_NESTING_MAX} levels")
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _text_ok(key):
                raise NotStorable(f"{where}: a key that is not storable text")
            check_value(item, f"{where}.{key}", depth + 1)
    elif kind is list or kind is tuple:
        for index, item in enumerate(value):
            check_value(item, f"{where}[{index}]", depth + 1)
    else:
        raise NotStorable(f"{where}: a {kind.__name__} cannot be stored")


def _time(value: int | None, where: str) -> None:
    if value is not None and not is_representable_ms(value):
        raise NotStorable(f"{where}: {value!r} is not a representable time")


def check_transfer(transfer: Transfer) -> None:
    """The journal row, through the batch write's own encoding (msgspec JSON of the Transfer,
    expanded by json_populate_recordset; the COPY path writes the same values).

    This runs for every payment, so it checks what the encoding does not: msgspec refuses a
    lone surrogate, but writes NUL as the escape \\u0000 (which text and jsonb refuse), any
    integer (bigint holds int64) and NaN as null. The nested jsonb values (a fraud decision,
    reason details: present on a minority of rows) are walked and must re-encode identically."""
    t = transfer
    try:
        encoded = _json_encode(t)
    except (UnicodeEncodeError, TypeError, OverflowError) as exc:
        raise NotStorable(f"transfer {t.id!r}: {exc}") from None
    if b"\\u0000" in encoded:
        raise NotStorable(f"transfer {t.id!r}: text with NUL")
    if not (
        type(t.id) is str
        and type(t.kind) is str
        and type(t.debit_account) is str
        and type(t.credit_account) is str
        and type(t.currency) is str
        and type(t.status) is str
    ):
        raise NotStorable(f"transfer {t.id!r}: a required text column is not text")
    for value in (
        t.partner_id,
        t.agreement_id,
        t.reference,
        t.creditor_account,
        t.body_hash,
        t.device_id,
        t.ip,
        *t.reasons,
    ):
        if value is not None and type(value) is not str:
            raise NotStorable(f"transfer {t.id!r}: a text column holds {type(value).__name__}")
    amount = t.amount_minor
    if not (
        type(amount) is int
        and 0 < amount <= INT64_MAX
        and type(t.seq) is int
        and 0 <= t.seq <= INT64_MAX
        and type(t.refunded_minor) is int
        and 0 <= t.refunded_minor <= amount
    ):
        raise NotStorable(f"transfer {t.id!r}: an amount or sequence number beyond bigint")
    if not is_representable_ms(t.created_at_ms):
        raise NotStorable(f"transfer {t.id!r}: created_at_ms is not a representable time")
    for column, nested in (("fraud", t.fraud), ("details", t.details)):
        if nested is not None:
            check_value(nested, f"transfers.{column}")
            once = _json_encode(nested)
            if _json_encode(_json_decode(once)) != once:
                raise NotStorable(f"transfers.{column} does not read back as written")


def check_agreement(agreement: Agreement, at_ms: int) -> None:
    record = pg.agreement_record(agreement)
    for column, value in zip(pg.AGREEMENT_COLUMNS, record):
        check_value(value, f"agreements.{column}")
    check_value([limit.to_wire() for limit in agreement.periodic_limits], "agreements.periodic_limits")
    for column in ("created_at_ms", "valid_from_ms", "valid_to_ms", "status_updated_at_ms"):
        _time(getattr(agreement, column), f"agreements.{column}")
    back = pg.row_to_agreement(dict(zip(pg.AGREEMENT_COLUMNS, record)))
    stored = [(limit.period, limit.alignment, limit.amount_minor) for limit in agreement.periodic_limits]
    if [(limit.period, limit.alignment, limit.amount_minor) for limit in back.periodic_limits] != stored or (
        back.id,
        back.partner_id,
        back.debtor_account,
        back.currency,
        back.per_payment_limit_minor,
        back.status,
        back.created_at_ms,
        back.valid_from_ms,
        back.valid_to_ms,
        back.status_updated_at_ms,
    ) != (
        agreement.id,
        agreement.partner_id,
        agreement.debtor_account,
        agreement.currency,
        agreement.per_payment_limit_minor,
        agreement.status,
        agreement.created_at_ms,
        agreement.valid_from_ms,
        agreement.valid_to_ms,
        agreement.status_updated_at_ms,
    ):
        raise NotStorable(f"agreement {agreement.id!r} does not read back as written")
    # What every reader shows: the effective status and each limit's current window.
    for limit in back.to_wire(at_ms)["periodic_limits"]:
        _time(limit["period_start_ms"], "agreements.periodic_limits.period_start_ms")
        _time(limit["period_end_ms"], "agreements.periodic_limits.period_end_ms")


def check_reply(result: Any) -> None:
    """The reply crosses the shard protocol (msgpack): it must encode (an integer beyond
    64 bits, a lone surrogate or an unknown type would fail there, after the commit)."""
    try:
        _msgpack_encode(result)
    except (UnicodeEncodeError, TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise NotStorable(f"the answer cannot cross the shard protocol: {exc}") from None


def check_command(ws: WriteSet, mark: tuple[int, ...], result: Any, at_ms: int, undo: UndoLog) -> None:
    """Everything the command added to `ws` since `mark`, and its reply."""
    accounts, partners, agreements, events, transfers, outbox = mark[:6]
    step = undo.step  # each check is a step a test can fail (UndoLog.fault_at)
    step()
    rows = ws.transfers
    for index in range(transfers, len(rows)):
        check_transfer(rows[index])
        step()
    if len(ws.outbox) > outbox:
        for leg in ws.outbox[outbox:]:
            check_value([leg.transfer_id, leg.creditor_account, leg.amount_minor, leg.currency], "outbox")
            _time(leg.at_ms, "outbox.created_at_ms")
    if len(ws.accounts) > accounts:
        for account in ws.accounts[accounts:]:
            check_value(
                [account.id, account.kind, account.currency, account.partner_id, account.created_at_ms], "accounts"
            )
    if len(ws.partners) > partners:
        for partner in ws.partners[partners:]:
            check_value(partner, "partners")
            _time(partner.get("created_at_ms"), "partners.created_at_ms")
    if len(ws.agreements) > agreements:
        for agreement in ws.agreements[agreements:]:
            check_agreement(agreement, at_ms)
            step()
    partner_events = mark[8] if len(mark) > 8 else len(ws.partner_events)
    for partner_event in ws.partner_events[partner_events:]:
        check_value(list(pg.partner_event_record(partner_event)), "partner_events")
        check_value(partner_event[4], "partner_events.details")
        _time(partner_event[3], "partner_events.at_ms")
    if len(ws.agreement_events) > events:
        for event in ws.agreement_events[events:]:
            check_value(list(event), "agreement_events")
            _time(event[4], "agreement_events.at_ms")
    # Maps the command wrote into: balance deltas (a batch's sum for one account must fit
    # bigint), status changes, settings, limits, refund totals.
    deltas, updates = ws.deltas, ws.agreement_updates
    for mapping, key in undo.written_items():
        if mapping is deltas:
            if not INT64_MIN <= deltas[key] <= INT64_MAX:
                raise NotStorable(f"the batch's balance change of {key} goes beyond bigint")
        elif mapping is updates:
            check_agreement(updates[key], at_ms)
        elif mapping is ws.partner_updates:
            fields = ws.partner_updates[key]
            check_value([key, fields], "partners")
            for name in ("previous_secret_until_ms", "disabled_at_ms", "tokens_valid_after_ms"):
                _time(fields.get(name), f"partners.{name}")
        elif mapping is ws.settings or mapping is ws.partner_limits or mapping is ws.refunded:
            check_value([key, mapping[key]], "settings")
    check_reply(result)
    undo.step()
