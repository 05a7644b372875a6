"""The soak's partners, replies and requests: each request timed from its scheduled time and
recorded by partner, operation and answer (the one error shape checked)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from loadtest.soak.options import EXAMPLES_MAX, GOOD_MIX, PAYMENTS_KEPT, TOKEN_REFRESH_S


# ---- per-partner bookkeeping ----------------------------------------------------------------
@dataclass
class Partner:
    index: int
    partner_id: str
    settlement_account: str
    client_id: str
    client_secret: str
    token: str
    token_at: float
    hostile: bool
    agreements: list[tuple[str, str]]  # (agreement_id, debtor_account)
    rate: float = 1.0
    payments: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=PAYMENTS_KEPT))
    events_cursor: str | None = None
    webhook: str | None = None
    histogram: Any = None
    sent: int = 0
    answered: int = 0
    skipped: int = 0
    unexpected: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    pending_account: str | None = None
    hostile_turn: int = 0
    rate_limited: bool = False

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", **(extra or {})}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    error: str | None = None  # a transport error or a timeout instead of an answer


def error_shape_ok(reply: Reply) -> bool:
    """The one error shape (gateway/errors.py) with an interaction id, as tests/test_hostile_input.py
    asserts it."""
    body = reply.body
    if not (isinstance(body, dict) and set(body) == {"code", "message", "errors"}):
        return False
    if not (isinstance(body["code"], str) and body["code"] and isinstance(body["message"], str)):
        return False
    if not isinstance(body["errors"], list) or any(
        not isinstance(e, dict) or set(e) != {"code", "message", "path"} for e in body["errors"]
    ):
        return False
    return bool(reply.headers.get("x-fapi-interaction-id"))


def code_of(reply: Reply) -> str:
    if reply.error is not None:
        return reply.error
    code = reply.body.get("code") if isinstance(reply.body, dict) else None
    return f"{reply.status} {code if isinstance(code, str) else '-'}"


# ---- the soak ------------------------------------------------------------------------------
class Client:
    """The soak's HTTP side: one request with its bookkeeping, by partner and by operation."""

    def __init__(
        self,
        args: argparse.Namespace,
        base_url: str,
        admin_token: str,
        partners: list[Partner],
        receiver_url: str | None,
    ) -> None:
        self.args = args
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self.partners = partners
        self.receiver_url = receiver_url
        self.rng = random.Random(args.seed)
        self.session: Any = None
        self.inflight: set[asyncio.Task[None]] = set()
        self.status_5xx: collections.Counter[str] = collections.Counter()
        self.errors_good: collections.Counter[str] = collections.Counter()
        self.errors_hostile: collections.Counter[str] = collections.Counter()
        self.hostile_violations: collections.Counter[str] = collections.Counter()
        self.hostile_by_class: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.violation_examples: list[str] = []
        self.hostile_inputs: collections.Counter[str] = collections.Counter()
        self.op_histograms: dict[str, Any] = {}
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.payments_ok = 0
        self.refunds_ok = 0
        self.batch_items_ok = 0
        ops, weights = zip(*GOOD_MIX.items())
        self._ops: list[str] = list(ops)
        self._weights: list[int] = list(weights)

    # -- HTTP
    async def request(
        self,
        method: str,
        path: str,
        partner: Partner | None,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        admin: bool = False,
        read_text: bool = False,
    ) -> Reply:
        import aiohttp

        all_headers = dict(headers or {})
        if admin:
            all_headers["authorization"] = f"Bearer {self.admin_token}"
        elif partner is not None:
            all_headers = partner.headers(all_headers)
        data: bytes | None = raw
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        if data is not None:
            all_headers.setdefault("content-type", "application/json")
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                data=data,
                headers=all_headers,
                timeout=aiohttp.ClientTimeout(total=self.args.timeout_s),
            ) as response:
                payload = await response.read()
                text_type = response.headers.get("content-type", "").startswith("text/")
                body: Any
                if read_text and text_type and response.status < 300:
                    body = payload.decode("utf-8", errors="replace")
                else:
                    try:
                        body = json.loads(payload) if payload else None
                    except ValueError:
                        body = payload[:200].decode("utf-8", errors="replace")
                return Reply(response.status, body, {k.lower(): v for k, v in response.headers.items()})
        except TimeoutError:
            return Reply(0, None, {}, error="timeout")
        except aiohttp.ClientError as exc:
            return Reply(0, None, {}, error=f"connection {type(exc).__name__}")

    async def refresh_token(self, partner: Partner) -> None:
        if time.monotonic() - partner.token_at < TOKEN_REFRESH_S:
            return
        import base64

        basic = base64.b64encode(f"{partner.client_id}:{partner.client_secret}".encode()).decode()
        reply = await self.request(
            "POST",
            "/oauth2/token",
            None,
            raw=b"grant_type=client_credentials",
            headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
        )
        if reply.status == 200 and isinstance(reply.body, dict):
            partner.token, partner.token_at = str(reply.body["access_token"]), time.monotonic()

    # -- recording
    def record(
        self,
        partner: Partner,
        op: str,
        reply: Reply,
        started: float,
        expected: tuple[int, ...] | None,
        *,
        hostile_class: str | None = None,
        acceptable: bool | None = None,
        sent: str = "",
    ) -> bool:
        """One answer: latency from `started` (the scheduled time, or the previous answer of a
        chain), codes, 5xx. Well-behaved: `expected` statuses; hostile: `acceptable`."""
        latency_us = max(1, int((time.monotonic() - started) * 1e6))
        partner.histogram.record_value(min(latency_us, 60_000_000))
        histogram = self.op_histograms.get(op)
        if histogram is None:
            from loadtest.generator import new_histogram

            histogram = self.op_histograms[op] = new_histogram()
        histogram.record_value(min(latency_us, 60_000_000))
        partner.answered += reply.error is None
        partner.ops[op] += 1
        code = code_of(reply)
        if reply.status >= 500:
            self.status_5xx[f"{op} {code}"] += 1
        if partner.hostile:
            assert hostile_class is not None
            self.hostile_by_class[hostile_class][code] += 1
            if sent:  # the inputs come from fixed lists: a bounded table
                self.hostile_inputs[f"{hostile_class} {sent[:48]!r} -> {code}"] += 1
            if reply.status >= 400 or reply.error is not None:
                self.errors_hostile[code] += 1
            ok = bool(acceptable) and reply.status < 500 and reply.error is None
            if not ok:
                self.hostile_violations[hostile_class] += 1
                if len(self.violation_examples) < 4 * EXAMPLES_MAX:
                    self.violation_examples.append(
                        f"{partner.partner_id} {hostile_class}/{op} {sent[:60]!r}: {code} {str(reply.body)[:160]}"
                    )
            return ok
        if reply.status >= 400 or reply.error is not None:
            self.errors_good[code] += 1
        if expected is not None and reply.status not in expected:
            partner.unexpected += 1
            partner.codes[code] += 1
            if len(partner.examples) < EXAMPLES_MAX:
                partner.examples.append(f"{op}: {code} {str(reply.body)[:160]}")
            return False
        return True

    def item_error(self, partner: Partner, status: int, error: Any) -> None:
        """A batch item that was not 201 (the batch itself was 200): unexpected for a
        well-behaved partner, a 5xx for everyone."""
        code = f"{status} {error.get('code') if isinstance(error, dict) else '-'}"
        if status >= 500:
            self.status_5xx[f"batch_item {code}"] += 1
        if partner.hostile:
            self.errors_hostile[code] += 1
            return
        self.errors_good[code] += 1
        partner.unexpected += 1
        partner.codes[code] += 1
        if len(partner.examples) < EXAMPLES_MAX:
            partner.examples.append(f"batch item: {code} {str(error)[:160]}")

    def hostile_refused(self, reply: Reply) -> bool:
        return 400 <= reply.status < 500 and error_shape_ok(reply)

    def hostile_answered(self, reply: Reply) -> bool:
        """Acceptable input: a 2xx, or a refusal in the error shape."""
        return 200 <= reply.status < 300 or self.hostile_refused(reply)
