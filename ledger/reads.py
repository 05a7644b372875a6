"""The read ops: answered from memory, or from PostgreSQL's committed rows.

Plain functions taking the worker (a WorkerBase), listed by op in _READ_OPS, which
ledger/dispatch.py answers from; a function returns the answer, or a coroutine that a task
awaits. `ping` is ledger/heartbeat.py's. Split out of ledger/worker.py (issue 18, a pure move).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from kernel.limits import FEED_RETENTION_MS, ID_MAX, RECON_PAGE_ROWS_MAX

from . import pg
from . import validate as v
from .agreements import AgreementStatus
from .heartbeat import _read_ping
from .rows import QUARANTINE, RowError, check_windows, decode_alert
from .worker_base import WorkerBase

__all__ = [
    "AGREEMENTS_PAGE_MAX",
    "AGREEMENT_HISTORY_MAX",
    "DECISIONS_JOURNAL_SCAN_MAX",
    "DECISIONS_SCAN_MAX",
    "FEED_RETENTION_MS",
    "PARTNERS_PAGE_MAX",
    "PARTNER_AUDIT_MAX",
    "RECON_PAGE_MAX",
    "RECON_SUMMARY_STATEMENT_TIMEOUT_MS",
    "TRANSACTIONS_PAGE_MAX",
]

TRANSACTIONS_PAGE_MAX = 200


def _read_lookup_account(worker: WorkerBase, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    if account is None:
        return None
    return {"id": account.id, "kind": account.kind, "currency": account.currency}


def _read_balance(worker: WorkerBase, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    partner = args.get("partner_id")
    if account is None or (partner is not None and not worker.state.can_see(partner, account.id, worker.clock_ms())):
        return None
    return {
        "id": account.id,
        "kind": account.kind,
        "currency": account.currency,
        "balance_minor": account.committed_balance_minor,
    }


AGREEMENT_HISTORY_MAX = 50
AGREEMENTS_PAGE_MAX = 201  # the gateway asks for its page size (200 at most) plus one


async def _read_agreement_async(worker: WorkerBase, wire: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        wire["history"] = await pg.fetch_agreement_events(conn, wire["id"], AGREEMENT_HISTORY_MAX)
    return wire


def _read_agreement(worker: WorkerBase, args: dict[str, Any]) -> Any:
    agreement = worker.state.agreements.get(args["id"])
    if agreement is None or agreement.partner_id != args.get("partner_id", agreement.partner_id):
        return None
    now_ms = worker.clock_ms()
    try:
        check_windows(agreement, now_ms)
    except RowError as exc:  # answered as an error (500), not as "no such agreement"
        QUARANTINE.skip("shard_read", exc, worker.config.shard)
        raise
    wire = agreement.to_wire(now_ms)
    return _read_agreement_async(worker, wire) if args.get("history") else wire


def _read_agreements(worker: WorkerBase, args: dict[str, Any]) -> Any:
    """A partner's (or a debtor account's) agreements, newest first: see ShardState.list_agreements."""
    partner_id, debtor = args.get("partner_id"), args.get("debtor_account")
    if (partner_id is None) == (debtor is None):
        raise ValueError("give exactly one of partner_id and debtor_account")
    status = args.get("status")
    if status is not None and status not in AgreementStatus.ALL:
        raise ValueError("unknown status")
    before = args.get("before")
    key = (int(before[0]), str(before[1])) if before is not None else None
    now_ms = worker.clock_ms()
    found, stopped_at = worker.state.list_agreements(
        partner_id=partner_id,
        debtor_account=debtor,
        status=status,
        before=key,
        limit=max(1, min(int(args.get("limit", 50)), AGREEMENTS_PAGE_MAX)),
        at_ms=now_ms,
    )
    return {
        "agreements": [a.to_wire(now_ms) for a in found if _readable_at(worker, a, now_ms)],
        "stopped_at": list(stopped_at) if stopped_at is not None else None,
    }


def _readable_at(worker: WorkerBase, agreement: Any, at_ms: int) -> bool:
    """Whether the agreement can be shown at at_ms (its limit windows computed); if not, quarantined."""
    try:
        check_windows(agreement, at_ms)
    except RowError as exc:
        QUARANTINE.skip("shard_read", exc, worker.config.shard)
        return False
    return True


async def _read_payment_async(worker: WorkerBase, transfer_id: str) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        transfer = await pg.fetch_transfer(conn, transfer_id)
    return transfer.to_wire() if transfer is not None else None


def _read_payment(worker: WorkerBase, args: dict[str, Any]) -> Any:
    transfer = worker.state.transfers.get(args["id"])
    if transfer is not None:
        return transfer.to_wire() if transfer.committed else None
    return _read_payment_async(worker, args["id"])


async def _read_transactions_async(worker: WorkerBase, args: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    limit = max(1, min(int(args.get("limit", 50)), TRANSACTIONS_PAGE_MAX))
    # No cursor for this shard: from the newest row. 0 is a position (nothing below it),
    # not "no cursor", and the bound keeps any value inside bigint.
    before = args.get("before_seq")
    before_seq = 2**62 if before is None else max(0, min(int(before), 2**62))
    async with worker.read_pool.acquire() as conn:
        rows = await pg.list_account_transfers(conn, args["id"], before_seq, limit)
    return [t.to_wire() for t in rows]


def _read_transactions(worker: WorkerBase, args: dict[str, Any]) -> Any:
    account = worker.state.accounts.get(args["id"])
    partner = args.get("partner_id")
    if account is None or (partner is not None and not worker.state.can_see(partner, account.id, worker.clock_ms())):
        return None
    return _read_transactions_async(worker, args)


async def _read_partner_async(worker: WorkerBase, partner_id: str) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM partners WHERE id = $1", partner_id)
    return dict(row) if row else None


def _read_partner(worker: WorkerBase, args: dict[str, Any]) -> Any:
    cached = worker.state.partners_cache.get(args["id"])
    if cached is not None:
        return cached
    return _read_partner_async(worker, args["id"])


def _read_partner_cutoffs(worker: WorkerBase, args: Any) -> Any:
    """Every partner's cut-off markers (ShardState.partner_cutoffs), or only the version when the
    caller's `since` ([epoch, version] of its last answer) is still current: the gateways poll
    this twice a second, so an unchanged answer costs a comparison."""
    version = [worker.cutoff_epoch, worker.state.cutoff_version]
    since = args.get("since") if isinstance(args, dict) else None
    if since == version:
        return {"version": version}
    return {"version": version, "cutoffs": worker.state.partner_cutoffs()}


PARTNER_AUDIT_MAX = 200


async def _read_partner_audit_async(worker: WorkerBase, partner_id: str, after: int, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        return await pg.partner_audit(conn, partner_id, after, limit)


def _read_partner_audit(worker: WorkerBase, args: dict[str, Any]) -> Any:
    v.ident(args, "id")
    after = v.int64(args, "after", 0)
    limit = v.int64(args, "limit", 1, PARTNER_AUDIT_MAX)
    return _read_partner_audit_async(worker, args["id"], after, limit)


async def _read_alerts_async(worker: WorkerBase, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, rule, account, at_ms, details FROM alerts ORDER BY at_ms DESC LIMIT $1", limit
        )
    return [
        {"alert_id": r["id"], "rule": r["rule"], "account": r["account"], "at_ms": r["at_ms"], "details": r["details"]}
        for r in QUARANTINE.decode_all("shard_read", rows, decode_alert)
    ]


def _read_alerts(worker: WorkerBase, args: dict[str, Any]) -> Any:
    return _read_alerts_async(worker, max(1, min(int(args.get("limit", 100)), 1000)))


# What one decisions call looks at, newest first, so that a filter matching nothing stops
# there instead of reading the whole journal: flagged payments (a rule fired or not allowed:
# the partial index transfers_flagged), or journal rows when every payment may match.
DECISIONS_SCAN_MAX = 10_000
DECISIONS_JOURNAL_SCAN_MAX = 100_000
_DECISION_FILTERS = (
    " ($1::text IS NULL OR coalesce(fraud->>'decision', 'allow') = $1)"
    " AND ($2::text IS NULL OR fraud->'reasons' @> jsonb_build_array(jsonb_build_object('rule_id', $2::text)))"
    " ORDER BY seq DESC LIMIT $3"
)


async def _read_decisions_async(worker: WorkerBase, decision: str | None, rule_id: str | None, limit: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        if rule_id is not None or decision not in (None, "allow"):
            # Only a flagged payment (fraud stored, not NULL) can match.
            rows = await conn.fetch(
                "SELECT * FROM (" + pg.SELECT_TRANSFER + " WHERE fraud IS NOT NULL ORDER BY seq DESC LIMIT $4) f"
                " WHERE kind = 'payment' AND" + _DECISION_FILTERS,
                decision,
                rule_id,
                limit,
                DECISIONS_SCAN_MAX,
            )
        else:
            rows = await conn.fetch(
                pg.SELECT_TRANSFER + " WHERE seq >= $4 AND kind = 'payment' AND" + _DECISION_FILTERS,
                decision,
                rule_id,
                limit,
                worker.state.next_seq - DECISIONS_JOURNAL_SCAN_MAX,
            )
    return [t.to_wire() for t in QUARANTINE.decode_all("shard_read", rows, pg.row_to_transfer)]


def _read_decisions(worker: WorkerBase, args: dict[str, Any]) -> Any:
    limit = max(1, min(int(args.get("limit", 50)), TRANSACTIONS_PAGE_MAX))
    return _read_decisions_async(worker, args.get("decision"), args.get("rule_id"), limit)


RECON_PAGE_MAX = RECON_PAGE_ROWS_MAX


async def _read_recon_async(worker: WorkerBase, args: dict[str, Any]) -> Any:
    assert worker.read_pool is not None
    limit = max(1, min(int(args.get("limit", RECON_PAGE_MAX)), RECON_PAGE_MAX))
    after = args.get("after")  # [created_at_ms, seq] of the previous page's last row
    async with worker.read_pool.acquire() as conn:
        rows = await pg.partner_day_transfers(
            conn,
            args["partner_id"],
            int(args["from_ms"]),
            int(args["to_ms"]),
            (int(after[0]), int(after[1])) if after is not None else None,
            limit,
        )
    return [[key, wire] for key, wire in rows]


def _read_recon(worker: WorkerBase, args: dict[str, Any]) -> Any:
    return _read_recon_async(worker, args)


# The operator's reconciliation status (GET /admin/v1/reconciliation): one day's rows of every
# partner's file, counted and summed in PostgreSQL. O(the day's rows) on this shard, so the
# gateway asks it once per closed day and seldom for the open one (gateway/recon_status.py),
# and PostgreSQL stops it after RECON_SUMMARY_STATEMENT_TIMEOUT_MS.
RECON_SUMMARY_STATEMENT_TIMEOUT_MS = 5_000
# The same rows as pg.partner_day_transfers (any partner) and the same kinds as
# ledger.recon.row_kind: a payment to the partner's own settlement account, a payment to a
# customer, a refund.
_RECON_SUMMARY_SQL = (
    "SELECT CASE WHEN kind = 'refund' THEN 'refund'"
    " WHEN creditor_account = 'set_' || partner_id THEN 'payment' ELSE 'payment_to_customer' END AS file_kind,"
    " currency, count(*) AS rows, sum(amount_minor) AS total_minor"
    " FROM transfers WHERE partner_id IS NOT NULL AND kind IN ('payment', 'refund') AND status <> 'Rejected'"
    " AND created_at_ms >= $1 AND created_at_ms < $2 GROUP BY 1, 2 ORDER BY 1, 2"
)


async def _read_recon_summary_async(worker: WorkerBase, from_ms: int, to_ms: int) -> Any:
    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {RECON_SUMMARY_STATEMENT_TIMEOUT_MS}")
        rows = await conn.fetch(_RECON_SUMMARY_SQL, from_ms, to_ms)
    # sum() of bigint is numeric in PostgreSQL: a Python int here, whatever its size.
    return [
        {"kind": r["file_kind"], "currency": r["currency"], "rows": r["rows"], "total_minor": int(r["total_minor"])}
        for r in rows
    ]


def _read_recon_summary(worker: WorkerBase, args: dict[str, Any]) -> Any:
    from .recon import DAY_MS

    from_ms = v.int64(args, "from_ms", 0, 2**62)
    to_ms = v.int64(args, "to_ms", from_ms, from_ms + DAY_MS)  # one day at most
    return _read_recon_summary_async(worker, from_ms, to_ms)


async def _read_notify_async(worker: WorkerBase, args: dict[str, Any]) -> Any:
    """Webhook endpoints and the event feed (ledger/notify_store.py), in this shard's database:
    the gateway asks shard 0, the control database the notifier writes."""
    from . import notify_store as store

    assert worker.read_pool is not None
    action, partner_id, now_ms = args["action"], args["partner_id"], worker.clock_ms()
    async with worker.read_pool.acquire() as conn:
        if action == "create":
            return await store.create_endpoint(
                conn, args["id"], partner_id, args["url"], args["events"], args["secret"], now_ms
            )
        if action == "list":
            return await store.list_endpoints(conn, partner_id)
        if action == "get":
            return await store.get_endpoint(conn, partner_id, args["id"])
        if action == "delete":
            return await store.delete_endpoint(conn, partner_id, args["id"], now_ms)
        if action == "rotate":
            return await store.rotate_secret(conn, partner_id, args["id"], args["secret"], args["overlap_ms"], now_ms)
        if action == "stats":
            return await store.delivery_stats(conn)
        if action == "events":
            return await store.list_events(
                conn, partner_id, args["after"], args.get("type"), args["limit"], now_ms - FEED_RETENTION_MS
            )
    raise ValueError(f"unknown notify action {action!r}")


def _read_notify(worker: WorkerBase, args: dict[str, Any]) -> Any:
    return _read_notify_async(worker, args)


async def _read_consent_async(worker: WorkerBase, args: dict[str, Any]) -> Any:
    """Customer consent and portal state (ledger/consent_store.py) in this shard's database:
    the gateway's web pages ask shard 0, the control database."""
    from .consent_store import consent_op

    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        return await consent_op(conn, args, worker.clock_ms())


def _read_consent(worker: WorkerBase, args: dict[str, Any]) -> Any:
    return _read_consent_async(worker, args)


def _read_slot_map(worker: WorkerBase, args: Any) -> Any:
    """The slot map this shard acts on (its version and how many slots it owns), from memory;
    with {"control": true}, on shard 0 only, the authoritative map and the moves in progress
    from the control database (ledger/slot_map_store.py) as well."""
    held = worker.held_slot_map
    control = type(args) is dict and args.get("control") is True
    if control and worker.config.shard != 0:
        raise ValueError("the control slot map is on shard 0")
    if held is None:
        # A ledger without a slot map (its shard count does not divide SLOT_COUNT): it routes
        # by hash, so there is no version, no slot and no move to show.
        answer: dict[str, Any] = {"shard": worker.config.shard, "version": None, "slots": None}
        return {**answer, "control": None} if control else answer
    answer = {
        "shard": worker.config.shard,
        "version": held.version,
        "slots": held.assignment.count(worker.config.shard),
    }
    if control:
        return _read_control_slot_map(worker, answer)
    return answer


async def _read_control_slot_map(worker: WorkerBase, answer: dict[str, Any]) -> Any:
    from .slot_map_store import moves_in_progress, read_control_map

    assert worker.read_pool is not None
    async with worker.read_pool.acquire() as conn:
        control, written_at_ms = await read_control_map(conn)
        moves = await moves_in_progress(conn)
    return {**answer, "control": {"map": control.to_wire(), "written_at_ms": written_at_ms, "moves": moves}}


PARTNERS_PAGE_MAX = 200  # partners per partners_page answer (the admin list's PAGE_LIMIT_MAX)


def _read_partners_page(worker: WorkerBase, args: dict[str, Any]) -> Any:
    """One page of the admin partner list, this shard's part, from memory: the partners it holds
    (partners_cache, by id after `after`) and, for the partners with agreements pending here (the
    pending index, AgreementState.pending_ends_by_partner), how many are AwaitingAuthorisation and
    unexpired now. Both are the `limit` smallest ids after `after` (heapq: O(n log limit) over
    this shard's partners, no scan of agreements), so every partner on the merged page has its
    count from every shard: a smaller pending id than it is on the page too."""
    after = v.text(args, "after", ID_MAX, optional=True) or ""
    limit = v.int64(args, "limit", 1, PARTNERS_PAGE_MAX)
    state = worker.state
    owned = heapq.nsmallest(limit, (p for p in state.partners_cache if p > after))
    pending_ids = heapq.nsmallest(limit, (p for p in state.pending_ends_by_partner if p > after))
    now_ms = worker.clock_ms()
    return {
        "partners": [_partner_row(state.partners_cache[p]) for p in owned],
        "pending": {p: n for p in pending_ids if (n := state.pending_count(p, None, now_ms))},
    }


def _partner_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "created_at_ms", "disabled_at_ms", "rate_limit_rps", "rate_limit_burst")
    return {key: row.get(key) for key in keys}


def _read_fraud(worker: WorkerBase, args: dict[str, Any]) -> Any:
    return worker.fraud_admin.read(args)


_READ_OPS: dict[str, Callable[[WorkerBase, Any], Any]] = {
    "ping": _read_ping,
    "lookup_account": _read_lookup_account,
    "balance": _read_balance,
    "agreement": _read_agreement,
    "agreements": _read_agreements,
    "payment": _read_payment,
    "transactions": _read_transactions,
    "partner": _read_partner,
    "partner_cutoffs": _read_partner_cutoffs,
    "partner_audit": _read_partner_audit,
    "partners_page": _read_partners_page,
    "fraud_read": _read_fraud,
    "alerts": _read_alerts,
    "decisions": _read_decisions,
    "notify": _read_notify,
    "consent": _read_consent,
    "slot_map": _read_slot_map,
    "recon": _read_recon,
    "recon_summary": _read_recon_summary,
}
