"""`quickpay soak`: mixed open-loop traffic from many partners for a long while, then checks.

Against a stack it starts itself (`quickpay up` on an embedded PostgreSQL, as `quickpay
bench` does: loadtest.bench.stack.StackProcess) or a running one (--url and its --state-dir).
The population is seeded as the bench seeds it (loadtest.bench.population.seed_at): partners
through the admin API, funded customers with authorised agreements over the shard protocol.

Traffic: ``--partners`` partners, each on its own open-loop timetable (request k at
t0 + phase + k / rate; latency is measured from that scheduled time, so a stall shows in
every request it delays). Well-behaved partners send single and batch payments, refunds,
agreement create / authorise (the customer, through the admin API) / revoke, balance and
list reads, the events feed, provisional reconciliation files, and read their webhook
endpoints; some register an endpoint on a local receiver (loopback) and get deliveries.
The last ``--hostile`` partners send bad input (the classes of tests/test_hostile_input.py
and tests/test_poison*.py): out-of-range times with odd UTC offsets, non-NFC text, huge and
negative amounts, oversized bodies, 10,000-character paths, batches over the item limit and
bursts over their (lowered) rate limit, and many pending agreements over one account.

Verdict (exit 1 if any fails): no 5xx at all; the conservation audit (ledger.audit, what
`quickpay check` runs) passes; every hostile request was refused in the one error shape (or,
where the input is acceptable, answered 2xx as the API documents: non-NFC text reads back
in NFC); every well-behaved partner got only the answers it expected, and got answers.
Reported too: each partner's p50/p99, errors by code, the RSS of every process of the stack
at the start and the end, table sizes. Writes OUT/soak-report.json and OUT/soak-summary.txt.

Every loop is bounded (the timetable by the duration, in-flight requests by
INFLIGHT_MAX, each request by --timeout-s, the drain by DRAIN_S); every server listens on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import heapq
import json
import random
import re
import shutil
import sys
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GOOD_MIX", "HOSTILE_CLASSES", "add_soak_arguments", "parse_duration", "run_soak"]

DURATION_MIN_S = 5.0
DURATION_MAX_S = 24 * 3600.0
INFLIGHT_MAX = 2_000  # requests in flight at once; a send beyond it is skipped and counted
DRAIN_S = 60.0  # after the timetable: how long in-flight requests may still take
CONNECTIONS_MAX = 256
TOKEN_REFRESH_S = 1800.0  # tokens live an hour (gateway.auth.TOKEN_TTL_S)
PAYMENTS_KEPT = 200  # per partner, for refunds and reads
EXAMPLES_MAX = 5

# Well-behaved traffic: operation -> weight.
GOOD_MIX: dict[str, int] = {
    "pay": 30,
    "batch": 4,
    "refund": 6,
    "agreement": 4,
    "balance": 10,
    "transactions": 8,
    "agreements_list": 6,
    "get_payment": 8,
    "events": 12,
    "recon": 3,
    "webhooks_list": 2,
}
HOSTILE_CLASSES = [
    "timestamps",
    "non_nfc",
    "amounts",
    "oversized",
    "long_paths",
    "batch_items",
    "pending",
    "control_text",
    "rate_burst",
]


def parse_duration(text: str) -> float:
    """ "10m", "60s", "1h", "90" (seconds) -> seconds, within [DURATION_MIN_S, DURATION_MAX_S]."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is a number with s, m or h (60s, 10m)")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not DURATION_MIN_S <= seconds <= DURATION_MAX_S:
        raise argparse.ArgumentTypeError(f"the duration is {DURATION_MIN_S:g} s to {DURATION_MAX_S / 3600:g} h")
    return seconds


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=parse_duration, default=600.0, help="how long to drive traffic (default 10m)")
    p.add_argument("--partners", type=int, default=150, help="partners, hostile ones included (default 150)")
    p.add_argument("--hostile", type=int, default=10, help="of them, partners sending bad input (default 10)")
    p.add_argument(
        "--rate",
        type=float,
        default=150.0,
        help="operations per second offered in total, spread evenly over the partners (default 150)",
    )
    p.add_argument("--customers-per-partner", type=int, default=4, help="funded customers per partner (default 4)")
    p.add_argument("--batch-items", type=int, default=10, help="payments per well-behaved batch (default 10)")
    p.add_argument(
        "--webhook-every",
        type=int,
        default=3,
        help="every N-th well-behaved partner registers a webhook endpoint (default 3)",
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="per request (default 30)")
    p.add_argument("--url", help="soak a running stack (give its --state-dir too); default: start one")
    p.add_argument(
        "--state-dir",
        help="the running stack's state (with --url), or where to start one (default OUT/state, emptied first)",
    )
    p.add_argument("--port", type=int, default=0, help="port of the stack started here (default: a free one)")
    p.add_argument("--shards", type=int, default=2, help="shards of the stack started here (default 2)")
    p.add_argument("--workers", type=int, default=2, help="gateway workers of the stack started here (default 2)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the traffic mix (default 1)")
    p.add_argument("--out", default="soak-out", help="report directory (default soak-out)")


def validate(args: argparse.Namespace) -> None:
    problems = []
    if not 2 <= args.partners <= 1000:
        problems.append("--partners must be between 2 and 1000")
    if not 0 <= args.hostile < args.partners:
        problems.append("--hostile must be at least 0 and less than --partners")
    if not 0.1 <= args.rate <= 5000:
        problems.append("--rate must be between 0.1 and 5000 operations/s")
    if not 1 <= args.customers_per_partner <= 1000:
        problems.append("--customers-per-partner must be between 1 and 1000")
    if not 1 <= args.batch_items <= 1000:
        problems.append("--batch-items must be between 1 and 1000")
    if not 1 <= args.webhook_every <= 1000:
        problems.append("--webhook-every must be between 1 and 1000")
    if not 1 <= args.timeout_s <= 300:
        problems.append("--timeout-s must be between 1 and 300")
    if args.url and not args.state_dir:
        problems.append("--url needs the stack's --state-dir (admin token, shard sockets, databases)")
    if args.url and not re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?/?$", args.url):
        problems.append("--url must be a loopback http:// address (the soak never leaves the machine)")
    if problems:
        raise SystemExit("quickpay soak: " + "; ".join(problems))


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
class Soak:
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

    # -- well-behaved operations
    def _payment_body(self, partner: Partner, reference: str = "soak") -> dict[str, Any]:
        agreement_id, _ = partner.agreements[self.rng.randrange(len(partner.agreements))]
        return {
            "agreement_id": agreement_id,
            "amount": "1.00",
            "currency": "CNY",
            "creditor_account": partner.settlement_account,
            "reference": reference,
        }

    async def good_op(self, partner: Partner, op: str, scheduled: float) -> None:
        if (op == "refund" and not partner.payments) or (op == "get_payment" and not partner.payments):
            op = "pay"
        if op == "pay":
            reply = await self.request(
                "POST",
                "/v1/quick-payments",
                partner,
                json_body=self._payment_body(partner),
                headers={"x-idempotency-key": uuid.uuid4().hex},
            )
            if self.record(partner, op, reply, scheduled, (201,)):
                self.payments_ok += 1
                if reply.body.get("status") == "AcceptedSettlementCompleted":
                    partner.payments.append(reply.body["payment_id"])
        elif op == "batch":
            items = [
                {**self._payment_body(partner, "soak batch"), "idempotency_key": uuid.uuid4().hex}
                for _ in range(self.args.batch_items)
            ]
            reply = await self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": items})
            if self.record(partner, op, reply, scheduled, (200,)):
                for result in reply.body.get("results", []):
                    if result.get("status") == 201:
                        self.batch_items_ok += 1
                        if result["payment"].get("status") == "AcceptedSettlementCompleted":
                            partner.payments.append(result["payment"]["payment_id"])
                    else:
                        self.item_error(partner, int(result.get("status") or 0), result.get("error"))
        elif op == "refund":
            payment_id = partner.payments.popleft()  # each payment refunded once, in part
            reply = await self.request(
                "POST",
                f"/v1/quick-payments/{payment_id}/refunds",
                partner,
                json_body={"amount": "0.50", "reason": "requested_by_customer", "reference": "soak refund"},
                headers={"x-idempotency-key": uuid.uuid4().hex},
            )
            if self.record(partner, op, reply, scheduled, (201,)):
                self.refunds_ok += 1
        elif op == "agreement":
            _, debtor = partner.agreements[self.rng.randrange(len(partner.agreements))]
            reply = await self.request(
                "POST",
                "/v1/agreements",
                partner,
                json_body={
                    "debtor_account": debtor,
                    "currency": "CNY",
                    "per_payment_limit": "10.00",
                    "daily_limit": "100.00",
                },
            )
            if not self.record(partner, "agreement_create", reply, scheduled, (201,)):
                return
            agreement_id = reply.body["agreement_id"]
            started = time.monotonic()
            reply = await self.request("POST", f"/admin/v1/agreements/{agreement_id}/authorise", None, admin=True)
            if not self.record(partner, "agreement_authorise", reply, started, (200,)):
                return
            started = time.monotonic()
            reply = await self.request("DELETE", f"/v1/agreements/{agreement_id}", partner)
            self.record(partner, "agreement_revoke", reply, started, (200,))
        elif op == "balance":
            account = partner.settlement_account
            reply = await self.request("GET", f"/v1/accounts/{account}/balance", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "transactions":
            reply = await self.request(
                "GET", f"/v1/accounts/{partner.settlement_account}/transactions?limit=50", partner
            )
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "agreements_list":
            reply = await self.request("GET", "/v1/agreements?limit=50", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "get_payment":
            payment_id = partner.payments[self.rng.randrange(len(partner.payments))]
            reply = await self.request("GET", f"/v1/quick-payments/{payment_id}", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "events":
            after = f"&after={partner.events_cursor}" if partner.events_cursor else ""
            reply = await self.request("GET", f"/v1/events?limit=100{after}", partner)
            if self.record(partner, op, reply, scheduled, (200,)) and isinstance(reply.body, dict):
                partner.events_cursor = reply.body.get("last_cursor") or partner.events_cursor
        elif op == "recon":
            day = datetime.datetime.now(datetime.UTC).date().isoformat()
            reply = await self.request(
                "GET", f"/v1/reconciliation-files/{day}?provisional=true", partner, read_text=True
            )
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "webhooks_list":
            reply = await self.request("GET", "/v1/webhook-endpoints", partner)
            self.record(partner, op, reply, scheduled, (200,))
        else:
            raise AssertionError(op)

    # -- hostile operations
    async def hostile_op(self, partner: Partner, scheduled: float) -> None:
        """One hostile request (or a small burst), the class by turns: every class is sent by
        every hostile partner. The first two hostile partners (lowered rate limit) burst."""
        classes = HOSTILE_CLASSES
        kind = classes[partner.hostile_turn % len(classes)]
        partner.hostile_turn += 1
        agreement_id, debtor = partner.agreements[0]
        base = {
            "agreement_id": agreement_id,
            "amount": "0.01",
            "currency": "CNY",
            "creditor_account": partner.settlement_account,
            "reference": "hostile",
        }
        key = {"x-idempotency-key": uuid.uuid4().hex}
        pick = self.rng.choice
        if kind == "timestamps":
            field_name = pick(["valid_to", "valid_from"])
            value = pick(
                [
                    "9999-12-31T23:00:00-05:00",
                    "9998-12-31T23:59:59+00:00",
                    "1970-01-01T00:30:00+01:00",
                    "1970-01-01T00:00:59+00:01",
                    "0001-01-01T00:00:00+23:59",
                    "2026-01-01T00:00:00+24:00",
                    "2026-13-01T00:00:00+05:45",
                    "1970-01-01T05:29:59+05:30",
                    "10000-01-01T00:00:00Z",
                    "2026-06-01T00:00:00",
                    "9999-12-31T23:59:59.999999-23:59",
                ]
            )
            body = {"debtor_account": debtor, "currency": "CNY", "per_payment_limit": "1.00", field_name: value}
            reply = await self.request("POST", "/v1/agreements", partner, json_body=body)
            self.record(
                partner,
                "agreement_create",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=f"{field_name}={value}",
            )
        elif kind == "non_nfc":
            reference = pick(
                [
                    "Cafe\u0301 cre\u0300me",
                    "\u212b\u2126 \u1e9b\u0323",
                    "\u0958" * 5,
                    "o\u0308\u0304 a\u030a",
                    "\u0958" * 140,
                    "e\u0301" * 139,
                ]
            )
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "reference": reference}, headers=key
            )
            acceptable = self.hostile_refused(reply)
            if reply.status == 201:
                # Normalise, then validate: a 2xx reads back in NFC.
                nfc = unicodedata.normalize("NFC", reference)
                acceptable = isinstance(reply.body, dict) and reply.body.get("reference") == nfc
            self.record(
                partner, "pay", reply, scheduled, None, hostile_class=kind, acceptable=acceptable, sent=reference
            )
        elif kind == "amounts":
            amount = pick(
                [
                    "-1",
                    "-0.01",
                    "9" * 40,
                    "99999999999999999999999",
                    "92233720368547758.08",
                    "-92233720368547758.08",
                    "1e3",
                    "\u0663",
                    "\uff11\uff12",
                    "0",
                    "1.001",
                    "NaN",
                    "92233720368547758.07",
                ]
            )
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "amount": amount}, headers=key
            )
            # The int64 maximum is a well-formed amount: 201 Rejected by the agreement's limit.
            ok = self.hostile_answered(reply) if amount == "92233720368547758.07" else self.hostile_refused(reply)
            self.record(partner, "pay", reply, scheduled, None, hostile_class=kind, acceptable=ok, sent=amount)
        elif kind == "oversized":
            target = pick(["single", "batch", "agreement", "refund"])
            if target == "batch":
                big = json.dumps(
                    {"payments": [{**base, "idempotency_key": "k" * 40, "reference": "r" * 140}] * 4500}
                ).encode()  # over 1 MiB
                path = "/v1/quick-payments/batch"
            elif target == "refund":
                big = b'{"reference": "' + b"x" * (70 * 1024) + b'"}'
                path = f"/v1/quick-payments/pay_{'0' * 32}_0/refunds"
            elif target == "agreement":
                big = b'{"debtor_account": "' + debtor.encode() + b'", "pad": "' + b"x" * (200 * 1024) + b'"}'
                path = "/v1/agreements"
            else:
                big = json.dumps({**base, "reference": "x" * (70 * 1024)}).encode()
                path = "/v1/quick-payments"
            reply = await self.request("POST", path, partner, raw=big, headers=key)
            self.record(
                partner,
                f"oversized_{target}",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
            )
        elif kind == "long_paths":
            path = pick(
                [
                    "/v1/" + "x" * 10_000,
                    f"/v1/quick-payments/pay_{'0' * 10_000}_0",
                    "/v1/accounts/acc_" + "a" * 10_000 + "/balance",
                    "/v1/agreements/agr_" + "b" * 10_000,
                    "/v1/events?after=" + "9" * 10_000,
                    "/v1/reconciliation-files/" + "2" * 10_000,
                ]
            )
            reply = await self.request("GET", path, partner)
            self.record(
                partner,
                "long_path",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=path,
            )
        elif kind == "batch_items":
            items = [{**base, "idempotency_key": uuid.uuid4().hex} for _ in range(1001)]
            reply = await self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": items})
            self.record(
                partner, "batch", reply, scheduled, None, hostile_class=kind, acceptable=self.hostile_refused(reply)
            )
        elif kind == "pending":
            # Agreements never authorised, over one account: 201 until the cap, then 409.
            account = partner.pending_account or debtor
            reply = await self.request(
                "POST",
                "/v1/agreements",
                partner,
                json_body={"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"},
            )
            self.record(
                partner,
                "agreement_create",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_answered(reply),
            )
        elif kind == "control_text":
            reference = pick(["a\x00b", "\x00", "line\nbreak", "\x1b[31m", "\x7f", "\x85"])
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "reference": reference}, headers=key
            )
            self.record(
                partner,
                "pay",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=reference,
            )
        elif kind == "rate_burst":
            # Batches at once, over the partner's limit: 200s, then 429s in the error shape.
            burst = 12 if partner.rate_limited else 3
            bodies = [[{**base, "idempotency_key": uuid.uuid4().hex} for _ in range(5)] for _ in range(burst)]
            replies = await asyncio.gather(
                *(self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": b}) for b in bodies)
            )
            for reply in replies:
                self.record(
                    partner,
                    "batch",
                    reply,
                    scheduled,
                    None,
                    hostile_class=kind,
                    acceptable=self.hostile_answered(reply),
                )
        else:
            raise AssertionError(kind)

    # -- the timetable
    async def _run_one(self, partner: Partner, scheduled: float) -> None:
        await self.refresh_token(partner)
        if partner.hostile:
            await self.hostile_op(partner, scheduled)
        else:
            op = self.rng.choices(self._ops, self._weights)[0]
            await self.good_op(partner, op, scheduled)

    async def drive(self, duration_s: float) -> dict[str, Any]:
        t0 = time.monotonic() + 0.5
        end = t0 + duration_s
        heap: list[tuple[float, int]] = []
        for partner in self.partners:
            heapq.heappush(heap, (t0 + self.rng.random() / partner.rate, partner.index))
        by_index = {p.index: p for p in self.partners}
        scheduled_count = 0
        while heap and heap[0][0] < end:  # bounded: every entry moves forward by 1/rate
            scheduled, index = heapq.heappop(heap)
            partner = by_index[index]
            heapq.heappush(heap, (scheduled + 1.0 / partner.rate, index))
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            partner.sent += 1
            scheduled_count += 1
            if len(self.inflight) >= INFLIGHT_MAX:
                partner.skipped += 1  # the generator's own bound, reported
                continue
            task = asyncio.create_task(self._run_one(partner, scheduled))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        drained = True
        if self.inflight:
            done, pending = await asyncio.wait(set(self.inflight), timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            drained = not pending
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        return {"scheduled": scheduled_count, "wall_s": round(time.monotonic() - t0, 1), "drained": drained}


# ---- the webhook receiver (loopback) -------------------------------------------------------
async def start_receiver(counter: collections.Counter[str]) -> tuple[Any, str]:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        counter[request.match_info["partner"]] += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{partner}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


# ---- the stack's processes, tables and audit -----------------------------------------------
def stack_processes(up_pid: int | None, state_dir: Path) -> dict[int, dict[str, Any]]:
    """pid -> {group, name, rss_mb} of the `up` process tree and the PostgreSQL server's."""
    import psutil

    from loadtest.bench.stack import SutCpu, process_group

    found: dict[int, dict[str, Any]] = {}
    if up_pid is None:
        return found
    for pid, proc in SutCpu(up_pid, state_dir).processes().items():
        try:
            cmd = proc.cmdline()
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        group = process_group(cmd)
        if "quickpay.cli" in cmd:
            at = cmd.index("quickpay.cli")
            name = " ".join(a for a in cmd[at + 1 : at + 2])
            if "--shard" in cmd:
                name += f" {cmd[cmd.index('--shard') + 1]}"
        else:
            name = proc.name() or cmd[0] if cmd else "?"
            if group == "postgres" and len(cmd) == 1:
                name = cmd[0][:60]  # "postgres: checkpointer", "postgres: user db [local] idle"
        found[pid] = {"pid": pid, "group": group, "name": name, "rss_mb": round(rss / 2**20, 1)}
    return found


def rss_report(start: dict[int, dict[str, Any]], end: dict[int, dict[str, Any]]) -> dict[str, Any]:
    processes = []
    for pid in sorted(set(start) | set(end)):
        a, b = start.get(pid), end.get(pid)
        ref = a or b
        assert ref is not None
        processes.append(
            {
                "pid": pid,
                "group": ref["group"],
                "name": ref["name"],
                "rss_start_mb": a["rss_mb"] if a else None,
                "rss_end_mb": b["rss_mb"] if b else None,
                "growth_mb": round(b["rss_mb"] - a["rss_mb"], 1) if a and b else None,
            }
        )
    groups: dict[str, dict[str, float]] = {}
    for entry in processes:
        g = groups.setdefault(entry["group"], {"start_mb": 0.0, "end_mb": 0.0})
        g["start_mb"] = round(g["start_mb"] + (entry["rss_start_mb"] or 0.0), 1)
        g["end_mb"] = round(g["end_mb"] + (entry["rss_end_mb"] or 0.0), 1)
    for g in groups.values():
        g["growth_mb"] = round(g["end_mb"] - g["start_mb"], 1)
    return {
        "processes": processes,
        "by_group": groups,
        "total_start_mb": round(sum(g["start_mb"] for g in groups.values()), 1),
        "total_end_mb": round(sum(g["end_mb"] for g in groups.values()), 1),
        "note": "PostgreSQL backends come and go with connections: a pid seen only at one end has "
        "no growth; the quickpay processes live through the run",
    }


async def table_sizes(dsns: list[str]) -> list[dict[str, Any]]:
    import asyncpg

    shards = []
    for shard, dsn in enumerate(dsns):
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT c.relname AS name, c.reltuples::bigint AS estimate, pg_total_relation_size(c.oid) AS bytes"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY c.relname"
            )
            tables = {}
            for row in rows:
                count = await conn.fetchval(f'SELECT count(*) FROM "{row["name"]}"')
                tables[row["name"]] = {"rows": int(count), "mb": round(int(row["bytes"]) / 2**20, 2)}
            shards.append({"shard": shard, "tables": tables})
        finally:
            await conn.close()
    return shards


def audit_report(dsns: list[str]) -> dict[str, Any]:
    """What `quickpay check` runs: conservation and every stored row readable."""
    from ledger.audit import audit
    from ledger.writable import resolve_writable

    async def run() -> Any:
        return await audit(await resolve_writable(dsns))

    report = asyncio.run(run())
    return {
        "ok": bool(report.ok),
        "problems": list(report.problems)[:50],
        "total_minor": report.total_minor,
        "in_flight_minor": report.in_flight_minor,
        "unreadable_count": report.unreadable_count,
    }


# ---- setup -------------------------------------------------------------------------------------
async def prepare_partners(soak: Soak, hostile_rate_limited: int) -> list[str]:
    """Webhook endpoints of every --webhook-every-th well-behaved partner; the hostile
    partners' lowered rate limits and their pending-agreement account. Returns problems."""
    problems = []
    good = [p for p in soak.partners if not p.hostile]
    for n, partner in enumerate(good):
        if n % soak.args.webhook_every or soak.receiver_url is None:
            continue
        reply = await soak.request(
            "POST",
            "/v1/webhook-endpoints",
            partner,
            json_body={"url": f"{soak.receiver_url}/hook/{partner.partner_id}", "events": ["*"]},
        )
        if reply.status == 201:
            partner.webhook = reply.body["id"]
        else:
            problems.append(
                f"{partner.partner_id} could not register its webhook endpoint: {code_of(reply)} "
                f"{str(reply.body)[:200]}"
            )
    for n, partner in enumerate(p for p in soak.partners if p.hostile):
        partner.rate_limited = n < hostile_rate_limited
        if partner.rate_limited:
            reply = await soak.request(
                "PUT",
                f"/admin/v1/partners/{partner.partner_id}/rate-limit",
                None,
                admin=True,
                json_body={"requests_per_s": 4, "burst": 4},
            )
            if reply.status != 200:
                problems.append(f"could not lower {partner.partner_id}'s rate limit: {code_of(reply)}")
        partner.pending_account = partner.agreements[-1][1]
    return problems


def latency_ms(histogram: Any, percentile: float) -> float | None:
    if histogram.get_total_count() == 0:
        return None
    return round(histogram.get_value_at_percentile(percentile) / 1000.0, 2)


def summarise(report: dict[str, Any]) -> str:
    lines = [
        f"quickpay soak: {report['duration_s']:g} s, {report['partners']} partners "
        f"({report['hostile_partners']} hostile), {report['offered_per_s']:g} operations/s offered; "
        f"{report['date']} on {report['machine']['cpu_count']} CPUs ({report['machine']['cpu_model']})"
    ]
    t = report["traffic"]
    lines.append(
        f"  sent {t['scheduled']} operations, {t['answered']} answers; payments 201 {t['payments_ok']}, "
        f"batch items 201 {t['batch_items_ok']}, refunds 201 {t['refunds_ok']}, "
        f"webhook deliveries {t['webhook_deliveries']} to {t['webhook_endpoints']} endpoints; "
        f"skipped (generator bound) {t['skipped']}"
    )
    lat = report["latency_ms"]
    lines.append(
        f"  latency (open loop, from the scheduled time): well-behaved p50 {lat['good_p50']} ms, "
        f"p99 {lat['good_p99']} ms; per partner p99 median {lat['partner_p99_median']} ms, "
        f"max {lat['partner_p99_max']} ms ({lat['partner_p99_max_partner']})"
    )
    for op, v in sorted(report["latency_by_operation"].items()):
        lines.append(f"    {op:22s} n={v['count']:7d} p50 {v['p50_ms']} ms p99 {v['p99_ms']} ms")
    lines.append("  errors of well-behaved partners by code: " + (json.dumps(report["errors_good"]) or "{}"))
    lines.append("  answers to hostile partners by code: " + json.dumps(report["errors_hostile"]))
    rss = report["rss"]
    lines.append(f"  RSS of the stack: {rss['total_start_mb']} MB at the start, {rss['total_end_mb']} MB at the end")
    for group, g in sorted(rss["by_group"].items()):
        lines.append(f"    {group:10s} {g['start_mb']:8.1f} -> {g['end_mb']:8.1f} MB ({g['growth_mb']:+.1f})")
    for p in rss["processes"]:
        if p["group"] != "postgres" or (p["growth_mb"] is not None and abs(p["growth_mb"]) >= 5):
            lines.append(f"      {p['pid']:>7} {p['name'][:40]:40s} {p['rss_start_mb']} -> {p['rss_end_mb']} MB")
    sizes = collections.Counter[str]()
    for shard in report["table_sizes"]:
        for name, v in shard["tables"].items():
            sizes[name] += v["rows"]
    lines.append("  table rows (all shards): " + ", ".join(f"{k} {v}" for k, v in sorted(sizes.items()) if v))
    audit = report["audit"]
    lines.append(f"  conservation audit: {'passed' if audit['ok'] else 'FAILED: ' + '; '.join(audit['problems'][:5])}")
    lines.append(
        f"  5xx: {sum(report['status_5xx'].values())} {json.dumps(report['status_5xx']) if report['status_5xx'] else ''}"
    )
    checks = report["checks"]
    lines.append("  checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    for problem in report["problems"]:
        lines.append(f"  problem: {problem}")
    lines.append(
        "  per partner (slowest p99 first): partner, kind, operations sent, answers, p50 ms, p99 ms, unexpected answers"
    )
    for e in sorted(report["per_partner"], key=lambda e: -(e["p99_ms"] or 0.0)):
        lines.append(
            f"    {e['partner_id']} {'hostile' if e['hostile'] else 'good   '} {e['sent']:6d} {e['answered']:6d} "
            f"{e['p50_ms']} {e['p99_ms']} {e['unexpected']}"
        )
    lines.append("PASSED" if report["ok"] else "FAILED")
    return "\n".join(lines)


def run_soak(args: argparse.Namespace) -> int:
    """`quickpay soak`: returns the exit code; the report is OUT/soak-report.json."""
    report = soak_report(args)
    return 0 if report["ok"] else 1


def soak_report(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.bench.common import _free_port, log, machine_info
    from loadtest.bench.population import bench_rules, seed_at
    from loadtest.bench.stack import StackProcess
    from loadtest.generator import new_histogram
    from quickpay.config import StateDir

    validate(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stack: StackProcess | None = None
    if args.url:
        state_dir = Path(args.state_dir).resolve()
        base_url = args.url.rstrip("/")
    else:
        state_dir = Path(args.state_dir).resolve() if args.state_dir else out / "state"
        if not args.state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
        port = args.port or _free_port()
        stack = StackProcess(
            state_dir,
            port,
            args.shards,
            args.workers,
            out / "up.log",
            rules=bench_rules(out),
            notifier=True,
            monitor=True,
            extra_argv=("--webhooks-allow-private",),
        )
        base_url = stack.base_url
    report: dict[str, Any] = {
        "command_line": " ".join(["quickpay", *sys.argv[1:]])
        if sys.argv and "quickpay" in sys.argv[0]
        else " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "duration_s": args.duration,
        "partners": args.partners,
        "hostile_partners": args.hostile,
        "offered_per_s": args.rate,
        "url": base_url,
        "stack": " ".join(stack.argv) if stack else f"a running stack at {base_url}",
        "problems": [],
    }
    try:
        if stack is not None:
            log(f"soak: starting the stack ({args.shards} shards, {args.workers} gateway workers, notifier, monitor)")
            stack.start()
            up_pid: int | None = stack.pid
        else:
            try:
                up_pid = int(json.loads((state_dir / "supervisor.json").read_text())["supervisor_pid"])
            except (OSError, ValueError, KeyError):
                up_pid = None
                report["problems"].append(f"no {state_dir / 'supervisor.json'}: the stack's RSS is not reported")
        customers = args.partners * args.customers_per_partner
        population = seed_at(base_url, state_dir, customers, args.partners, out)
        state = StateDir(state_dir)
        partners = []
        now = time.monotonic()
        by_partner: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
        for partner_index, agreement_id, debtor in population.agreements:
            by_partner[partner_index].append((agreement_id, debtor))
        per_partner_rate = args.rate / args.partners
        for index, p in enumerate(population.partners):
            partners.append(
                Partner(
                    index=index,
                    partner_id=p["partner_id"],
                    settlement_account=p["settlement_account"],
                    client_id=p["client_id"],
                    client_secret=p["client_secret"],
                    token=population.tokens[index],
                    token_at=now,
                    hostile=index >= args.partners - args.hostile,
                    agreements=by_partner[index],
                    rate=per_partner_rate,
                    histogram=new_histogram(),
                )
            )
        dsns = stack.dsns() if stack is not None else _state_dsns(state_dir)
        rss_start = stack_processes(up_pid, state_dir)
        log(
            f"soak: {len(partners)} partners seeded, {len(rss_start)} stack processes; "
            f"driving {args.rate:g} operations/s for {args.duration:g} s"
        )
        soak_result = asyncio.run(_drive(args, base_url, state.admin_token, partners, report))
        rss_end = stack_processes(up_pid, state_dir)
        report["rss"] = rss_report(rss_start, rss_end)
        log("soak: traffic done; table sizes and the audit")
        report["table_sizes"] = asyncio.run(table_sizes(dsns))
        report["audit"] = audit_report(dsns)
        soak = soak_result
        _fill(report, soak, partners, args)
    finally:
        if stack is not None:
            stack.stop()
    (out / "soak-report.json").write_text(json.dumps(report, indent=2, default=str))
    text = summarise(report)
    (out / "soak-summary.txt").write_text(text + "\n")
    print(text, flush=True)
    print(f"wrote {out / 'soak-report.json'} and {out / 'soak-summary.txt'}", flush=True)
    return report


def _state_dsns(state_dir: Path) -> list[str]:
    from quickpay.embedded_pg import EmbeddedPostgres, shard_database
    from quickpay.ha import HaCluster, is_ha_state

    if is_ha_state(state_dir):
        return HaCluster.attach(state_dir).dsns()
    shards = int(json.loads((state_dir / "topology.json").read_text())["shards"])
    pg = EmbeddedPostgres(state_dir)
    return [pg.dsn(shard_database(i)) for i in range(shards)]


async def _drive(
    args: argparse.Namespace, base_url: str, admin_token: str, partners: list[Partner], report: dict[str, Any]
) -> Soak:
    import aiohttp

    deliveries: collections.Counter[str] = collections.Counter()
    runner, receiver_url = await start_receiver(deliveries)
    soak = Soak(args, base_url, admin_token, partners, receiver_url)
    soak.deliveries = deliveries
    try:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX)
        # The 10,000-character paths and 1 MiB bodies are sent as they are.
        async with aiohttp.ClientSession(connector=connector, max_line_size=65536, max_field_size=65536) as session:
            soak.session = session
            report["problems"].extend(await prepare_partners(soak, hostile_rate_limited=min(2, args.hostile)))
            report["traffic"] = await soak.drive(args.duration)
            # Deliveries trail their events: give the notifier a moment to catch up (bounded).
            await asyncio.sleep(min(5.0, args.duration / 10))
    finally:
        await runner.cleanup()
    return soak


def _fill(report: dict[str, Any], soak: Soak, partners: list[Partner], args: argparse.Namespace) -> None:
    from loadtest.generator import new_histogram

    good = [p for p in partners if not p.hostile]
    hostile = [p for p in partners if p.hostile]
    merged = new_histogram()
    for p in good:
        merged.add(p.histogram)
    per_partner = []
    for p in partners:
        per_partner.append(
            {
                "partner_id": p.partner_id,
                "hostile": p.hostile,
                "sent": p.sent,
                "answered": p.answered,
                "skipped": p.skipped,
                "p50_ms": latency_ms(p.histogram, 50),
                "p99_ms": latency_ms(p.histogram, 99),
                "unexpected": p.unexpected,
                "unexpected_codes": dict(p.codes),
                "examples": p.examples,
                "operations": dict(p.ops),
                "webhook_endpoint": p.webhook,
                "webhook_deliveries": soak.deliveries.get(p.partner_id, 0),
            }
        )
    p99s = sorted((e["p99_ms"], e["partner_id"]) for e in per_partner if not e["hostile"] and e["p99_ms"] is not None)
    traffic = report.setdefault("traffic", {})
    traffic.update(
        {
            "answered": sum(p.answered for p in partners),
            "skipped": sum(p.skipped for p in partners),
            "payments_ok": soak.payments_ok,
            "batch_items_ok": soak.batch_items_ok,
            "refunds_ok": soak.refunds_ok,
            "webhook_deliveries": sum(soak.deliveries.values()),
            "webhook_endpoints": sum(1 for p in partners if p.webhook),
        }
    )
    report["latency_ms"] = {
        "good_p50": latency_ms(merged, 50),
        "good_p99": latency_ms(merged, 99),
        "good_max": latency_ms(merged, 100),
        "partner_p99_median": p99s[len(p99s) // 2][0] if p99s else None,
        "partner_p99_max": p99s[-1][0] if p99s else None,
        "partner_p99_max_partner": p99s[-1][1] if p99s else None,
        "note": "open loop: from each operation's scheduled send time (a chain's later requests from the "
        "previous answer); the machine is shared with other work, so these are noisy",
    }
    report["latency_by_operation"] = {
        op: {"count": h.get_total_count(), "p50_ms": latency_ms(h, 50), "p99_ms": latency_ms(h, 99)}
        for op, h in soak.op_histograms.items()
    }
    report["per_partner"] = per_partner
    report["errors_good"] = dict(soak.errors_good.most_common())
    report["errors_hostile"] = dict(soak.errors_hostile.most_common())
    report["hostile_by_class"] = {k: dict(v.most_common()) for k, v in soak.hostile_by_class.items()}
    report["hostile_violations"] = dict(soak.hostile_violations)
    report["hostile_answers_by_input"] = dict(sorted(soak.hostile_inputs.items()))
    report["hostile_violation_examples"] = soak.violation_examples
    report["status_5xx"] = dict(soak.status_5xx)
    unanswered = [p.partner_id for p in partners if p.answered == 0]
    unexpected = {p.partner_id: dict(p.codes) for p in good if p.unexpected}
    classes_seen = set(soak.hostile_by_class)
    checks = {
        "no_5xx": not soak.status_5xx,
        "audit_passed": bool(report["audit"]["ok"]),
        "hostile_answered_in_error_shape": not soak.hostile_violations,
        "good_partners_no_unexpected_error": not unexpected,
        "every_partner_answered": not unanswered,
        "every_hostile_class_sent": not hostile or classes_seen >= set(HOSTILE_CLASSES),
        "drained": bool(traffic.get("drained", False)),
        "setup": not report["problems"],
    }
    if unanswered:
        report["problems"].append(f"partners without an answer: {unanswered[:10]}")
    if unexpected:
        report["problems"].append(
            f"{len(unexpected)} well-behaved partners got unexpected answers: "
            + json.dumps(dict(list(unexpected.items())[:5]))
        )
    if soak.hostile_violations:
        report["problems"].append(
            "hostile requests answered outside the error shape: " + "; ".join(soak.violation_examples[:5])
        )
    report["checks"] = checks
    report["ok"] = all(checks.values())
