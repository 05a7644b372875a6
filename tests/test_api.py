"""The HTTP API of a real stack behaves as documented: every endpoint answers with the
documented shape (tokens by Basic and form, agreements, same- and cross-shard
quick-payments, payment reads, balances, cursor-paginated transactions newest first,
admin partners/accounts/fundings, health, an OpenAPI document that validates and lists
every registered route); partners see only their own resources; the interaction id is
echoed or generated; and every class of bad input gets the right 4xx with the one error
shape, never a 5xx, and writes nothing."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
import pytest
from conftest import Reply, Stack, http
from openapi_spec_validator import validate

from kernel.ids import payment_id_for, shard_of

COMPLETED = "AcceptedSettlementCompleted"
IN_PROCESS = "AcceptedSettlementInProcess"


def assert_error(
    reply: Reply, status: int, code: str | None = None, *, path: str | None = None, field_errors: bool = False
) -> None:
    assert reply.status == status, (reply.status, reply.body)
    body = reply.body
    assert isinstance(body, dict) and set(body) == {"code", "message", "errors"}, body
    assert isinstance(body["code"], str) and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], list)
    for item in body["errors"]:
        assert set(item) == {"code", "message", "path"} and all(isinstance(v, str) for v in item.values())
    if code is not None:
        assert body["code"] == code, body
    if field_errors or path is not None:
        assert body["errors"], body
    if path is not None:
        assert body["errors"][0]["path"] == path, body
    assert reply.headers.get("content-type", "").startswith("application/json")


def wait_status(
    stack: Stack, partner: dict[str, Any], payment_id: str, status: str, timeout_s: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = stack.call("GET", f"/v1/quick-payments/{payment_id}", token=partner["token"])
        assert reply.status == 200, reply.body
        if reply.body["status"] == status or time.monotonic() > deadline:
            return dict(reply.body)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def other(stack: Stack) -> dict[str, Any]:
    """A second partner, for visibility checks."""
    return stack.new_partner("Other Partner")


# ---- health and docs ------------------------------------------------------------------------
def test_healthz_and_readyz(stack: Stack) -> None:
    reply = stack.call("GET", "/healthz")
    assert reply.status == 200 and reply.body == {"status": "ok"}
    reply = stack.call("GET", "/readyz")
    assert reply.status == 200 and reply.body == {"status": "ready"}  # the state, nothing internal
    health = stack.admin("GET", "/admin/v1/health")
    assert health.status == 200 and health.body["status"] == "ready" and health.body["reasons"] == []
    assert [(s["shard"], s["ready"]) for s in health.body["shards"]] == [(0, True), (1, True)]
    assert stack.call("GET", "/admin/v1/health").status == 401


def test_unknown_route_and_wrong_method_use_the_error_shape(stack: Stack) -> None:
    assert_error(stack.call("GET", "/v1/nope"), 404, "QP.Resource.NotFound")
    assert_error(stack.call("DELETE", "/v1/quick-payments"), 405, "QP.Method.NotAllowed")


def test_openapi_validates_and_lists_every_route(stack: Stack) -> None:
    reply = stack.call("GET", "/openapi.json")
    assert reply.status == 200
    document = reply.body
    validate(document)
    from gateway.app import GatewayConfig, create_app

    app = create_app(GatewayConfig(shard_addresses=["unix:/nonexistent"], token_key=b"k" * 32, admin_token="x"))
    # HTML pages for a browser are not API: the customer's consent page and portal
    # (gateway/web/) and the operator console (gateway/console/); the document lists their admin API only.
    registered = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.method != "HEAD" and not r.resource.canonical.startswith(("/consent/", "/portal", "/console"))
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert registered == documented
    # every error response refers to the one error shape (/readyz's 503 is its readiness report)
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }, (path, method, status)


# ---- tokens ------------------------------------------------------------------------------------
def test_token_by_basic_and_by_form_fields(stack: Stack, partner: dict[str, Any]) -> None:
    basic = base64.b64encode(f"{partner['client_id']}:{partner['client_secret']}".encode()).decode()
    by_basic = http(
        "POST",
        stack.url("/oauth2/token"),
        raw=b"grant_type=client_credentials",
        headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
    )
    form = (
        f"grant_type=client_credentials&client_id={partner['client_id']}&client_secret={partner['client_secret']}"
    ).encode()
    by_form = http(
        "POST", stack.url("/oauth2/token"), raw=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    by_json = stack.call(
        "POST",
        "/oauth2/token",
        {
            "grant_type": "client_credentials",
            "client_id": partner["client_id"],
            "client_secret": partner["client_secret"],
        },
    )
    for reply in (by_basic, by_form, by_json):
        assert reply.status == 200, reply.body
        assert reply.body["token_type"] == "Bearer" and reply.body["expires_in"] == 3600
        assert reply.headers.get("cache-control") == "no-store"
        claims = jwt.decode(reply.body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == partner["partner_id"]
        # the token works
        ok = stack.call(
            "GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=reply.body["access_token"]
        )
        assert ok.status == 200


@pytest.mark.parametrize(
    "case",
    ["wrong_secret", "unknown_client", "bad_grant", "no_grant", "malformed_basic", "no_credentials", "json_array"],
)
def test_token_refusals(stack: Stack, partner: dict[str, Any], case: str) -> None:
    form_headers = {"content-type": "application/x-www-form-urlencoded"}
    if case == "wrong_secret":
        reply = http(
            "POST",
            stack.url("/oauth2/token"),
            headers=form_headers,
            raw=f"grant_type=client_credentials&client_id={partner['client_id']}&client_secret=nope".encode(),
        )
        assert_error(reply, 401, "invalid_client")
    elif case == "unknown_client":
        reply = http(
            "POST",
            stack.url("/oauth2/token"),
            headers=form_headers,
            raw=b"grant_type=client_credentials&client_id=ptn_0000&client_secret=x",
        )
        assert_error(reply, 401, "invalid_client")
    elif case == "bad_grant":
        reply = http("POST", stack.url("/oauth2/token"), headers=form_headers, raw=b"grant_type=password")
        assert_error(reply, 400, "unsupported_grant_type", path="grant_type")
    elif case == "no_grant":
        reply = stack.call("POST", "/oauth2/token", {})
        assert_error(reply, 400, "unsupported_grant_type")
    elif case == "malformed_basic":
        reply = http(
            "POST",
            stack.url("/oauth2/token"),
            raw=b"grant_type=client_credentials",
            headers={**form_headers, "authorization": "Basic %%%not-base64"},
        )
        assert_error(reply, 401, "invalid_client")
    elif case == "no_credentials":
        reply = http("POST", stack.url("/oauth2/token"), headers=form_headers, raw=b"grant_type=client_credentials")
        assert_error(reply, 401, "invalid_client")
    elif case == "json_array":
        reply = http("POST", stack.url("/oauth2/token"), raw=b"[1, 2]")
        assert_error(reply, 400, "invalid_request")


# ---- agreements -------------------------------------------------------------------------------
def test_agreement_create_and_get(stack: Stack, partner: dict[str, Any], other: dict[str, Any]) -> None:
    account = stack.new_account()
    reply = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "100.00", "daily_limit": "250.5"},
        token=partner["token"],
    )
    assert reply.status == 201, reply.body
    agreement = reply.body
    assert agreement["agreement_id"].startswith("agr_")
    assert shard_of(agreement["agreement_id"], 2) == shard_of(account, 2)
    assert agreement["partner_id"] == partner["partner_id"] and agreement["debtor_account"] == account
    assert agreement["status"] == "AwaitingAuthorisation" and agreement["currency"] == "CNY"
    assert agreement["per_payment_limit"] == "100.00" and agreement["daily_limit"] == "250.50"
    assert [(p["period"], p["alignment"], p["amount"], p["remaining"]) for p in agreement["periodic_limits"]] == [
        ("Day", "Calendar", "250.50", "250.50")
    ]
    got = stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=partner["token"])
    assert got.status == 200
    history = got.body.pop("status_history")
    assert got.body == agreement
    assert [(h["from"], h["to"], h["by"]) for h in history] == [(None, "AwaitingAuthorisation", "partner")]
    assert_error(
        stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=other["token"]),
        404,
        "QP.Agreement.NotFound",
    )
    assert_error(
        stack.call("GET", "/v1/agreements/agr_nonexistent", token=partner["token"]), 404, "QP.Agreement.NotFound"
    )


@pytest.mark.parametrize(
    "case",
    [
        "unknown_account",
        "settlement_account",
        "currency_mismatch",
        "bad_limit",
        "zero_limit",
        "missing_field",
        "malformed",
    ],
)
def test_agreement_bad_input(stack: Stack, partner: dict[str, Any], case: str) -> None:
    account = stack.demo["accounts"][0]
    body: Any = {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00", "daily_limit": "2.00"}
    expected: tuple[int, str] = (400, "QP.Field.Invalid")
    raw = None
    if case == "unknown_account":
        body["debtor_account"] = "acc_doesnotexist00"
        expected = (422, "QP.Account.NotFound")
    elif case == "settlement_account":
        body["debtor_account"] = partner["settlement_account"]
        expected = (422, "QP.Account.NotFound")
    elif case == "currency_mismatch":
        body["currency"] = "USD"
        expected = (422, "QP.Currency.Mismatch")
    elif case == "bad_limit":
        body["per_payment_limit"] = "1.001"
        expected = (400, "QP.Amount.TooManyDecimals")
    elif case == "zero_limit":
        body["daily_limit"] = "0"
        expected = (400, "QP.Amount.NotPositive")
    elif case == "missing_field":
        del body["per_payment_limit"]
        expected = (400, "QP.Field.Missing")
    elif case == "malformed":
        raw = b"{not json"
        expected = (400, "QP.Body.MalformedJSON")
    reply = http("POST", stack.url("/v1/agreements"), body, raw=raw, token=partner["token"])
    assert_error(reply, *expected, field_errors=True)


# ---- quick-payments ----------------------------------------------------------------------
def test_same_shard_payment_to_settlement_completes(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="100.00")
    settlement_before = stack.call(
        "GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"]
    ).body["balance"]
    reply = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "12.34", reference="coffee")
    assert reply.status == 201, reply.body
    payment = reply.body
    assert payment["status"] == COMPLETED and payment["amount"] == "12.34" and payment["currency"] == "CNY"
    assert payment["debtor_account"] == customer["account"]
    assert payment["creditor_account"] == partner["settlement_account"]
    assert payment["reference"] == "coffee" and payment["reasons"] == []
    assert payment["payment_id"].startswith("pay_") and payment["payment_id"].endswith("_0")
    assert payment["created_at"].endswith("Z")
    assert stack.balance(customer["account"]) == "87.66"
    settlement = stack.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"]).body
    assert settlement["stripes"] == 2 and settlement["kind"] == "settlement"
    assert float(settlement["balance"]) * 100 - float(settlement_before) * 100 == pytest.approx(1234)
    got = stack.call("GET", f"/v1/quick-payments/{payment['payment_id']}", token=partner["token"])
    assert got.status == 200 and got.body == payment


def test_same_shard_customer_to_customer(stack: Stack, partner: dict[str, Any]) -> None:
    debtor = stack.new_customer(partner, shard=1, funding="50.00")
    creditor = stack.new_account(shard=1)
    reply = stack.pay(partner, debtor["agreement_id"], creditor, "50")
    assert reply.status == 201 and reply.body["status"] == COMPLETED
    assert stack.balance(debtor["account"]) == "0.00" and stack.balance(creditor) == "50.00"


def test_cross_shard_payment_settles(stack: Stack, partner: dict[str, Any]) -> None:
    debtor = stack.new_customer(partner, shard=0, funding="100.00")
    creditor = stack.new_account(shard=1)
    reply = stack.pay(partner, debtor["agreement_id"], creditor, "40.00")
    assert reply.status == 201, reply.body
    assert reply.body["status"] == IN_PROCESS
    assert reply.body["creditor_account"] == creditor
    assert stack.balance(debtor["account"]) == "60.00"
    final = wait_status(stack, partner, reply.body["payment_id"], COMPLETED)
    assert final["status"] == COMPLETED
    assert stack.balance(creditor) == "40.00"


def test_rejections_are_201_with_reasons(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="10.00", per_payment="5.00", daily="8.00")
    target = partner["settlement_account"]
    cases = [
        ("10.00", "AGREEMENT_PER_PAYMENT_LIMIT"),
        ("5.00", None),
        ("3.01", "AGREEMENT_PERIODIC_LIMIT"),
        ("3.00", None),
        ("0.01", "AGREEMENT_PERIODIC_LIMIT"),
    ]
    for amount, reason in cases:
        reply = stack.pay(partner, customer["agreement_id"], target, amount)
        assert reply.status == 201, reply.body
        if reason is None:
            assert reply.body["status"] == COMPLETED and reply.body["reasons"] == []
        else:
            assert reply.body["status"] == "Rejected" and reply.body["reasons"] == [reason]
    assert stack.balance(customer["account"]) == "2.00"
    poor = stack.new_customer(partner, shard=1, funding="1.00")
    reply = stack.pay(partner, poor["agreement_id"], target, "1.01")
    assert reply.body["status"] == "Rejected" and reply.body["reasons"] == ["INSUFFICIENT_FUNDS"]
    assert stack.balance(poor["account"]) == "1.00"


def test_get_payment_not_found_cases(stack: Stack, partner: dict[str, Any]) -> None:
    for pid in ("pay_nonsense", "pay_" + "0" * 32 + "_0", "pay_" + "0" * 32 + "_9", "x"):
        assert_error(stack.call("GET", f"/v1/quick-payments/{pid}", token=partner["token"]), 404, "QP.Payment.NotFound")
    # a funding transfer id is not a payment
    account = stack.new_account(shard=0)
    funding = stack.fund(account, "1.00").body
    assert_error(
        stack.call("GET", f"/v1/quick-payments/{funding['transfer_id']}", token=partner["token"]),
        404,
        "QP.Payment.NotFound",
    )


# ---- balances and transactions --------------------------------------------------------------
def test_balance_visibility(stack: Stack, partner: dict[str, Any], other: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="7.00")
    mine = stack.call("GET", f"/v1/accounts/{customer['account']}/balance", token=partner["token"])
    assert mine.status == 200
    assert mine.body == {
        "account_id": customer["account"],
        "kind": "customer",
        "currency": "CNY",
        "balance": "7.00",
        "stripes": 1,
    }
    for account in (customer["account"], partner["settlement_account"], "acc_unknown", "sys_clearing", "sys_funding"):
        assert_error(
            stack.call("GET", f"/v1/accounts/{account}/balance", token=other["token"]), 404, "QP.Account.NotFound"
        )
        assert_error(
            stack.call("GET", f"/v1/accounts/{account}/transactions", token=other["token"]), 404, "QP.Account.NotFound"
        )
    # an account with no agreement of this partner is invisible even though it exists
    bare = stack.new_account()
    assert_error(stack.call("GET", f"/v1/accounts/{bare}/balance", token=partner["token"]), 404)


def test_foreign_payment_and_agreement_are_invisible(
    stack: Stack, partner: dict[str, Any], other: dict[str, Any]
) -> None:
    customer = stack.new_customer(partner, shard=1, funding="5.00")
    payment = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00").body
    assert_error(
        stack.call("GET", f"/v1/quick-payments/{payment['payment_id']}", token=other["token"]),
        404,
        "QP.Payment.NotFound",
    )
    assert_error(
        stack.call("GET", f"/v1/agreements/{customer['agreement_id']}", token=other["token"]),
        404,
        "QP.Agreement.NotFound",
    )
    # and the other partner cannot pay with it
    reply = stack.pay(other, customer["agreement_id"], other["settlement_account"], "1.00")
    assert_error(reply, 404, "QP.Agreement.NotFound", path="$.agreement_id")
    assert stack.balance(customer["account"]) == "4.00"


def test_transactions_paginate_newest_first(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="100.00")
    same = stack.new_account(shard=0)
    cross = stack.new_account(shard=1)
    amounts = ["1.01", "1.02", "1.03", "1.04", "1.05", "1.06", "1.07"]
    ids = []
    for i, amount in enumerate(amounts):
        creditor = cross if i % 3 == 2 else (same if i % 2 else partner["settlement_account"])
        reply = stack.pay(partner, customer["agreement_id"], creditor, amount)
        assert reply.status == 201 and reply.body["status"] != "Rejected"
        ids.append(reply.body["payment_id"])
    # a rejected payment is not a money movement and must not be listed
    rejected = stack.pay(partner, customer["agreement_id"], same, "499.00")
    assert rejected.body["status"] == "Rejected"
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        reply = stack.call("GET", f"/v1/accounts/{customer['account']}/transactions{query}", token=partner["token"])
        assert reply.status == 200, reply.body
        assert len(reply.body["transactions"]) <= 3
        seen.extend(reply.body["transactions"])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            break
    assert cursor is None
    transfer_ids = [t["transfer_id"] for t in seen]
    assert len(transfer_ids) == len(set(transfer_ids)) == len(amounts) + 1  # payments + the funding
    assert transfer_ids[: len(ids)] == list(reversed(ids))  # newest first
    assert rejected.body["payment_id"] not in transfer_ids
    assert seen[-1]["kind"] == "funding" and seen[-1]["direction"] == "credit"
    assert seen[-1]["amount"] == "100.00"
    assert all(t["direction"] == "debit" and t["kind"] == "payment" for t in seen[:-1])
    assert [t["amount"] for t in seen[:-1]] == list(reversed(amounts))
    created = [t["created_at"] for t in seen]
    assert created == sorted(created, reverse=True)
    # the cross-shard creditor sees the credit leg
    credit = stack.call("GET", f"/admin/v1/accounts/{cross}/balance", token=stack.admin_token)
    assert credit.status == 200


@pytest.mark.parametrize(
    "query, code",
    [
        ("?limit=0", "QP.Query.Invalid"),
        ("?limit=201", "QP.Query.Invalid"),
        ("?limit=abc", "QP.Query.Invalid"),
        ("?cursor=!!!", "QP.Cursor.Invalid"),
        ("?cursor=eyI1IjogMX0", "QP.Cursor.Invalid"),
    ],
)  # {"5": 1}
def test_transactions_bad_query(stack: Stack, partner: dict[str, Any], query: str, code: str) -> None:
    reply = stack.call(
        "GET", f"/v1/accounts/{partner['settlement_account']}/transactions{query}", token=partner["token"]
    )
    assert_error(reply, 400, code, field_errors=True)


def test_settlement_transactions_merge_stripes(stack: Stack) -> None:
    fresh = stack.new_partner("Stripes")
    a = stack.new_customer(fresh, shard=0, funding="10.00")
    b = stack.new_customer(fresh, shard=1, funding="10.00")
    ids = []
    for customer in (a, b, a, b):
        ids.append(stack.pay(fresh, customer["agreement_id"], fresh["settlement_account"], "1.00").body["payment_id"])
    reply = stack.call("GET", f"/v1/accounts/{fresh['settlement_account']}/transactions?limit=3", token=fresh["token"])
    page1 = reply.body
    reply = stack.call(
        "GET",
        f"/v1/accounts/{fresh['settlement_account']}/transactions?limit=3&cursor={page1['next_cursor']}",
        token=fresh["token"],
    )
    page2 = reply.body
    listed = [t["transfer_id"] for t in page1["transactions"] + page2["transactions"]]
    assert listed == list(reversed(ids)) and page2["next_cursor"] is None
    assert all(t["direction"] == "credit" for t in page1["transactions"])
    balance = stack.call("GET", f"/v1/accounts/{fresh['settlement_account']}/balance", token=fresh["token"])
    assert balance.body["balance"] == "4.00" and balance.body["stripes"] == 2


# ---- admin --------------------------------------------------------------------------------------
def test_admin_partner_account_funding(stack: Stack, partner: dict[str, Any]) -> None:
    created = stack.admin("POST", "/admin/v1/partners", {"name": "Admin Made"})
    assert created.status == 201
    assert set(created.body) >= {"partner_id", "client_id", "client_secret", "settlement_account"}
    assert created.body["settlement_account"] == "set_" + created.body["partner_id"]
    account = stack.admin("POST", "/admin/v1/accounts", {"currency": "CNY"})
    assert account.status == 201 and account.body["balance"] == "0.00"
    default = stack.admin("POST", "/admin/v1/accounts")  # empty body: CNY by default
    assert default.status == 201 and default.body["currency"] == "CNY"
    account_id = account.body["account_id"]
    key = "fund-" + uuid.uuid4().hex
    first = stack.admin(
        "POST",
        f"/admin/v1/accounts/{account_id}/fundings",
        {"amount": "25.50", "currency": "CNY"},
        headers={"x-idempotency-key": key},
    )
    again = stack.admin(
        "POST",
        f"/admin/v1/accounts/{account_id}/fundings",
        {"amount": "25.50", "currency": "CNY"},
        headers={"x-idempotency-key": key},
    )
    assert first.status == again.status == 201
    assert first.body["transfer_id"] == again.body["transfer_id"]
    assert first.body["kind"] == "funding" and first.body["status"] == COMPLETED
    assert stack.balance(account_id) == "25.50"
    mismatch = stack.admin(
        "POST",
        f"/admin/v1/accounts/{account_id}/fundings",
        {"amount": "1.00", "currency": "CNY"},
        headers={"x-idempotency-key": key},
    )
    assert_error(mismatch, 422, "QP.Idempotency.Mismatch")
    assert stack.balance(account_id) == "25.50"
    admin_balance = stack.admin("GET", f"/admin/v1/accounts/{partner['settlement_account']}/balance")
    assert admin_balance.status == 200 and admin_balance.body["stripes"] == 2


@pytest.mark.parametrize("case", ["no_token", "partner_token", "wrong_token"])
def test_admin_requires_admin_token(stack: Stack, partner: dict[str, Any], case: str) -> None:
    token = {"no_token": None, "partner_token": partner["token"], "wrong_token": "x" * 48}[case]
    for method, path, body in [
        ("POST", "/admin/v1/partners", {"name": "x"}),
        ("POST", "/admin/v1/accounts", {}),
        ("GET", f"/admin/v1/accounts/{partner['settlement_account']}/balance", None),
    ]:
        assert_error(stack.call(method, path, body, token=token), 401, "QP.Auth.Admin")


@pytest.mark.parametrize(
    "case", ["zero", "jpy_decimals", "currency_mismatch", "no_key", "long_key", "settlement", "unknown", "bad_currency"]
)
def test_funding_bad_input(stack: Stack, case: str) -> None:
    account = stack.new_account()
    body = {"amount": "1.00", "currency": "CNY"}
    headers = {"x-idempotency-key": uuid.uuid4().hex}
    path = f"/admin/v1/accounts/{account}/fundings"
    expected: tuple[int, str] = (400, "")
    if case == "zero":
        body["amount"], expected = "0", (400, "QP.Amount.NotPositive")
    elif case == "jpy_decimals":
        body.update(amount="1.5", currency="JPY")
        expected = (400, "QP.Amount.TooManyDecimals")
    elif case == "currency_mismatch":
        body["currency"], expected = "USD", (422, "QP.Currency.Mismatch")
    elif case == "no_key":
        headers, expected = {}, (400, "QP.Header.Missing")
    elif case == "long_key":
        headers, expected = {"x-idempotency-key": "k" * 65}, (400, "QP.Header.Invalid")
    elif case == "settlement":
        path, expected = "/admin/v1/accounts/set_ptn_x/fundings", (404, "QP.Account.NotFound")
    elif case == "unknown":
        path, expected = "/admin/v1/accounts/acc_doesnotexist/fundings", (404, "QP.Account.NotFound")
    elif case == "bad_currency":
        body["currency"], expected = "XXX", (400, "QP.Currency.Unsupported")
    assert_error(stack.admin("POST", path, body, headers=headers), *expected)
    assert stack.balance(account) == "0.00"


# ---- interaction id ------------------------------------------------------------------------------
def test_interaction_id_echoed_and_generated(stack: Stack, partner: dict[str, Any]) -> None:
    given = "test-" + uuid.uuid4().hex
    assert (
        stack.call("GET", "/healthz", headers={"x-fapi-interaction-id": given}).headers["x-fapi-interaction-id"]
        == given
    )
    # also on errors
    reply = stack.call("GET", "/v1/quick-payments/x", token=partner["token"], headers={"x-fapi-interaction-id": given})
    assert reply.status == 404 and reply.headers["x-fapi-interaction-id"] == given
    generated = {stack.call("GET", "/healthz").headers["x-fapi-interaction-id"] for _ in range(3)}
    assert len(generated) == 3
    for value in generated:
        uuid.UUID(value)
    too_long = stack.call("GET", "/healthz", headers={"x-fapi-interaction-id": "x" * 129})
    assert too_long.headers["x-fapi-interaction-id"] != "x" * 129
    uuid.UUID(too_long.headers["x-fapi-interaction-id"])


# ---- bad input on the payment path: right 4xx, one shape, nothing written -----------------------
@pytest.fixture(scope="module")
def victim(stack: Stack, partner: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    customer = stack.new_customer(partner, shard=0, funding="100.00")
    foreign = stack.new_customer(other, shard=0, funding="1.00")
    return {
        **customer,
        "foreign_agreement": foreign["agreement_id"],
        "creditor_same": stack.new_account(shard=0),
        "creditor_cross": stack.new_account(shard=1),
        "usd_cross": stack.new_account(shard=1, currency="USD"),
        "usd_same": stack.new_account(shard=0, currency="USD"),
        "other_settlement": other["settlement_account"],
    }


def _token(stack: Stack, partner: dict[str, Any], kind: str) -> str | None:
    now = int(time.time())
    key = (stack.state_dir / "token.key").read_text().strip().encode()
    claims = {"sub": partner["partner_id"], "iss": "quickpay", "iat": now, "exp": now + 600}
    if kind == "missing":
        return None
    if kind == "expired":
        return jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, key, algorithm="HS256")
    if kind == "forged":
        return jwt.encode(claims, b"a-wrong-key-of-at-least-32-bytes!!", algorithm="HS256")
    if kind == "wrong_issuer":
        return jwt.encode({**claims, "iss": "evil"}, key, algorithm="HS256")
    if kind == "alg_none":
        return jwt.encode(claims, None, algorithm="none")
    if kind == "garbage":
        return "not.a.jwt"
    raise AssertionError(kind)


BAD_PAYMENTS: list[tuple[str, int, str, str | None]] = [
    # (case, status, code, error path)
    ("malformed_json", 400, "QP.Body.MalformedJSON", "$"),
    ("empty_body", 400, "QP.Body.MalformedJSON", "$"),
    ("array_body", 400, "QP.Field.Invalid", "$"),
    ("missing_amount", 400, "QP.Field.Missing", "$.amount"),
    ("missing_agreement", 400, "QP.Field.Missing", "$.agreement_id"),
    ("amount_number", 400, "QP.Field.Invalid", "$.amount"),
    ("agreement_number", 400, "QP.Field.Invalid", "$.agreement_id"),
    ("unknown_field", 400, "QP.Field.Invalid", None),
    ("bad_id_chars", 400, "QP.Field.Invalid", "$.agreement_id"),
    ("long_reference", 400, "QP.Field.Invalid", "$.reference"),
    ("risk_wrong_type", 400, "QP.Field.Invalid", "$.risk"),
    ("amount_zero", 400, "QP.Amount.NotPositive", "$.amount"),
    ("amount_negative", 400, "QP.Amount.Invalid", "$.amount"),
    ("amount_three_decimals", 400, "QP.Amount.TooManyDecimals", "$.amount"),
    ("amount_jpy_decimals", 400, "QP.Amount.TooManyDecimals", "$.amount"),
    ("amount_beyond_int64", 400, "QP.Amount.TooLarge", "$.amount"),
    ("amount_exponent", 400, "QP.Amount.Invalid", "$.amount"),
    ("amount_trailing_newline", 400, "QP.Amount.Invalid", "$.amount"),
    ("unknown_currency", 400, "QP.Currency.Unsupported", "$.currency"),
    ("lowercase_currency", 400, "QP.Field.Invalid", "$.currency"),
    ("unknown_agreement", 404, "QP.Agreement.NotFound", "$.agreement_id"),
    ("foreign_agreement", 404, "QP.Agreement.NotFound", "$.agreement_id"),
    ("unknown_creditor_same_shard", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("unknown_creditor_cross_shard", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("creditor_clearing", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("creditor_funding", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("creditor_unknown_settlement", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("creditor_other_partners_settlement", 422, "QP.Creditor.NotFound", "$.creditor_account"),
    ("creditor_is_debtor", 422, "QP.Creditor.SameAsDebtor", "$.creditor_account"),
    ("currency_mismatch_agreement", 422, "QP.Currency.Mismatch", "$.currency"),
    ("currency_mismatch_creditor_same", 422, "QP.Currency.Mismatch", "$.currency"),
    ("currency_mismatch_creditor_cross", 422, "QP.Currency.Mismatch", "$.currency"),
    ("oversized_body", 413, "QP.Body.TooLarge", None),
    ("token_missing", 401, "QP.Auth.Missing", None),
    ("token_expired", 401, "QP.Auth.InvalidToken", None),
    ("token_forged", 401, "QP.Auth.InvalidToken", None),
    ("token_wrong_issuer", 401, "QP.Auth.InvalidToken", None),
    ("token_alg_none", 401, "QP.Auth.InvalidToken", None),
    ("token_garbage", 401, "QP.Auth.InvalidToken", None),
    ("token_basic_scheme", 401, "QP.Auth.Missing", None),
    ("key_missing", 400, "QP.Header.Missing", "header.x-idempotency-key"),
    ("key_too_long", 400, "QP.Header.Invalid", "header.x-idempotency-key"),
]


@pytest.mark.parametrize("case, status, code, path", BAD_PAYMENTS, ids=[c[0] for c in BAD_PAYMENTS])
def test_bad_payment_input(
    stack: Stack, partner: dict[str, Any], victim: dict[str, Any], case: str, status: int, code: str, path: str | None
) -> None:
    key = "bad-" + uuid.uuid4().hex
    body: dict[str, Any] = {
        "agreement_id": victim["agreement_id"],
        "amount": "1.00",
        "currency": "CNY",
        "creditor_account": victim["creditor_same"],
        "reference": "bad input",
    }
    headers = {"x-idempotency-key": key}
    raw: bytes | None = None
    token: str | None = partner["token"]
    if case == "malformed_json":
        raw = b'{"agreement_id": '
    elif case == "empty_body":
        raw = b""
    elif case == "array_body":
        raw = b"[]"
    elif case == "missing_amount":
        del body["amount"]
    elif case == "missing_agreement":
        del body["agreement_id"]
    elif case == "amount_number":
        body["amount"] = 1.0
    elif case == "agreement_number":
        body["agreement_id"] = 12
    elif case == "unknown_field":
        body["debtor_account"] = victim["account"]
    elif case == "bad_id_chars":
        body["agreement_id"] = "agr_../../etc"
    elif case == "long_reference":
        body["reference"] = "r" * 141
    elif case == "risk_wrong_type":
        body["risk"] = "not an object"
    elif case == "amount_zero":
        body["amount"] = "0"
    elif case == "amount_negative":
        body["amount"] = "-1"
    elif case == "amount_three_decimals":
        body["amount"] = "1.234"
    elif case == "amount_jpy_decimals":
        body.update(amount="1.5", currency="JPY")
    elif case == "amount_beyond_int64":
        body["amount"] = "92233720368547758.08"
    elif case == "amount_exponent":
        body["amount"] = "1e2"
    elif case == "amount_trailing_newline":
        body["amount"] = "1.00\n"
    elif case == "unknown_currency":
        body["currency"] = "XXX"
    elif case == "lowercase_currency":
        body["currency"] = "cny"
    elif case == "unknown_agreement":
        body["agreement_id"] = "agr_doesnotexist0000"
    elif case == "foreign_agreement":
        body["agreement_id"] = victim["foreign_agreement"]
    elif case == "unknown_creditor_same_shard":
        body["creditor_account"] = next(f"acc_nope{i}" for i in range(100) if shard_of(f"acc_nope{i}", 2) == 0)
    elif case == "unknown_creditor_cross_shard":
        body["creditor_account"] = next(f"acc_nope{i}" for i in range(100) if shard_of(f"acc_nope{i}", 2) == 1)
    elif case == "creditor_clearing":
        body["creditor_account"] = "sys_clearing"
    elif case == "creditor_funding":
        body["creditor_account"] = "sys_funding"
    elif case == "creditor_unknown_settlement":
        body["creditor_account"] = "set_ptn_doesnotexist"
    elif case == "creditor_other_partners_settlement":
        body["creditor_account"] = victim["other_settlement"]
    elif case == "creditor_is_debtor":
        body["creditor_account"] = victim["account"]
    elif case == "currency_mismatch_agreement":
        body["currency"] = "USD"
    elif case == "currency_mismatch_creditor_same":
        body["creditor_account"] = victim["usd_same"]
    elif case == "currency_mismatch_creditor_cross":
        body["creditor_account"] = victim["usd_cross"]
    elif case == "oversized_body":
        body["reference"] = "r" * (70 * 1024)
    elif case.startswith("token_"):
        if case == "token_basic_scheme":
            token = None
            headers["authorization"] = "Basic " + base64.b64encode(b"a:b").decode()
        else:
            token = _token(stack, partner, case.removeprefix("token_"))
    elif case == "key_missing":
        headers = {}
    elif case == "key_too_long":
        headers = {"x-idempotency-key": "k" * 65}
    before_balance = stack.balance(victim["account"])
    before_tx = stack.call(
        "GET", f"/v1/accounts/{victim['account']}/transactions?limit=200", token=partner["token"]
    ).body["transactions"]
    reply = http(
        "POST",
        stack.url("/v1/quick-payments"),
        None if raw is not None else body,
        raw=raw,
        token=token,
        headers=headers,
    )
    assert reply.status < 500
    assert_error(reply, status, code, path=path)
    if status == 401:
        assert "www-authenticate" in reply.headers
    # nothing written: balance and journal unchanged, and the key left no payment behind
    assert stack.balance(victim["account"]) == before_balance
    after_tx = stack.call(
        "GET", f"/v1/accounts/{victim['account']}/transactions?limit=200", token=partner["token"]
    ).body["transactions"]
    assert after_tx == before_tx
    pid = payment_id_for(partner["partner_id"], key, shard_of(victim["agreement_id"], 2))
    assert stack.call("GET", f"/v1/quick-payments/{pid}", token=partner["token"]).status == 404
    # and the same key still works for a good request afterwards (the failure reserved nothing)
    if status != 401 and case not in ("key_missing", "key_too_long"):
        good = {
            "agreement_id": victim["agreement_id"],
            "amount": "0.01",
            "currency": "CNY",
            "creditor_account": victim["creditor_same"],
            "reference": "after bad input",
        }
        ok = stack.call("POST", "/v1/quick-payments", good, token=partner["token"], headers={"x-idempotency-key": key})
        assert ok.status == 201 and ok.body["status"] == COMPLETED, ok.body
