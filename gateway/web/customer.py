"""The customer's identification, shared by the consent page and the portal: one-time codes
sent to the phone the bank holds for the account, and the signed-in session a correct code
opens. All of it is state in the control database (ledger/consent_store.py through shard 0's
`consent` op), never in a gateway process: there are several.

Codes: 6 digits, CODE_TTL_S (5 minutes), CODE_TRIES (3) tries, then locked; stored as an
HMAC-SHA256 keyed by the gateways' token key (a bare hash of 10^6 possible codes is reversed
in a moment); at most CODES_PER_ACCOUNT_MAX codes per account per CODES_WINDOW_S.

SMS providers plug in behind `SmsProvider`; the one shipped is `OutboxSms`, a simulated
provider that stores each message in the `sms_outbox` table (read it with
`GET /admin/v1/sms` or `quickpay sms tail`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Protocol

from ledger.client import ShardError

from ..shards import ShardRouter

__all__ = [
    "CODES_PER_ACCOUNT_MAX",
    "CODES_WINDOW_S",
    "CODE_TRIES",
    "CODE_TTL_S",
    "Customers",
    "OutboxSms",
    "SmsProvider",
    "mask_account",
    "mask_phone",
]

CODE_DIGITS = 6
CODE_TTL_S = 5 * 60
CODE_TRIES = 3
CODES_PER_ACCOUNT_MAX = 5
CODES_WINDOW_S = 15 * 60
SESSION_COOKIE_BYTES = 32


def mask_account(account_id: str) -> str:
    """Enough for the customer to recognise the account, not enough to name it to anyone."""
    return "•" * 4 + account_id[-4:]


def mask_phone(phone: str) -> str:
    return phone[:3] + "•" * max(0, len(phone) - 7) + phone[-4:]


class SmsProvider(Protocol):
    """Something that sends a text message to a phone (a real provider's API client, or the outbox)."""

    async def send(self, phone: str, account_id: str, text: str) -> None: ...


class Control:
    """The `consent` op of the control database (shard 0)."""

    def __init__(self, router: ShardRouter) -> None:
        self.router = router

    async def __call__(self, action: str, **args: Any) -> Any:
        return await self.router.clients[0].call("consent", {"action": action, **args})


class OutboxSms:
    """The simulated provider: each message is a row of `sms_outbox` in the control database."""

    def __init__(self, control: Control) -> None:
        self.control = control

    async def send(self, phone: str, account_id: str, text: str) -> None:
        await self.control("sms_send", phone=phone, account_id=account_id, body=text)


class Customers:
    """Codes and sessions for customer accounts."""

    def __init__(self, router: ShardRouter, token_key: bytes, sms: SmsProvider | None = None) -> None:
        self.control = Control(router)
        self.sms: SmsProvider = sms if sms is not None else OutboxSms(self.control)
        self._key = hashlib.sha256(b"quickpay customer codes\0" + token_key).digest()

    def _code_hmac(self, scope: str, code: str) -> str:
        return hmac.new(self._key, f"{scope}\0{code}".encode(), hashlib.sha256).hexdigest()

    async def phone_of(self, account_id: str) -> str | None:
        phone = await self.control("phone", account_id=account_id)
        return str(phone) if phone is not None else None

    async def send_code(self, account_id: str, phone: str, scope: str, purpose_en: str, purpose_zh: str) -> bool:
        """A new code for the account, sent to its phone; False when the account's rate limit is spent."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        answer = await self.control(
            "otp_issue",
            account_id=account_id,
            scope=scope,
            code_hmac=self._code_hmac(scope, code),
            ttl_ms=CODE_TTL_S * 1000,
            tries=CODE_TRIES,
            sends_max=CODES_PER_ACCOUNT_MAX,
            window_ms=CODES_WINDOW_S * 1000,
        )
        if answer["code"] != "OK":
            return False
        minutes = CODE_TTL_S // 60
        await self.sms.send(
            phone,
            account_id,
            f"quickpay: {code} is your code to {purpose_en}. It expires in {minutes} minutes. Never share it. "
            f"验证码 {code}，用于{purpose_zh}，{minutes}分钟内有效，请勿告诉他人。",
        )
        return True

    async def check_code(self, account_id: str, scope: str, code: str) -> dict[str, Any]:
        """{"code": OK | WRONG | LOCKED | EXPIRED | NO_CODE, "tries_left"?}."""
        answer: dict[str, Any] = await self.control(
            "otp_verify", account_id=account_id, scope=scope, code_hmac=self._code_hmac(scope, code)
        )
        return answer

    async def open_session(self, account_id: str, scope: str, ttl_s: int) -> str:
        """A new session's cookie value (only its SHA-256 is stored)."""
        value = secrets.token_urlsafe(SESSION_COOKIE_BYTES)
        await self.control(
            "session_create",
            session_sha256=hashlib.sha256(value.encode()).hexdigest(),
            account_id=account_id,
            scope=scope,
            ttl_ms=ttl_s * 1000,
        )
        return value

    async def session_account(self, cookie: str | None, scope: str) -> str | None:
        if not cookie or len(cookie) > 64:
            return None
        try:
            found = await self.control(
                "session", session_sha256=hashlib.sha256(cookie.encode()).hexdigest(), scope=scope
            )
        except ShardError:
            return None
        return str(found) if found is not None else None

    async def end_session(self, cookie: str | None) -> None:
        if cookie and len(cookie) <= 64:
            await self.control("session_end", session_sha256=hashlib.sha256(cookie.encode()).hexdigest())
