"""Locust suite for quickpay: partners making quick payments through the public API.

Run (README):
    QUICKPAY_POPULATION=.quickpay/population.json \\
    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080 --csv out/locust --html out/locust.html

Locust is closed loop (each user waits for its answer) and rounds response times to the
millisecond, so it checks behaviour and correctness under a realistic request mix; the
open-loop generator in ``loadtest.generator`` measures latency at a stated rate.

Environment:
    QUICKPAY_POPULATION       population JSON written by ``quickpay seed`` (required)
    QUICKPAY_AGREEMENTS_MAX   agreements sampled per process (default 200000)
    QUICKPAY_WAIT_S           pause between a user's tasks in seconds (default 0)
    QUICKPAY_GATE_FAIL_RATIO  exit 1 if the failure ratio is above this (default 0.01)
    QUICKPAY_GATE_P99_MS      exit 1 if the overall p99 is above this (default 200)
    QUICKPAY_GATE_MIN_RPS     exit 1 if the overall request rate is below this (default 0)

Never import this module in the pytest process: locust monkeypatches the standard library
with gevent on import.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import time
import urllib.parse
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.runners import WorkerRunner

from loadtest.locust_population import Population, ZipfSampler, load_population
from loadtest.locust_population import new_idempotency_key as _new_idempotency_key

__all__ = ["PartnerUser", "Population", "ZipfSampler", "load_population"]

CROSS_SHARD_CREDITOR_FRACTION = 0.05
PAYMENT_STATUSES = frozenset({"AcceptedSettlementCompleted", "AcceptedSettlementInProcess", "Rejected"})
_RECENT_PAYMENTS_MAX = 1000
_TOKEN_REFRESH_MARGIN_S = 30.0


_user_numbers = itertools.count()


class PartnerUser(FastHttpUser):
    """One partner's client: authenticates, then pays, polls statuses and reads balances."""

    wait_time = constant(float(os.environ.get("QUICKPAY_WAIT_S", "0")))

    def on_start(self) -> None:
        population = load_population()
        self.population = population
        indexes = population.partner_indexes_with_agreements
        self.partner_index = indexes[next(_user_numbers) % len(indexes)]
        self.partner = population.partners[self.partner_index]
        self.agreement_ids, self.debtor_accounts = population.agreements[self.partner_index]
        self.sample_agreement = population.samplers[self.partner_index]
        self.random = random.Random()
        self.payment_ids: collections.deque[str] = collections.deque(maxlen=_RECENT_PAYMENTS_MAX)
        # (idempotency key, exact body, payment id) of answered payments, for retries.
        self.sent_payments: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=_RECENT_PAYMENTS_MAX)
        self.token = ""
        self.token_expires_at = 0.0
        self._authenticate()

    # auth ---------------------------------------------------------------------------------
    def _authenticate(self) -> None:
        body = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.partner["client_id"],
                "client_secret": self.partner["client_secret"],
            }
        )
        with self.client.post(
            "/oauth2/token",
            data=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
            name="/oauth2/token",
            catch_response=True,
        ) as response:
            try:
                answer = response.json()
                token = answer["access_token"]
                expires_in = float(answer.get("expires_in", 3600))
            except Exception:
                response.failure(f"token: HTTP {response.status_code}: {response.text[:200]!r}")
                return
            if response.status_code != 200 or not token:
                response.failure(f"token: HTTP {response.status_code}")
                return
            self.token = token
            self.token_expires_at = time.monotonic() + expires_in

    def _headers(self, **extra: str) -> dict[str, str]:
        if time.monotonic() > self.token_expires_at - _TOKEN_REFRESH_MARGIN_S:
            self._authenticate()
        headers = {"authorization": f"Bearer {self.token}"}
        headers.update(extra)
        return headers

    # payments -----------------------------------------------------------------------------
    def _payment_body(self, agreement_id: str, debtor_account: str, creditor_account: str) -> str:
        amount_minor = self.random.randint(100, 50_000)
        return json.dumps(
            {
                "agreement_id": agreement_id,
                "amount": f"{amount_minor // 100}.{amount_minor % 100:02d}",
                "currency": self.population.currency,
                "creditor_account": creditor_account,
                "reference": f"locust {debtor_account[-8:]}",
            },
            separators=(",", ":"),
        )

    def _post_payment(
        self, key: str, body: str, name: str, expect_status: str | None = None, expect_payment_id: str | None = None
    ) -> str | None:
        """POST a payment and check the answer; returns the payment id when it is valid."""
        headers = self._headers(**{"x-idempotency-key": key, "content-type": "application/json"})
        with self.client.post(
            "/v1/quick-payments", data=body, headers=headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"expected 201, got {response.status_code}: {response.text[:200]!r}")
                return None
            try:
                answer = response.json()
                payment_id = answer["payment_id"]
                status = answer["status"]
            except Exception:
                response.failure(f"201 without payment_id/status: {response.text[:200]!r}")
                return None
            if status not in PAYMENT_STATUSES:
                response.failure(f"unexpected payment status {status!r}")
                return None
            if expect_status is not None and status != expect_status:
                response.failure(f"expected status {expect_status}, got {status}")
                return None
            if expect_payment_id is not None and payment_id != expect_payment_id:
                response.failure(f"replay returned payment {payment_id}, first answer was {expect_payment_id}")
                return None
            response.success()
            return str(payment_id)

    @task(85)
    def quick_payment(self) -> None:
        index = self.sample_agreement()
        debtor_account = self.debtor_accounts[index]
        creditor_account = self.partner["settlement_account"]
        if self.random.random() < CROSS_SHARD_CREDITOR_FRACTION:
            # Another customer's account, most likely on another shard.
            accounts = self.population.all_debtor_accounts
            other = accounts[self.random.randrange(len(accounts))]
            if other != debtor_account:
                creditor_account = other
        key = _new_idempotency_key()
        body = self._payment_body(self.agreement_ids[index], debtor_account, creditor_account)
        payment_id = self._post_payment(key, body, name="POST /v1/quick-payments")
        if payment_id is not None:
            self.payment_ids.append(payment_id)
            self.sent_payments.append((key, body, payment_id))

    @task(1)
    def blocked_payment(self) -> None:
        blocked = self.population.blocked.get(self.partner_index)
        if not blocked:
            self.quick_payment()
            return
        entry = blocked[self.random.randrange(len(blocked))]
        body = self._payment_body(entry["agreement_id"], entry["debtor_account"], self.partner["settlement_account"])
        self._post_payment(
            _new_idempotency_key(), body, name="POST /v1/quick-payments (blocked)", expect_status="Rejected"
        )

    @task(2)
    def idempotent_retry(self) -> None:
        if not self.sent_payments:
            self.quick_payment()
            return
        key, body, payment_id = self.sent_payments[self.random.randrange(len(self.sent_payments))]
        self._post_payment(key, body, name="POST /v1/quick-payments (retry)", expect_payment_id=payment_id)

    # reads --------------------------------------------------------------------------------
    @task(6)
    def payment_status(self) -> None:
        if not self.payment_ids:
            self.quick_payment()
            return
        payment_id = self.payment_ids[self.random.randrange(len(self.payment_ids))]
        with self.client.get(
            f"/v1/quick-payments/{payment_id}",
            headers=self._headers(),
            name="GET /v1/quick-payments/[payment_id]",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}: {response.text[:200]!r}")
                return
            try:
                answer = response.json()
            except Exception:
                response.failure("payment status is not JSON")
                return
            if answer.get("payment_id") != payment_id:
                response.failure(f"asked for {payment_id}, got {answer.get('payment_id')!r}")

    @task(6)
    def balance(self) -> None:
        account = self.debtor_accounts[self.sample_agreement()]
        with self.client.get(
            f"/v1/accounts/{account}/balance",
            headers=self._headers(),
            name="GET /v1/accounts/[account_id]/balance",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}: {response.text[:200]!r}")


# --------------------------------------------------------------------------------------------
# Pass/fail gates, decided once by the process that owns the totals (master or standalone).


@events.quitting.add_listener
def _apply_gates(environment: Any, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    fail_ratio_max = float(os.environ.get("QUICKPAY_GATE_FAIL_RATIO", "0.01"))
    p99_ms_max = float(os.environ.get("QUICKPAY_GATE_P99_MS", "200"))
    rps_min = float(os.environ.get("QUICKPAY_GATE_MIN_RPS", "0"))
    total = environment.stats.total
    failed = []
    if total.num_requests == 0:
        failed.append("no requests were made")
    if total.fail_ratio > fail_ratio_max:
        failed.append(f"failure ratio {total.fail_ratio:.4f} > {fail_ratio_max}")
    p99_ms = total.get_response_time_percentile(0.99) or 0
    if p99_ms > p99_ms_max:
        failed.append(f"p99 {p99_ms} ms > {p99_ms_max} ms")
    if total.total_rps < rps_min:
        failed.append(f"throughput {total.total_rps:.1f} req/s < {rps_min} req/s")
    summary = (
        f"requests={total.num_requests} failures={total.num_failures} "
        f"fail_ratio={total.fail_ratio:.4f} p99_ms={p99_ms} rps={total.total_rps:.1f}"
    )
    if failed:
        print(f"quickpay gates FAILED: {'; '.join(failed)} ({summary})", flush=True)
        environment.process_exit_code = 1
    else:
        print(f"quickpay gates passed ({summary})", flush=True)
        environment.process_exit_code = 0
