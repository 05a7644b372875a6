"""quickpay_sdk: the partner client.

Against the shared stack (sync and async): agreements from AwaitingAuthorisation to
Authorised, payments, batches, partial and full refunds, pagination, typed errors.
With httpx.MockTransport, a fake sleep and a fake clock: idempotency keys across
retries, the retry policy (503, 429 + Retry-After, 409 InFlight, connection errors,
give-up), token caching and renewal, iterators following next_cursor, the events and
reconciliation contract. And webhook signatures (valid, tampered, stale, rotated, malformed).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import ROOT, Stack

from quickpay_sdk import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    QuickpayError,
    RateLimitError,
    ServerError,
    UnprocessableError,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from quickpay_sdk.webhooks import compute_signature

# ---- against the real stack -------------------------------------------------------------


def authorise(stack: Stack, agreement_id: str) -> None:
    reply = stack.admin("POST", f"/admin/v1/agreements/{agreement_id}/authorise")
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "Authorised"


def test_sync_client_against_the_stack(stack: Stack) -> None:
    partner = stack.new_partner("SDK sync partner")
    settlement = partner["settlement_account"]
    account = stack.new_account(shard=0)
    stack.fund(account, "1000.00")
    with Client(stack.base_url, partner["client_id"], partner["client_secret"]) as qp:
        agreement = qp.create_agreement(account, "CNY", "100.00", daily_limit="500.00")
        agreement_id = agreement["agreement_id"]
        assert agreement["status"] == "AwaitingAuthorisation"
        assert agreement["per_payment_limit"] == "100.00" and agreement["daily_limit"] == "500.00"

        # Not yet authorised: 422, typed, with the code, the field path and the interaction id.
        with pytest.raises(UnprocessableError) as refused:
            qp.create_payment(agreement_id, "10.00", "CNY", settlement, "too early")
        assert refused.value.status == 422
        assert refused.value.code == "QP.Agreement.NotAuthorised"
        assert refused.value.errors[0]["path"] == "$.agreement_id"
        assert refused.value.interaction_id
        assert refused.value.idempotency_key  # the generated key, for a later retry by hand

        authorise(stack, agreement_id)
        assert qp.get_agreement(agreement_id)["status"] == "Authorised"

        payment = qp.create_payment(
            agreement_id, "60.00", "CNY", settlement, "sdk payment", risk={"device_id": "device-1"}
        )
        assert payment["status"] == "AcceptedSettlementCompleted"
        fetched = qp.get_payment(payment["payment_id"])
        assert (fetched["amount"], fetched["agreement_id"], fetched["risk"]["device_id"]) == (
            "60.00",
            agreement_id,
            "device-1",
        )

        # The caller's own key: the same call again is the same payment (exactly once).
        key = f"sdk-{uuid.uuid4().hex}"
        first = qp.create_payment(agreement_id, "1.00", "CNY", settlement, "keyed", idempotency_key=key)
        again = qp.create_payment(agreement_id, "1.00", "CNY", settlement, "keyed", idempotency_key=key)
        assert first["payment_id"] == again["payment_id"]

        items: list[dict[str, Any]] = [
            {
                "agreement_id": agreement_id,
                "amount": "1.50",
                "currency": "CNY",
                "creditor_account": settlement,
                "reference": f"batch {i}",
            }
            for i in range(2)
        ]
        results = qp.create_payment_batch(items)
        assert [r["status"] for r in results] == [201, 201]
        assert len({r["payment"]["payment_id"] for r in results}) == 2
        assert all(isinstance(item["idempotency_key"], str) for item in items)  # written into the items
        replayed = qp.create_payment_batch(items)  # the same items again: the same payments, replayed
        assert [r["payment"]["payment_id"] for r in replayed] == [r["payment"]["payment_id"] for r in results]
        assert all(r["replayed"] for r in replayed)

        # Refund part, then the rest (no amount), then nothing is left.
        part = qp.create_refund(payment["payment_id"], amount="25.00", reason="requested_by_customer")
        assert (part["status"], part["amount"], part["reason"]) == ("Succeeded", "25.00", "requested_by_customer")
        rest = qp.create_refund(payment["payment_id"])
        assert (rest["status"], rest["amount"]) == ("Succeeded", "35.00")
        assert qp.get_refund(part["refund_id"])["payment_id"] == payment["payment_id"]
        with pytest.raises(UnprocessableError) as exceeded:
            qp.create_refund(payment["payment_id"], amount="0.01")
        assert exceeded.value.code == "QP.Refund.ExceedsPayment"
        assert qp.get_payment(payment["payment_id"])["refunded_amount"] == "60.00"

        # 1000.00 - 60.00 - 1.00 - 2 * 1.50 + 60.00 refunded
        assert qp.get_balance(account)["balance"] == "996.00"
        transactions = list(qp.list_transactions(account, page_size=2))
        one_page = list(qp.list_transactions(account, page_size=200))
        ids = [t["transfer_id"] for t in transactions]
        assert ids == [t["transfer_id"] for t in one_page]
        assert len(ids) == len(set(ids)) == 7  # funding, 4 payments, 2 refunds
        assert payment["payment_id"] in ids

        with pytest.raises(NotFoundError) as missing:
            qp.get_payment("pay_" + "0" * 32 + "_0")
        assert (missing.value.status, missing.value.code) == (404, "QP.Payment.NotFound")
        with pytest.raises(NotFoundError) as no_agreement:
            qp.get_agreement("agr_doesnotexist")
        assert no_agreement.value.code == "QP.Agreement.NotFound"

        assert qp.revoke_agreement(agreement_id)["status"] == "Revoked"
        with pytest.raises(UnprocessableError) as revoked:
            qp.create_payment(agreement_id, "1.00", "CNY", settlement, "after revoke")
        assert revoked.value.code == "QP.Agreement.Revoked"


def test_sync_client_lists_agreements_across_pages(stack: Stack) -> None:
    partner = stack.new_partner("SDK paging partner")
    with Client(stack.base_url, partner["client_id"], partner["client_secret"]) as qp:
        made = [qp.create_agreement(stack.new_account(), "CNY", "10.00")["agreement_id"] for _ in range(5)]
        listed = [a["agreement_id"] for a in qp.list_agreements(page_size=2)]
        assert sorted(listed) == sorted(made) and len(listed) == 5
        assert listed == [a["agreement_id"] for a in qp.list_agreements(page_size=200)]  # same order, newest first
        qp.revoke_agreement(made[0])
        assert [a["agreement_id"] for a in qp.list_agreements(status="Revoked", page_size=1)] == [made[0]]
        with pytest.raises(ValueError):
            qp.list_agreements(page_size=1000)


async def test_async_client_against_the_stack(stack: Stack) -> None:
    partner = stack.new_partner("SDK async partner")
    settlement = partner["settlement_account"]
    customer = stack.new_customer(partner, shard=1, funding="500.00")  # already authorised
    async with AsyncClient(stack.base_url, partner["client_id"], partner["client_secret"]) as qp:
        agreement = await qp.create_agreement(
            customer["account"], "CNY", "50.00", periodic_limits=[{"period": "Month", "amount": "400.00"}]
        )
        assert agreement["status"] == "AwaitingAuthorisation"
        assert agreement["periodic_limits"][0]["period"] == "Month"
        authorise(stack, agreement["agreement_id"])
        assert (await qp.get_agreement(agreement["agreement_id"]))["status"] == "Authorised"

        payment = await qp.create_payment(agreement["agreement_id"], "40.00", "CNY", settlement, "async sdk")
        assert payment["status"] == "AcceptedSettlementCompleted"
        assert (await qp.get_payment(payment["payment_id"]))["amount"] == "40.00"

        results = await qp.create_payment_batch(
            [
                {
                    "agreement_id": customer["agreement_id"],
                    "amount": "2.00",
                    "currency": "CNY",
                    "creditor_account": settlement,
                    "reference": "async batch",
                },
                {
                    "agreement_id": customer["agreement_id"],
                    "amount": "999.00",
                    "currency": "CNY",
                    "creditor_account": settlement,
                    "reference": "over the per-payment limit",
                },
            ]
        )
        assert results[0]["status"] == 201 and results[0]["payment"]["status"] == "AcceptedSettlementCompleted"
        assert results[1]["payment"]["status"] == "Rejected"
        assert results[1]["payment"]["reasons"] == ["AGREEMENT_PER_PAYMENT_LIMIT"]

        part = await qp.create_refund(payment["payment_id"], amount="15.00")
        rest = await qp.create_refund(payment["payment_id"], reference="the rest")
        assert (part["amount"], rest["amount"], rest["reference"]) == ("15.00", "25.00", "the rest")
        assert (await qp.get_payment(payment["payment_id"]))["refunded_amount"] == "40.00"

        listed = [a["agreement_id"] async for a in qp.list_agreements(page_size=1)]
        assert sorted(listed) == sorted([agreement["agreement_id"], customer["agreement_id"]])
        transactions = [t async for t in qp.list_transactions(customer["account"], page_size=1)]
        # funding, the 40.00 payment, the accepted batch item, 2 refunds (a Rejected payment moved nothing)
        assert len(transactions) == len({t["transfer_id"] for t in transactions}) == 5
        assert results[1]["payment"]["payment_id"] not in {t["transfer_id"] for t in transactions}
        assert (await qp.get_balance(customer["account"]))["balance"] == "498.00"

        with pytest.raises(UnprocessableError) as currency:
            await qp.create_payment(customer["agreement_id"], "1.00", "EUR", settlement, "wrong currency")
        assert currency.value.code == "QP.Currency.Mismatch"
        with pytest.raises(NotFoundError) as missing:
            await qp.get_refund("ref_" + "0" * 32 + "_0")
        assert missing.value.status == 404


def test_bad_credentials_are_an_authentication_error(stack: Stack) -> None:
    with Client(stack.base_url, "ptn_nobody", "wrong-secret", max_retries=0) as qp:
        with pytest.raises(AuthenticationError) as refused:
            qp.get_balance("acc_x")
    assert (refused.value.status, refused.value.code) == (401, "invalid_client")


# ---- with httpx.MockTransport -----------------------------------------------------------
BASE = "https://qp.test"
PAYMENT = {"payment_id": "pay_" + "a" * 32 + "_0", "status": "AcceptedSettlementCompleted"}
Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def api_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        json={"code": code, "message": f"{code} happened", "errors": [{"code": code, "message": "m", "path": "$.x"}]},
        headers={"x-fapi-interaction-id": f"iid-{status}", **(headers or {})},
    )


class FakeApi:
    """A MockTransport handler: issues tokens itself (tok-1, tok-2, ...), answers every
    other request with the next scripted step, and records everything it saw."""

    def __init__(self, *steps: Step, expires_in: int = 300) -> None:
        self.steps = list(steps)
        self.expires_in = expires_in
        self.token_requests: list[httpx.Request] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            self.token_requests.append(request)
            return httpx.Response(
                200,
                json={
                    "access_token": f"tok-{len(self.token_requests)}",
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                },
            )
        self.requests.append(request)
        assert self.steps, f"unexpected request {request.method} {request.url}"
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step

    def keys(self) -> list[str | None]:
        return [r.headers.get("x-idempotency-key") for r in self.requests]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(api: FakeApi, sleeps: list[float], clock: FakeClock | None = None, **options: Any) -> Client:
    return Client(
        BASE,
        "ptn_test",
        "s3cret",
        transport=httpx.MockTransport(api),
        sleep=sleeps.append,
        clock=clock or FakeClock(),
        **options,
    )


def pay(qp: Client, **kwargs: Any) -> dict[str, Any]:
    return qp.create_payment("agr_1", "1.00", "CNY", "set_1", "ref", **kwargs)


def test_idempotency_key_is_reused_across_retries_and_fresh_per_call() -> None:
    api = FakeApi(
        api_error(503, "QP.Service.Unavailable"),
        api_error(503, "QP.Service.Unavailable"),
        httpx.Response(201, json=PAYMENT),
        httpx.Response(201, json=PAYMENT),
    )
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        assert pay(qp) == PAYMENT
        assert pay(qp) == PAYMENT
    keys = api.keys()
    assert keys[0] is not None and keys[0] == keys[1] == keys[2]  # one call, three attempts
    assert keys[3] is not None and keys[3] != keys[0]  # the next call
    assert uuid.UUID(keys[0]).version == 4
    assert len(sleeps) == 2
    # The request body is the same on every attempt too.
    assert api.requests[0].content == api.requests[2].content
    assert json.loads(api.requests[0].content) == {
        "agreement_id": "agr_1",
        "amount": "1.00",
        "currency": "CNY",
        "creditor_account": "set_1",
        "reference": "ref",
    }


def test_a_given_idempotency_key_is_sent_as_is() -> None:
    api = FakeApi(httpx.Response(201, json={"refund_id": "ref_1"}))
    with client(api, []) as qp:
        assert qp.create_refund("pay_1", amount="2.00", idempotency_key="mine-1") == {"refund_id": "ref_1"}
    assert api.keys() == ["mine-1"]
    assert api.requests[0].url.path == "/v1/quick-payments/pay_1/refunds"
    assert json.loads(api.requests[0].content) == {"amount": "2.00"}


def test_503_then_201_retries_once_with_jittered_backoff() -> None:
    api = FakeApi(api_error(503, "QP.Service.Unavailable"), httpx.Response(201, json=PAYMENT))
    sleeps: list[float] = []
    with client(api, sleeps, backoff_base_s=0.5) as qp:
        assert pay(qp)["payment_id"] == PAYMENT["payment_id"]
    assert len(api.requests) == 2
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 0.5  # full jitter on the first attempt: [0, base]


def test_429_with_retry_after_sleeps_what_the_server_says() -> None:
    api = FakeApi(api_error(429, "QP.RateLimited", {"Retry-After": "2"}), httpx.Response(201, json=PAYMENT))
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        assert pay(qp) == PAYMENT
    assert sleeps == [2.0]
    assert api.keys()[0] == api.keys()[1]


def test_retry_after_beyond_the_backoff_bound_raises_at_once() -> None:
    api = FakeApi(api_error(429, "QP.RateLimited", {"Retry-After": "120"}))
    sleeps: list[float] = []
    with client(api, sleeps, backoff_max_s=10.0) as qp:
        with pytest.raises(RateLimitError) as limited:
            pay(qp)
    assert limited.value.retry_after_s == 120.0
    assert sleeps == [] and len(api.requests) == 1


def test_409_in_flight_is_retried_but_other_conflicts_are_not() -> None:
    api = FakeApi(
        api_error(409, "QP.Idempotency.InFlight"),
        httpx.Response(201, json=PAYMENT),
        api_error(409, "QP.Agreement.InvalidTransition"),
    )
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        assert pay(qp) == PAYMENT
        assert len(sleeps) == 1
        with pytest.raises(ConflictError) as conflict:
            qp.revoke_agreement("agr_1")
    assert conflict.value.code == "QP.Agreement.InvalidTransition"
    assert len(sleeps) == 1 and len(api.requests) == 3


def test_422_is_not_retried_and_is_typed() -> None:
    api = FakeApi(api_error(422, "QP.Idempotency.Mismatch"))
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        with pytest.raises(UnprocessableError) as refused:
            pay(qp, idempotency_key="k-1")
    error = refused.value
    assert (error.status, error.code, error.interaction_id, error.idempotency_key) == (
        422,
        "QP.Idempotency.Mismatch",
        "iid-422",
        "k-1",
    )
    assert error.errors == [{"code": "QP.Idempotency.Mismatch", "message": "m", "path": "$.x"}]
    assert error.body["code"] == "QP.Idempotency.Mismatch"
    assert len(api.requests) == 1 and sleeps == []


def test_max_retries_exhausted_raises_server_error() -> None:
    api = FakeApi(*[api_error(503, "QP.Service.Unavailable", {"Retry-After": "1"}) for _ in range(3)])
    sleeps: list[float] = []
    with client(api, sleeps, max_retries=2) as qp:
        with pytest.raises(ServerError) as failed:
            pay(qp)
    assert failed.value.status == 503 and failed.value.retry_after_s == 1.0
    assert len(api.requests) == 3 and sleeps == [1.0, 1.0]
    assert failed.value.idempotency_key == api.keys()[0]  # retry later by hand, still exactly once


def test_backoff_grows_and_is_capped() -> None:
    api = FakeApi(*[api_error(503, "QP.Service.Unavailable") for _ in range(6)])
    sleeps: list[float] = []
    with client(api, sleeps, max_retries=5, backoff_base_s=1.0, backoff_max_s=3.0) as qp:
        with pytest.raises(ServerError):
            qp.get_payment("pay_1")
    assert len(sleeps) == 5
    assert all(0.0 <= s <= min(3.0, 2.0**i) for i, s in enumerate(sleeps))


def test_connection_errors_are_retried_for_payments_but_not_for_agreements() -> None:
    api = FakeApi(
        httpx.ReadTimeout("slow"),
        httpx.Response(201, json=PAYMENT),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.Response(201, json={"a": 1}),
    )
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        assert pay(qp) == PAYMENT
        assert api.keys()[0] == api.keys()[1]
        # POST /v1/agreements has no idempotency key: a timeout (it may have been created) is not retried...
        with pytest.raises(APIConnectionError) as lost:
            qp.create_agreement("acc_1", "CNY", "10.00")
        assert lost.value.status == 0 and isinstance(lost.value.__cause__, httpx.ReadTimeout)
        # ...but a connection that never opened is.
        assert qp.create_agreement("acc_1", "CNY", "10.00") == {"a": 1}
    assert len(sleeps) == 2 and len(api.requests) == 5


def test_token_is_renewed_once_on_401_invalid_token() -> None:
    api = FakeApi(
        api_error(401, "QP.Auth.InvalidToken"),
        httpx.Response(200, json={"balance": "1.00"}),
        api_error(401, "QP.Auth.InvalidToken"),
        api_error(401, "QP.Auth.InvalidToken"),
    )
    sleeps: list[float] = []
    with client(api, sleeps) as qp:
        assert qp.get_balance("acc_1") == {"balance": "1.00"}
        assert [r.headers["authorization"] for r in api.requests] == ["Bearer tok-1", "Bearer tok-2"]
        with pytest.raises(AuthenticationError) as refused:  # renewed once, refused again: give up
            qp.get_balance("acc_1")
    assert refused.value.code == "QP.Auth.InvalidToken"
    assert len(api.token_requests) == 3 and sleeps == []


def test_token_is_reused_until_shortly_before_it_expires() -> None:
    api = FakeApi(*[httpx.Response(200, json={"ok": i}) for i in range(4)], expires_in=100)
    clock = FakeClock()
    with client(api, [], clock) as qp:
        qp.get_payment("pay_1")
        clock.now += 50
        qp.get_payment("pay_1")
        assert len(api.token_requests) == 1
        clock.now += 45  # 95 s of a 100 s token: inside the renewal margin (10% of its life)
        qp.get_payment("pay_1")
        assert len(api.token_requests) == 2
        qp.get_payment("pay_1")
    assert len(api.token_requests) == 2
    assert [r.headers["authorization"] for r in api.requests] == ["Bearer tok-1"] * 2 + ["Bearer tok-2"] * 2
    token_request = api.token_requests[0]
    assert token_request.method == "POST" and token_request.content == b"grant_type=client_credentials"
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert token_request.headers["authorization"] == "Basic cHRuX3Rlc3Q6czNjcmV0"  # ptn_test:s3cret


def test_token_endpoint_is_retried_on_503() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            calls.append(1)
            if len(calls) == 1:
                return api_error(503, "QP.Service.Unavailable")
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        assert request.headers["authorization"] == "Bearer t"
        return httpx.Response(200, json={"ok": True})

    sleeps: list[float] = []
    with Client(BASE, "ptn_test", "s3cret", transport=httpx.MockTransport(handler), sleep=sleeps.append) as qp:
        assert qp.get_balance("acc_1") == {"ok": True}
    assert len(calls) == 2 and len(sleeps) == 1


def test_events_iterator_follows_next_cursor_through_short_pages() -> None:
    api = FakeApi(
        httpx.Response(200, json={"events": [{"id": "e1"}, {"id": "e2"}], "next_cursor": "c1"}),
        httpx.Response(200, json={"events": [], "next_cursor": "c2"}),
        httpx.Response(200, json={"events": [{"id": "e3"}], "next_cursor": None}),
    )
    with client(api, []) as qp:
        events = list(qp.list_events(after="c0", type="payment.completed", page_size=2))
    assert [e["id"] for e in events] == ["e1", "e2", "e3"]
    params = [dict(r.url.params) for r in api.requests]
    assert params == [{"limit": "2", "type": "payment.completed", "after": after} for after in ("c0", "c1", "c2")]
    assert all(r.url.path == "/v1/events" for r in api.requests)


def test_transactions_iterator_follows_next_cursor() -> None:
    api = FakeApi(
        httpx.Response(200, json={"transactions": [{"transfer_id": "t1"}], "next_cursor": "x1"}),
        httpx.Response(200, json={"transactions": [{"transfer_id": "t2"}], "next_cursor": None}),
    )
    with client(api, []) as qp:
        assert [t["transfer_id"] for t in qp.list_transactions("acc_1", page_size=1)] == ["t1", "t2"]
    assert [dict(r.url.params) for r in api.requests] == [{"limit": "1"}, {"limit": "1", "cursor": "x1"}]
    assert api.requests[0].url.path == "/v1/accounts/acc_1/transactions"


def test_a_cursor_that_does_not_move_stops_the_iterator() -> None:
    page = httpx.Response(200, json={"events": [{"id": "e1"}], "next_cursor": "same"})
    api = FakeApi(page, httpx.Response(200, json={"events": [{"id": "e1"}], "next_cursor": "same"}))
    with client(api, []) as qp:
        with pytest.raises(QuickpayError) as loop:
            list(qp.list_events())
    assert loop.value.code == "QP.Client.CursorLoop" and len(api.requests) == 2


def test_download_reconciliation_returns_the_text() -> None:
    csv_text = "payment_id,amount,currency\npay_1,1.00,CNY\n"
    api = FakeApi(
        httpx.Response(200, text=csv_text, headers={"content-type": "text/csv"}), httpx.Response(200, text="final\n")
    )
    with client(api, []) as qp:
        assert qp.download_reconciliation(datetime.date(2026, 1, 31), provisional=True) == csv_text
        assert qp.download_reconciliation("2026-01-30") == "final\n"
        with pytest.raises(ValueError):
            qp.download_reconciliation("2026-02-30")
        with pytest.raises(ValueError):
            qp.download_reconciliation("31/01/2026")
    assert api.requests[0].url.path == "/v1/reconciliation-files/2026-01-31"
    assert dict(api.requests[0].url.params) == {"provisional": "true"}
    assert api.requests[0].headers["accept"] == "text/csv"
    assert api.requests[1].url.path == "/v1/reconciliation-files/2026-01-30"
    assert dict(api.requests[1].url.params) == {}


def test_batch_items_get_keys_that_survive_a_retry() -> None:
    results = {"results": [{"status": 201, "payment": PAYMENT, "replayed": False}]}
    api = FakeApi(api_error(503, "QP.Service.Unavailable"), httpx.Response(200, json=results))
    sleeps: list[float] = []
    items: list[dict[str, Any]] = [
        {"agreement_id": "agr_1", "amount": "1.00", "currency": "CNY", "creditor_account": "set_1", "reference": "b"}
    ]
    with client(api, sleeps) as qp:
        assert qp.create_payment_batch(items) == results["results"]
    sent = [json.loads(r.content)["payments"][0]["idempotency_key"] for r in api.requests]
    assert sent[0] == sent[1] == items[0]["idempotency_key"]
    assert api.requests[0].url.path == "/v1/quick-payments/batch" and len(sleeps) == 1


def test_client_side_bounds() -> None:
    with pytest.raises(ValueError):
        Client(BASE, "ptn", "s", max_retries=100)
    with pytest.raises(ValueError):
        Client(BASE, "ptn", "s", backoff_base_s=5.0, backoff_max_s=1.0)
    with client(FakeApi(), []) as qp:
        with pytest.raises(ValueError):
            qp.create_payment_batch([])
        with pytest.raises(TypeError):
            qp.create_payment("agr_1", 1.5, "CNY", "set_1", "float")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            qp.list_transactions("acc_1", page_size=0)


def test_ids_are_one_path_segment() -> None:
    api = FakeApi(httpx.Response(200, json={}))
    with client(api, []) as qp:
        qp.get_payment("../admin/v1/partners")
    assert api.requests[0].url.raw_path == b"/v1/quick-payments/..%2Fadmin%2Fv1%2Fpartners"


async def test_async_client_retries_with_the_same_key_and_pages() -> None:
    api = FakeApi(
        api_error(503, "QP.Service.Unavailable"),
        httpx.Response(201, json=PAYMENT),
        api_error(429, "QP.RateLimited", {"Retry-After": "2"}),
        httpx.Response(200, json={"events": [{"id": "e1"}], "next_cursor": "c1"}),
        httpx.Response(200, json={"events": [{"id": "e2"}], "next_cursor": None}),
        api_error(422, "QP.Refund.ExceedsPayment"),
    )
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(
        BASE, "ptn_test", "s3cret", transport=httpx.MockTransport(api), sleep=fake_sleep, clock=FakeClock()
    ) as qp:
        assert await qp.create_payment("agr_1", "1.00", "CNY", "set_1", "ref") == PAYMENT
        assert [e["id"] async for e in qp.list_events()] == ["e1", "e2"]
        with pytest.raises(UnprocessableError):
            await qp.create_refund("pay_1")
    keys = api.keys()
    assert keys[0] is not None and keys[0] == keys[1]
    assert len(sleeps) == 2 and sleeps[1] == 2.0
    assert len(api.token_requests) == 1


# ---- webhooks ---------------------------------------------------------------------------
EVENT = {"id": "evt_1", "type": "payment.completed", "data": {"payment_id": "pay_1"}}
BODY = json.dumps(EVENT).encode()
NOW = 1_800_000_000


def test_webhook_valid_signature_is_accepted() -> None:
    header = sign_webhook(BODY, "whsec_a", NOW)
    assert header == f"t={NOW},v1={compute_signature(BODY, 'whsec_a', NOW)}"
    assert verify_webhook(BODY, header, ["whsec_a"], now_s=NOW + 299) == EVENT
    assert verify_webhook(BODY, header, ["whsec_a"], now_s=NOW - 299) == EVENT


@pytest.mark.parametrize(
    "body, secrets, now",
    [
        (BODY.replace(b"pay_1", b"pay_2"), ["whsec_a"], NOW),  # tampered body
        (BODY, ["whsec_b"], NOW),  # wrong secret
        (BODY, ["whsec_a"], NOW + 301),  # expired
        (BODY, ["whsec_a"], NOW - 301),  # from the future
    ],
    ids=["tampered", "wrong-secret", "expired", "future"],
)
def test_webhook_refusals(body: bytes, secrets: list[str], now: int) -> None:
    header = sign_webhook(BODY, "whsec_a", NOW)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, header, secrets, now_s=now)


def test_webhook_secret_rotation() -> None:
    both = sign_webhook(BODY, ["whsec_old", "whsec_new"], NOW)
    assert both.count("v1=") == 2
    # A partner still on the old secret, one already on the new, one holding both.
    for secrets in (["whsec_old"], ["whsec_new"], ["whsec_new", "whsec_old"]):
        assert verify_webhook(BODY, both, secrets, now_s=NOW) == EVENT
    # A single-signature header checked against two held secrets.
    assert verify_webhook(BODY, sign_webhook(BODY, "whsec_old", NOW), ["whsec_new", "whsec_old"], now_s=NOW) == EVENT
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, both, ["whsec_other"], now_s=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=,v1=abc",
        f"v1={'0' * 64}",
        f"t={NOW}",
        f"t={NOW},t={NOW},v1={'0' * 64}",
        f"t=-{NOW},v1={'0' * 64}",
        f"t=１２３,v1={'0' * 64}",
        f"t={NOW},v1=xyz",
        f"t={NOW},v1={'é' * 64}",
        f"t={NOW},v1",
        "t=" + "9" * 40 + ",v1=" + "0" * 64,
        f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 20),
        "x" * 5000,
    ],
)
def test_webhook_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, header, ["whsec_a"], now_s=NOW)


def test_webhook_other_refusals() -> None:
    not_json = b"not json"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(not_json, sign_webhook(not_json, "whsec_a", NOW), ["whsec_a"], now_s=NOW)
    array = b"[1, 2]"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(array, sign_webhook(array, "whsec_a", NOW), ["whsec_a"], now_s=NOW)
    with pytest.raises(TypeError):
        verify_webhook(BODY, sign_webhook(BODY, "whsec_a", NOW), "whsec_a", now_s=NOW)
    with pytest.raises(ValueError):
        verify_webhook(BODY, sign_webhook(BODY, "whsec_a", NOW), [], now_s=NOW)
    # An unknown scheme next to a valid v1 is ignored; uppercase hex is accepted.
    header = sign_webhook(BODY, "whsec_a", NOW).upper().replace("T=", "t=").replace("V1=", "v1=") + ",v0=abc"
    assert verify_webhook(BODY, header, ["whsec_a"], now_s=NOW) == EVENT


def test_webhooks_module_imports_without_httpx() -> None:
    """The server imports sign_webhook: quickpay_sdk.webhooks must not pull in the HTTP client."""
    code = (
        "import sys; import quickpay_sdk.webhooks as w; import quickpay_sdk; "
        "assert 'httpx' not in sys.modules, 'httpx imported'; print(w.sign_webhook(b'{}', 's', 1))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"t=1,v1={compute_signature(b'{}', 's', 1)}"
