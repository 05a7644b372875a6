"""The SQL of customer consent and the portal, in shard 0's database (the control database):
partners' redirect URIs, customers' phones, authorisation links, one-time codes, customer
sessions and the simulated SMS outbox. Used by the shard-0 worker's `consent` read op
(`consent_op`), which the gateway's web pages (gateway/web/) call; like the webhook
endpoints (ledger/notify_store.py) it is written outside the batcher: none of it is on the
payment path, and the agreement's status itself still changes only through the
`agreement_action` command on the agreement's shard.

Secrets are stored hashed: links and sessions by SHA-256 (the gateway sends the hash, the
token is 256 random bits), codes by an HMAC the gateway keys with its token key. Every
table is bounded: rows older than RETENTION_MS are deleted when a new one is written, and
codes per account are rate-limited (`otp_issue`).
"""

from __future__ import annotations

import hmac
from typing import Any

import asyncpg

__all__ = [
    "LINKS_PER_AGREEMENT_MAX",
    "REDIRECT_URIS_PER_PARTNER_MAX",
    "RETENTION_MS",
    "SMS_PAGE_MAX",
    "consent_op",
]

# Rows (links, codes, sessions, SMS) are kept a day: longer than any link, code or session lives.
RETENTION_MS = 24 * 3600 * 1000
REDIRECT_URIS_PER_PARTNER_MAX = 10
# Links one agreement may have (a partner asks again when the customer let one expire).
LINKS_PER_AGREEMENT_MAX = 5
SMS_PAGE_MAX = 200


async def _redirect_uris_set(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> list[str]:
    uris = [str(u) for u in args["uris"]][:REDIRECT_URIS_PER_PARTNER_MAX]
    async with conn.transaction():
        await conn.execute("DELETE FROM partner_redirect_uris WHERE partner_id = $1", args["partner_id"])
        await conn.executemany(
            "INSERT INTO partner_redirect_uris (partner_id, uri, created_at_ms) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(args["partner_id"], uri, now_ms) for uri in uris],
        )
    return await _redirect_uris(conn, args["partner_id"])


async def _redirect_uris(conn: asyncpg.Connection, partner_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT uri FROM partner_redirect_uris WHERE partner_id = $1 ORDER BY uri LIMIT $2",
        partner_id,
        REDIRECT_URIS_PER_PARTNER_MAX,
    )
    return [r["uri"] for r in rows]


async def _phone_set(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> None:
    if args.get("phone") is None:
        await conn.execute("DELETE FROM account_phones WHERE account_id = $1", args["account_id"])
        return
    await conn.execute(
        "INSERT INTO account_phones (account_id, phone, updated_at_ms) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id) DO UPDATE SET phone = excluded.phone, updated_at_ms = excluded.updated_at_ms",
        args["account_id"],
        args["phone"],
        now_ms,
    )


async def _link_create(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """OK, or TOO_MANY when the agreement has LINKS_PER_AGREEMENT_MAX links already."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "links:" + args["agreement_id"])
        await conn.execute("DELETE FROM consent_links WHERE created_at_ms < $1", now_ms - RETENTION_MS)
        links = await conn.fetchval("SELECT count(*) FROM consent_links WHERE agreement_id = $1", args["agreement_id"])
        if links >= LINKS_PER_AGREEMENT_MAX:
            return {"code": "TOO_MANY"}
        await conn.execute(
            "INSERT INTO consent_links (token_sha256, agreement_id, partner_id, account_id, redirect_uri, state,"
            " created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            args["token_sha256"],
            args["agreement_id"],
            args["partner_id"],
            args["account_id"],
            args["redirect_uri"],
            args.get("state"),
            now_ms,
            now_ms + int(args["ttl_ms"]),
        )
    return {"code": "OK", "expires_at_ms": now_ms + int(args["ttl_ms"])}


_LINK_COLUMNS = "agreement_id, partner_id, account_id, redirect_uri, state, expires_at_ms, used_at_ms, outcome"


async def _link(conn: asyncpg.Connection, token_sha256: str, now_ms: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_LINK_COLUMNS} FROM consent_links WHERE token_sha256 = $1", token_sha256)
    if row is None:
        return None
    link = dict(row)
    link["expired"] = now_ms > link["expires_at_ms"]
    return link


async def _link_consume(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
    """The link, marked used with its outcome; None if it was used already or has expired (atomic:
    two concurrent decisions on one link get one link between them)."""
    row = await conn.fetchrow(
        "UPDATE consent_links SET used_at_ms = $2, outcome = $3"
        " WHERE token_sha256 = $1 AND used_at_ms IS NULL AND expires_at_ms >= $2"
        f" RETURNING {_LINK_COLUMNS}",
        args["token_sha256"],
        now_ms,
        args["outcome"],
    )
    return dict(row) if row is not None else None


async def _otp_issue(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A new code for (account, scope), unless the account had `sends_max` codes within
    `window_ms` (RATE_LIMITED). Earlier open codes of the same scope stop working (a new code
    also starts a new count of tries: that is what the rate limit bounds)."""
    account_id, scope = args["account_id"], args["scope"]
    async with conn.transaction():
        # One account's codes are issued one at a time, so the rate limit holds under concurrency.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "otp:" + account_id)
        await conn.execute("DELETE FROM otp_codes WHERE created_at_ms < $1", now_ms - RETENTION_MS)
        sent = await conn.fetchval(
            "SELECT count(*) FROM otp_codes WHERE account_id = $1 AND created_at_ms > $2",
            account_id,
            now_ms - int(args["window_ms"]),
        )
        if sent >= int(args["sends_max"]):
            return {"code": "RATE_LIMITED"}
        # Superseded codes are closed as if used: only the newest code of a scope works.
        await conn.execute(
            "UPDATE otp_codes SET used_at_ms = $3 WHERE account_id = $1 AND scope = $2 AND used_at_ms IS NULL",
            account_id,
            scope,
            now_ms,
        )
        await conn.execute(
            "INSERT INTO otp_codes (account_id, scope, code_hmac, created_at_ms, expires_at_ms, tries_left)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            account_id,
            scope,
            args["code_hmac"],
            now_ms,
            now_ms + int(args["ttl_ms"]),
            int(args["tries"]),
        )
    return {"code": "OK"}


async def _otp_verify(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """OK (the code is used up), WRONG (with tries_left), LOCKED (no tries left), EXPIRED or NO_CODE."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, code_hmac, expires_at_ms, tries_left FROM otp_codes"
            " WHERE account_id = $1 AND scope = $2 AND used_at_ms IS NULL ORDER BY id DESC LIMIT 1 FOR UPDATE",
            args["account_id"],
            args["scope"],
        )
        if row is None:
            return {"code": "NO_CODE"}
        if row["tries_left"] <= 0:
            return {"code": "LOCKED"}
        if now_ms > row["expires_at_ms"]:
            return {"code": "EXPIRED"}
        if hmac.compare_digest(str(row["code_hmac"]), str(args["code_hmac"])):
            await conn.execute("UPDATE otp_codes SET used_at_ms = $2 WHERE id = $1", row["id"], now_ms)
            return {"code": "OK"}
        left = row["tries_left"] - 1
        await conn.execute("UPDATE otp_codes SET tries_left = $2 WHERE id = $1", row["id"], left)
        return {"code": "WRONG" if left > 0 else "LOCKED", "tries_left": left}


async def _session_create(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM customer_sessions WHERE created_at_ms < $1", now_ms - RETENTION_MS)
        await conn.execute(
            "INSERT INTO customer_sessions (session_sha256, account_id, scope, created_at_ms, expires_at_ms)"
            " VALUES ($1, $2, $3, $4, $5)",
            args["session_sha256"],
            args["account_id"],
            args["scope"],
            now_ms,
            now_ms + int(args["ttl_ms"]),
        )


async def _session(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> str | None:
    """The session's account, while it lives and for its scope only."""
    value = await conn.fetchval(
        "SELECT account_id FROM customer_sessions WHERE session_sha256 = $1 AND scope = $2 AND expires_at_ms >= $3",
        args["session_sha256"],
        args["scope"],
        now_ms,
    )
    return str(value) if value is not None else None


async def _sms_send(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> int:
    async with conn.transaction():
        await conn.execute("DELETE FROM sms_outbox WHERE created_at_ms < $1", now_ms - RETENTION_MS)
        seq = await conn.fetchval(
            "INSERT INTO sms_outbox (phone, account_id, body, created_at_ms) VALUES ($1, $2, $3, $4) RETURNING seq",
            args["phone"],
            args["account_id"],
            args["body"],
            now_ms,
        )
    return int(seq)


async def _sms_list(conn: asyncpg.Connection, args: dict[str, Any]) -> list[dict[str, Any]]:
    limit = max(1, min(int(args.get("limit", 50)), SMS_PAGE_MAX))
    rows = await conn.fetch(
        "SELECT seq, phone, account_id, body, created_at_ms FROM sms_outbox"
        " WHERE seq > $1 AND ($2::text IS NULL OR phone = $2) AND ($3::text IS NULL OR account_id = $3)"
        " ORDER BY seq LIMIT $4",
        int(args.get("after", 0)),
        args.get("phone"),
        args.get("account_id"),
        limit,
    )
    return [dict(r) for r in rows]


async def consent_op(conn: asyncpg.Connection, args: dict[str, Any], now_ms: int) -> Any:
    """One consent action (`args["action"]`) on a connection of the control database."""
    action = args["action"]
    if action == "redirect_uris_set":
        return await _redirect_uris_set(conn, args, now_ms)
    if action == "redirect_uris":
        return await _redirect_uris(conn, args["partner_id"])
    if action == "phone_set":
        return await _phone_set(conn, args, now_ms)
    if action == "phone":
        return await conn.fetchval("SELECT phone FROM account_phones WHERE account_id = $1", args["account_id"])
    if action == "link_create":
        return await _link_create(conn, args, now_ms)
    if action == "link":
        return await _link(conn, args["token_sha256"], now_ms)
    if action == "link_consume":
        return await _link_consume(conn, args, now_ms)
    if action == "otp_issue":
        return await _otp_issue(conn, args, now_ms)
    if action == "otp_verify":
        return await _otp_verify(conn, args, now_ms)
    if action == "session_create":
        return await _session_create(conn, args, now_ms)
    if action == "session":
        return await _session(conn, args, now_ms)
    if action == "session_end":
        return await conn.execute("DELETE FROM customer_sessions WHERE session_sha256 = $1", args["session_sha256"])
    if action == "sms_send":
        return await _sms_send(conn, args, now_ms)
    if action == "sms_list":
        return await _sms_list(conn, args)
    raise ValueError(f"unknown consent action {action!r}")
