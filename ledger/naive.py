"""The naive ledger: the baseline the benchmark compares against.

What a conventional service does: each payment is its own PostgreSQL
transaction that locks the debtor and creditor rows (SELECT ... FOR UPDATE, in
id order to avoid deadlocks), checks and updates balances, inserts the journal
row and commits — one fsync per payment, and every payment to a partner
serialises on its settlement row. Same API and same shard worker; only the
`pay` op changes. It exists to be measured, not served: no fraud filter, no
daily limit, no cross-shard payments, and balance reads from memory are stale.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from .model import Code, Status

__all__ = ["NAIVE_POOL_SIZE", "naive_pay"]

NAIVE_POOL_SIZE = 16


async def naive_pay(pool: asyncpg.Pool, shard: int, args: dict[str, Any], now_ms: int) -> dict[str, Any]:
    if args["creditor_shard"] != shard:
        return {"code": "BAD_REQUEST", "transfer": None}
    async with pool.acquire() as conn:
        async with conn.transaction():
            existing = await conn.fetchrow("SELECT * FROM transfers WHERE id = $1", args["payment_id"])
            if existing is not None:
                from .pg import row_to_transfer

                code = Code.REPLAY if existing["body_hash"] == args["body_hash"] else Code.EXISTS_WITH_DIFFERENT_BODY
                return {"code": code, "transfer": row_to_transfer(existing).to_wire()}
            agreement = await conn.fetchrow(
                "SELECT partner_id, debtor_account, currency, per_payment_limit_minor, status"
                " FROM agreements WHERE id = $1",
                args["agreement_id"],
            )
            if agreement is None or agreement["partner_id"] != args["partner_id"]:
                return {"code": Code.AGREEMENT_NOT_FOUND, "transfer": None}
            debtor, creditor = agreement["debtor_account"], args["creditor_account"]
            rows = await conn.fetch(
                "SELECT id, balance_minor, allow_negative, currency FROM accounts WHERE id = ANY($1::text[])"
                " ORDER BY id FOR UPDATE",
                [debtor, creditor],
            )
            accounts = {r["id"]: r for r in rows}
            if creditor not in accounts:
                return {"code": Code.CREDITOR_NOT_FOUND, "transfer": None}
            amount = args["amount_minor"]
            reasons = []
            if amount > agreement["per_payment_limit_minor"]:
                reasons.append(Code.AGREEMENT_PER_PAYMENT_LIMIT)
            elif accounts[debtor]["balance_minor"] < amount and not accounts[debtor]["allow_negative"]:
                reasons.append(Code.INSUFFICIENT_FUNDS)
            status = Status.REJECTED if reasons else Status.COMPLETED
            if not reasons:
                await conn.execute(
                    "UPDATE accounts SET balance_minor = balance_minor + CASE id WHEN $1 THEN -$3::bigint"
                    " ELSE $3::bigint END WHERE id = ANY($2::text[])",
                    debtor,
                    [debtor, creditor],
                    amount,
                )
            seq = await conn.fetchval("SELECT nextval('naive_seq')")
            transfer = {
                "id": args["payment_id"],
                "seq": seq,
                "kind": "payment",
                "debit_account": debtor,
                "credit_account": creditor,
                "amount_minor": amount,
                "currency": args["currency"],
                "status": status,
                "created_at_ms": now_ms,
                "partner_id": args["partner_id"],
                "agreement_id": args["agreement_id"],
                "reference": args["reference"],
                "creditor_account": creditor,
                "reasons": reasons,
                "fraud": None,
                "device_id": args.get("device_id"),
                "ip": args.get("ip"),
            }
            await conn.execute(
                "INSERT INTO transfers (id, seq, kind, debit_account, credit_account, amount_minor, currency,"
                " status, created_at_ms, partner_id, agreement_id, reference, creditor_account, reasons, fraud,"
                " body_hash, device_id, ip) VALUES ($1,$2,'payment',$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,NULL,$14,$15,$16)",
                transfer["id"],
                seq,
                debtor,
                creditor,
                amount,
                args["currency"],
                status,
                now_ms,
                args["partner_id"],
                args["agreement_id"],
                args["reference"],
                creditor,
                reasons,
                args["body_hash"],
                transfer["device_id"],
                transfer["ip"],
            )
    return {"code": Code.OK, "transfer": transfer}
