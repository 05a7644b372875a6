"""Stored rows to model objects, and the quarantine of rows that cannot be read.

Every reader of the shards' and the control database's tables (the shard worker's start-up
load and its reads, the fraud window rebuild, the notifier, recon, the monitor, `quickpay
check`) decodes rows here. A decoder checks every value it hands on against what the whole
system can represent end to end: timestamps that Python's datetime (and so an ISO 8601
string) can hold, amounts inside int64, statuses, kinds, currencies, periods and actors
that the code knows, JSON columns of the shape their readers index into, text that encodes
as UTF-8. Any bad value raises RowError, naming the table, the row's key and the problem.

A reader that meets a RowError QUARANTINES the row: `Quarantine.skip` logs it (one
structured line: reader, table, key, problem), counts it per (reader, table), and the
reader goes on with the other rows. The counts are exposed as the Prometheus metric
`quickpay_quarantined_rows_total{reader,table}` (gateway/metrics.py), and `quickpay check`
runs the same decoders over every table of every shard and fails naming each bad row.

Pure: no I/O, no clock (times come in as at_ms).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kernel.money import CURRENCY_EXPONENTS, INT64_MAX

from .agreements import ACTORS, ALIGNMENTS, PERIODIC_LIMITS_MAX, PERIODS, AgreementStatus, PeriodicLimit, period_window
from .model import Agreement, Kind, Status, Transfer

__all__ = [
    "DECODERS",
    "MS_MAX",
    "MS_MIN",
    "QUARANTINE",
    "RECENT_MAX",
    "Quarantine",
    "RowError",
    "check_row",
    "decode_account",
    "decode_agreement",
    "decode_agreement_event",
    "decode_alert",
    "decode_event",
    "decode_outbox",
    "decode_partner",
    "decode_transfer",
]

log = logging.getLogger("quickpay.quarantine")

# The instants every part of the system can show: 1970-01-01T00:00:00.000Z up to
# 9999-12-31T23:59:59.999Z (Python's datetime ends there; before 1970 nothing is stamped).
MS_MIN = 0
MS_MAX = 253_402_300_799_999
# Quarantined rows kept in memory for `ping` and status (the counts are kept for every one).
RECENT_MAX = 100
# Keys of (reader, table) counted; a bound on the label set (readers and tables are ours).
COUNTS_MAX = 1_000
# What a key or a problem may be in a log line and the quarantine table.
TEXT_SHOWN_MAX = 300

_TRANSFER_KINDS = frozenset({Kind.PAYMENT, Kind.FUNDING, Kind.CREDIT_LEG, Kind.REFUND})
_TRANSFER_STATUSES = frozenset({Status.COMPLETED, Status.IN_PROCESS, Status.REJECTED, Status.SUCCEEDED})
_ACCOUNT_KINDS = frozenset({"customer", "settlement", "funding", "clearing"})
_FRAUD_DECISIONS = frozenset({"allow", "review", "block"})


class RowError(ValueError):
    """A stored row a reader cannot use: its table, key and what is wrong."""

    def __init__(self, table: str, key: Any, problem: str) -> None:
        self.table = table
        self.key = _shown(key)
        self.problem = _shown(problem)
        super().__init__(f"{table} row {self.key}: {self.problem}")


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= TEXT_SHOWN_MAX else text[:TEXT_SHOWN_MAX] + "…"


# ---- value checks: each returns the value or raises ValueError(problem) ---------------------
def _text(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"not text: {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text that does not encode as UTF-8") from None
    return value


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int64(value: Any) -> int:
    if type(value) is not int or not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"not an int64: {value!r}")
    return value


def _amount(value: Any) -> int:
    if type(value) is not int or not 0 < value <= INT64_MAX:
        raise ValueError(f"not an amount in 1..int64: {value!r}")
    return value


def _non_negative(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise ValueError(f"not a count in 0..int64: {value!r}")
    return value


def _ms(value: Any) -> int:
    """A timestamp that becomes a datetime and an ISO 8601 string."""
    if type(value) is not int or not MS_MIN <= value <= MS_MAX:
        raise ValueError(f"timestamp {value!r} ms is outside 1970..9999 UTC")
    return value


def _opt_ms(value: Any) -> int | None:
    return None if value is None else _ms(value)


def _one_of(allowed: Iterable[str], what: str) -> Callable[[Any], str]:
    known = frozenset(allowed)

    def check(value: Any) -> str:
        if type(value) is not str or value not in known:
            raise ValueError(f"unknown {what} {value!r}")
        return value

    return check


_currency = _one_of(CURRENCY_EXPONENTS, "currency")
_period = _one_of(PERIODS, "period")
_alignment = _one_of(ALIGNMENTS, "alignment")


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"not a boolean: {value!r}")
    return value


def _json(value: Any) -> Any:
    """A json/jsonb column as asyncpg hands it (text), or already decoded."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("JSON that does not parse") from None
    return value


def _text_list(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"not a list of text: {type(value).__name__}")
    return [_text(item) for item in value]


def _fraud(value: Any) -> dict[str, Any] | None:
    """transfers.fraud: NULL (a plain allow) or a fraud.Decision.to_dict() shape."""
    found = _json(value)
    if found is None:
        return None
    if not isinstance(found, dict):
        raise ValueError(f"fraud is not an object: {type(found).__name__}")
    if found.get("decision") not in _FRAUD_DECISIONS:
        raise ValueError(f"fraud decision {found.get('decision')!r} is unknown")
    score = found.get("score")
    if type(score) is not int or not -INT64_MAX <= score <= INT64_MAX:
        raise ValueError(f"fraud score {score!r} is not an integer")
    reasons = found.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, dict) and type(r.get("rule_id")) is str for r in reasons):
        raise ValueError("fraud reasons are not a list of rule hits")
    codes = found.get("reason_codes", [])
    if not isinstance(codes, list) or not all(type(c) is str for c in codes):
        raise ValueError("fraud reason_codes are not a list of text")
    return found


def _details(value: Any) -> dict[str, Any] | None:
    """transfers.details: NULL, a refund's {payment_id, reason}, or a Rejected payment's
    {reason_details: {limit_minor[, period, alignment, remaining_minor, period_start_ms,
    period_end_ms]}}."""
    found = _json(value)
    if found is None:
        return None
    if not isinstance(found, dict):
        raise ValueError(f"details is not an object: {type(found).__name__}")
    if "payment_id" in found:
        _text(found["payment_id"])
    if found.get("reason") is not None:
        _text(found["reason"])
    reason = found.get("reason_details")
    if reason is not None:
        if not isinstance(reason, dict):
            raise ValueError("reason_details is not an object")
        _int64(reason.get("limit_minor"))
        if "period" in reason:
            _period(reason["period"])
            _alignment(reason.get("alignment"))
            _int64(reason.get("remaining_minor"))
            _ms(reason.get("period_start_ms"))
            _ms(reason.get("period_end_ms"))
    return found


def _periodic_limits(value: Any) -> list[PeriodicLimit]:
    found = _json(value)
    if not isinstance(found, list) or len(found) > PERIODIC_LIMITS_MAX:
        raise ValueError(f"periodic_limits is not a list of at most {PERIODIC_LIMITS_MAX}")
    limits = []
    for item in found:
        if not isinstance(item, dict):
            raise ValueError("a periodic limit is not an object")
        limits.append(
            PeriodicLimit(
                _period(item.get("period")), _alignment(item.get("alignment")), _amount(item.get("amount_minor"))
            )
        )
    return limits


# ---- tables: column -> check, and the row's key column --------------------------------------
_TRANSFER_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "seq": _amount,
    "kind": _one_of(_TRANSFER_KINDS, "kind"),
    "debit_account": _text,
    "credit_account": _text,
    "amount_minor": _amount,
    "currency": _currency,
    "status": _one_of(_TRANSFER_STATUSES, "status"),
    "created_at_ms": _ms,
    "partner_id": _opt_text,
    "agreement_id": _opt_text,
    "reference": _opt_text,
    "creditor_account": _opt_text,
    "reasons": _text_list,
    "fraud": _fraud,
    "body_hash": _opt_text,
    "device_id": _opt_text,
    "ip": _opt_text,
    "refunded_minor": _non_negative,
    "details": _details,
}
_AGREEMENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "partner_id": _text,
    "debtor_account": _text,
    "currency": _currency,
    "per_payment_limit_minor": _amount,
    "periodic_limits": _periodic_limits,
    "status": _one_of(AgreementStatus.STORED, "status"),
    "created_at_ms": _ms,
    "valid_from_ms": _opt_ms,
    "valid_to_ms": _opt_ms,
    "status_updated_at_ms": _ms,
    "authorise_by_ms": _opt_ms,
}
_agreement_status = _one_of(AgreementStatus.STORED, "status")
_AGREEMENT_EVENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "seq": _amount,
    "agreement_id": _text,
    "from_status": lambda v: None if v is None else _agreement_status(v),
    "to_status": _agreement_status,
    "actor": _one_of(ACTORS, "actor"),
    "at_ms": _ms,
}
_OUTBOX_CHECKS: dict[str, Callable[[Any], Any]] = {
    "transfer_id": _text,
    "target_shard": _non_negative,
    "creditor_account": _text,
    "amount_minor": _amount,
    "currency": _currency,
    "created_at_ms": _ms,
}
_ACCOUNT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "kind": _one_of(_ACCOUNT_KINDS, "account kind"),
    "currency": _currency,
    "balance_minor": _int64,
    "allow_negative": _bool,
    "partner_id": _opt_text,
    "created_at_ms": _ms,
}
_PARTNER_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "name": _text,
    "secret_sha256": _text,
    "settlement_account": _text,
    "created_at_ms": _ms,
}
_ALERT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _text,
    "rule": _text,
    "account": _text,
    "at_ms": _ms,
    "details": lambda v: _object(_json(v), "details"),
}
_EVENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "seq": _amount,
    "id": _text,
    "partner_id": _text,
    "type": _text,
    "created_at_ms": _ms,
    "body": lambda v: _object(_json(_text(v)), "body"),
}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


_TABLES: dict[str, tuple[str, dict[str, Callable[[Any], Any]]]] = {
    "transfers": ("id", _TRANSFER_CHECKS),
    "agreements": ("id", _AGREEMENT_CHECKS),
    "agreement_events": ("seq", _AGREEMENT_EVENT_CHECKS),
    "outbox": ("transfer_id", _OUTBOX_CHECKS),
    "accounts": ("id", _ACCOUNT_CHECKS),
    "partners": ("id", _PARTNER_CHECKS),
    "alerts": ("id", _ALERT_CHECKS),
    "events": ("id", _EVENT_CHECKS),
}


def _key(table: str, row: Mapping[str, Any]) -> Any:
    column = _TABLES[table][0]
    try:
        return row[column]
    except (KeyError, IndexError):
        return "?"


def check_row(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Check the columns the row holds (a reader may select only some) and return them,
    JSON columns decoded. Raises RowError."""
    checks = _TABLES[table][1]
    out: dict[str, Any] = {}
    for column in row.keys():
        check = checks.get(column)
        value = row[column]
        if check is None:
            out[column] = value
            continue
        try:
            out[column] = check(value)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise RowError(table, _key(table, row), f"{column}: {exc}") from None
    return out


_OPT_TEXT = (str, type(None))


def decode_transfer(row: Mapping[str, Any]) -> Transfer:
    """The journal row as a Transfer. The notifier decodes every row of every journal, so the
    common case is one combined test of the plain columns; a row failing it (or holding JSON)
    goes through check_row, which names the problem."""
    id_, debit, credit, amount = row["id"], row["debit_account"], row["credit_account"], row["amount_minor"]
    seq, created, refunded, reasons = row["seq"], row["created_at_ms"], row["refunded_minor"], row["reasons"]
    partner, agreement, reference, creditor = (
        row["partner_id"],
        row["agreement_id"],
        row["reference"],
        row["creditor_account"],
    )
    body_hash, device, ip, fraud, details = row["body_hash"], row["device_id"], row["ip"], row["fraud"], row["details"]
    plain = (
        type(id_) is str
        and type(debit) is str
        and type(credit) is str
        and type(amount) is int
        and 0 < amount <= INT64_MAX
        and type(seq) is int
        and 0 < seq <= INT64_MAX
        and type(created) is int
        and MS_MIN <= created <= MS_MAX
        and type(refunded) is int
        and 0 <= refunded <= amount
        and row["kind"] in _TRANSFER_KINDS
        and row["status"] in _TRANSFER_STATUSES
        and row["currency"] in CURRENCY_EXPONENTS
        and isinstance(reasons, (list, tuple))
        and type(partner) in _OPT_TEXT
        and type(agreement) in _OPT_TEXT
        and type(reference) in _OPT_TEXT
        and type(creditor) in _OPT_TEXT
        and type(body_hash) in _OPT_TEXT
        and type(device) in _OPT_TEXT
        and type(ip) in _OPT_TEXT
        and fraud is None
        and details is None
        and all(type(r) is str for r in reasons)
    )
    if plain:
        text = "".join(
            t
            for t in (id_, debit, credit, partner, agreement, reference, creditor, body_hash, device, ip, *reasons)
            if t is not None
        )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                plain = False
    if not plain:
        v = check_row("transfers", row)
        if v["refunded_minor"] > v["amount_minor"]:
            raise RowError("transfers", v["id"], "refunded_minor exceeds amount_minor")
        fraud, details = v["fraud"] or None, v["details"] or None
    return Transfer(
        id=id_,
        seq=seq,
        kind=row["kind"],
        debit_account=debit,
        credit_account=credit,
        amount_minor=amount,
        currency=row["currency"],
        status=row["status"],
        created_at_ms=created,
        partner_id=partner,
        agreement_id=agreement,
        reference=reference,
        creditor_account=creditor,
        reasons=tuple(reasons),
        fraud=fraud,
        body_hash=body_hash,
        device_id=device,
        ip=ip,
        refunded_minor=refunded,
        details=details,
        committed=True,
    )


def decode_agreement(row: Mapping[str, Any], at_ms: int | None = None) -> Agreement:
    """The agreement; given at_ms, also each periodic limit's window holding at_ms (what the
    start-up load, the reads and the notifier compute) must be representable."""
    v = check_row("agreements", row)
    if v["valid_from_ms"] is not None and v["valid_to_ms"] is not None and v["valid_from_ms"] > v["valid_to_ms"]:
        raise RowError("agreements", v["id"], "valid_from_ms is after valid_to_ms")
    agreement = Agreement(
        v["id"],
        v["partner_id"],
        v["debtor_account"],
        v["currency"],
        v["per_payment_limit_minor"],
        v["periodic_limits"],
        v["status"],
        v["created_at_ms"],
        v["valid_from_ms"],
        v["valid_to_ms"],
        v["status_updated_at_ms"],
        v.get("authorise_by_ms"),
    )
    if at_ms is not None:
        check_windows(agreement, at_ms)
    return agreement


def check_windows(agreement: Agreement, at_ms: int) -> None:
    """Each periodic limit's window at at_ms can be computed and shown. Raises RowError."""
    for limit in agreement.periodic_limits:
        try:
            start, end = period_window(limit.period, limit.alignment, agreement.anchor_ms, at_ms)
            _ms(start)
            _ms(end)
        except (ValueError, OverflowError, OSError) as exc:
            raise RowError(
                "agreements",
                agreement.id,
                f"the {limit.alignment} {limit.period} window at {at_ms} cannot be computed: {exc}",
            ) from None


def decode_agreement_event(row: Mapping[str, Any]) -> dict[str, Any]:
    return check_row("agreement_events", row)


def decode_outbox(row: Mapping[str, Any]) -> dict[str, Any]:
    return check_row("outbox", row)


def decode_account(row: Mapping[str, Any]) -> dict[str, Any]:
    v = check_row("accounts", row)
    if not v.get("allow_negative", True) and v.get("balance_minor", 0) < 0:
        raise RowError("accounts", v.get("id"), "negative balance on an account that does not allow it")
    return v


def decode_partner(row: Mapping[str, Any]) -> dict[str, Any]:
    return check_row("partners", row)


def decode_alert(row: Mapping[str, Any]) -> dict[str, Any]:
    return check_row("alerts", row)


def decode_event(row: Mapping[str, Any]) -> dict[str, Any]:
    return check_row("events", row)


# What `quickpay check` runs over each table (the key column, the decoder).
DECODERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "accounts": decode_account,
    "partners": decode_partner,
    "agreements": decode_agreement,
    "agreement_events": decode_agreement_event,
    "transfers": decode_transfer,
    "outbox": decode_outbox,
    "alerts": decode_alert,
    "events": decode_event,
}


# ---- quarantine --------------------------------------------------------------------------------
class Quarantine:
    """Rows a process's readers skipped: logged once each time they are met, counted per
    (reader, table), the most recent RECENT_MAX kept (for `ping`), and those not yet stored
    kept for a reader that records them in the control database (the notifier, the monitor)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_MAX)
        self.unstored: deque[dict[str, Any]] = deque(maxlen=RECENT_MAX * 10)

    def skip(self, reader: str, error: RowError, shard: int | None = None) -> None:
        key = (reader, error.table)
        if key in self.counts or len(self.counts) < COUNTS_MAX:
            self.counts[key] = self.counts.get(key, 0) + 1
        entry = {"reader": reader, "table": error.table, "key": error.key, "problem": error.problem, "shard": shard}
        self.recent.append(entry)
        self.unstored.append(entry)
        log.error(
            "quarantined %s row %s (reader %s%s): %s",
            error.table,
            error.key,
            reader,
            "" if shard is None else f", shard {shard}",
            error.problem,
            extra={"fields": {"event": "row_quarantined", **entry}},
        )

    def take_unstored(self) -> list[dict[str, Any]]:
        taken = list(self.unstored)
        self.unstored.clear()
        return taken

    def summary(self) -> list[list[Any]]:
        """[[reader, table, count], ...] for `ping` and /metrics."""
        return [[reader, table, count] for (reader, table), count in sorted(self.counts.items())]

    def decode_all(
        self, reader: str, rows: Iterable[Any], decode: Callable[[Any], Any], shard: int | None = None
    ) -> list[Any]:
        """Every row that decodes; the others quarantined."""
        out = []
        for row in rows:
            try:
                out.append(decode(row))
            except RowError as exc:
                self.skip(reader, exc, shard)
        return out


# One per process: every reader of the process counts into it.
QUARANTINE = Quarantine()
