"""ledger/consent_store.py against the real PostgreSQL of the shared stack, with the time
injected (`consent_op` takes `now_ms`): codes expire after their TTL and lock after their
tries, the per-account rate limit is a sliding window, links expire and are consumed once,
sessions end, and old rows are pruned. Rows use fresh account ids, so tests never meet."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from conftest import Stack

from ledger.consent_store import RETENTION_MS, consent_op

NOW = 1_900_000_000_000  # far ahead of the wall clock, so the stack's own rows never interfere
MINUTE_MS = 60_000


@pytest.fixture
def dsn(stack: Stack) -> str:
    return stack.dsn(0)


@contextlib.asynccontextmanager
async def control(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the control database (shard 0's), opened in the test's own event loop."""
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


def account() -> str:
    return "acc_test_" + uuid.uuid4().hex[:16]


async def issue(conn: asyncpg.Connection, acc: str, now_ms: int, code_hmac: str = "h1", **extra: Any) -> Any:
    args = {"scope": "s", "ttl_ms": 5 * MINUTE_MS, "tries": 3, "sends_max": 5, "window_ms": 15 * MINUTE_MS, **extra}
    return await consent_op(conn, {"action": "otp_issue", "account_id": acc, "code_hmac": code_hmac, **args}, now_ms)


async def verify(conn: asyncpg.Connection, acc: str, code_hmac: str, now_ms: int) -> Any:
    return await consent_op(
        conn, {"action": "otp_verify", "account_id": acc, "scope": "s", "code_hmac": code_hmac}, now_ms
    )


async def test_a_code_works_once_until_it_expires(dsn: str) -> None:
    async with control(dsn) as conn:
        acc = account()
        assert (await issue(conn, acc, NOW))["code"] == "OK"
        assert (await verify(conn, acc, "h1", NOW + 5 * MINUTE_MS + 1))["code"] == "EXPIRED"
        assert (await issue(conn, acc, NOW + 6 * MINUTE_MS, "h2"))["code"] == "OK"
        assert (await verify(conn, acc, "h1", NOW + 6 * MINUTE_MS))["code"] == "WRONG"  # the old code is gone
        assert (await verify(conn, acc, "h2", NOW + 11 * MINUTE_MS))["code"] == "OK"  # exactly at its TTL
        assert (await verify(conn, acc, "h2", NOW + 11 * MINUTE_MS))["code"] == "NO_CODE"  # used up


async def test_three_wrong_tries_lock_the_code(dsn: str) -> None:
    async with control(dsn) as conn:
        acc = account()
        await issue(conn, acc, NOW)
        answers = [await verify(conn, acc, "nope", NOW + i) for i in range(3)]
        assert answers == [
            {"code": "WRONG", "tries_left": 2},
            {"code": "WRONG", "tries_left": 1},
            {"code": "LOCKED", "tries_left": 0},
        ]
        assert (await verify(conn, acc, "h1", NOW + 10))["code"] == "LOCKED"


async def test_codes_per_account_are_a_sliding_window(dsn: str) -> None:
    async with control(dsn) as conn:
        acc = account()
        for i in range(5):
            assert (await issue(conn, acc, NOW + i * MINUTE_MS))["code"] == "OK"
        assert (await issue(conn, acc, NOW + 5 * MINUTE_MS))["code"] == "RATE_LIMITED"
        assert (await issue(conn, account(), NOW + 5 * MINUTE_MS))["code"] == "OK"  # another account is not limited
        # 15 minutes after the first code, one slot is free again.
        assert (await issue(conn, acc, NOW + 15 * MINUTE_MS + 1))["code"] == "OK"
        assert (await issue(conn, acc, NOW + 15 * MINUTE_MS + 2))["code"] == "RATE_LIMITED"


async def test_links_expire_and_are_consumed_once(dsn: str) -> None:
    async with control(dsn) as conn:
        token = "t" + uuid.uuid4().hex
        await consent_op(
            conn,
            {
                "action": "link_create",
                "token_sha256": token,
                "agreement_id": "agr_x",
                "partner_id": "ptn_x",
                "account_id": account(),
                "redirect_uri": "https://p.example/cb",
                "state": "s",
                "ttl_ms": 15 * MINUTE_MS,
            },
            NOW,
        )
        assert (await consent_op(conn, {"action": "link", "token_sha256": token}, NOW + 15 * MINUTE_MS))[
            "expired"
        ] is False
        assert (await consent_op(conn, {"action": "link", "token_sha256": token}, NOW + 15 * MINUTE_MS + 1))["expired"]
        late = {"action": "link_consume", "token_sha256": token, "outcome": "authorised"}
        assert await consent_op(conn, late, NOW + 15 * MINUTE_MS + 1) is None
        first = await consent_op(conn, late, NOW + MINUTE_MS)
        assert first is not None and first["state"] == "s" and first["redirect_uri"] == "https://p.example/cb"
        assert await consent_op(conn, {**late, "outcome": "declined"}, NOW + MINUTE_MS) is None
        link = await consent_op(conn, {"action": "link", "token_sha256": token}, NOW + MINUTE_MS)
        assert link["outcome"] == "authorised" and link["used_at_ms"] == NOW + MINUTE_MS


async def test_sessions_end_with_their_ttl_and_scope(dsn: str) -> None:
    async with control(dsn) as conn:
        acc, session = account(), "s" + uuid.uuid4().hex
        await consent_op(
            conn,
            {
                "action": "session_create",
                "session_sha256": session,
                "account_id": acc,
                "scope": "portal",
                "ttl_ms": MINUTE_MS,
            },
            NOW,
        )
        ask = {"action": "session", "session_sha256": session, "scope": "portal"}
        assert await consent_op(conn, ask, NOW + MINUTE_MS) == acc
        assert await consent_op(conn, {**ask, "scope": "consent:x"}, NOW) is None
        assert await consent_op(conn, ask, NOW + MINUTE_MS + 1) is None


async def test_old_rows_are_pruned_when_new_ones_come(dsn: str) -> None:
    async with control(dsn) as conn:
        acc = account()
        await issue(conn, acc, NOW)
        await consent_op(conn, {"action": "sms_send", "phone": "+8613800000000", "account_id": acc, "body": "x"}, NOW)
        later = NOW + RETENTION_MS + 1
        await issue(conn, account(), later)
        await consent_op(
            conn, {"action": "sms_send", "phone": "+8613800000000", "account_id": "other", "body": "y"}, later
        )
        assert await conn.fetchval("SELECT count(*) FROM otp_codes WHERE account_id = $1", acc) == 0
        assert await conn.fetchval("SELECT count(*) FROM sms_outbox WHERE account_id = $1", acc) == 0
