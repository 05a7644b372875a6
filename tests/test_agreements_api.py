"""Agreements the customer authorises, bounds and ends, and refunds, through the HTTP API of
a real stack: a new agreement awaits the customer's authorisation and no payment passes
before it; the customer (through the bank's channel, the admin API) authorises, rejects,
suspends, resumes and revokes, the partner revokes; every transition is recorded and
idempotent, and one the status does not allow is 409; validity windows refuse payments
before valid_from and after valid_to; daily, weekly and monthly limits reject with their
period in reason_details; listings page by cursor; refunds return part then the rest of a
payment and refuse a third; partner B can do nothing to partner A's agreements, payments
or refunds; `quickpay check` passes after all of it."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from conftest import Reply, Stack, http
from test_api import COMPLETED, IN_PROCESS, assert_error, wait_status


@pytest.fixture(scope="module")
def partner_b(stack: Stack) -> dict[str, Any]:
    return stack.new_partner("Partner B")


def _rfc3339(seconds_from_now: float) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _agreement(stack: Stack, partner: dict[str, Any], agreement_id: str) -> dict[str, Any]:
    reply = stack.call("GET", f"/v1/agreements/{agreement_id}", token=partner["token"])
    assert reply.status == 200, reply.body
    return dict(reply.body)


def _customer_action(stack: Stack, agreement_id: str, action: str) -> Reply:
    return stack.admin("POST", f"/admin/v1/agreements/{agreement_id}/{action}")


def _refund(
    stack: Stack, partner: dict[str, Any], payment_id: str, body: dict[str, Any] | None = None, key: str | None = None
) -> Reply:
    return stack.call(
        "POST",
        f"/v1/quick-payments/{payment_id}/refunds",
        body if body is not None else {},
        token=partner["token"],
        headers={"x-idempotency-key": key or uuid.uuid4().hex},
    )


def _check(stack: Stack) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- consent ------------------------------------------------------------------------------
def test_payments_are_refused_until_the_customer_authorises(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0, funding="100.00", authorise=False)
    agreement_id = customer["agreement_id"]
    before = stack.balance(customer["account"])
    assert_error(
        stack.pay(partner, agreement_id, partner["settlement_account"], "1.00"),
        422,
        "QP.Agreement.NotAuthorised",
        path="$.agreement_id",
    )
    assert stack.balance(customer["account"]) == before
    # The partner cannot authorise: that is the customer's decision, through the bank.
    reply = http("POST", stack.url(f"/admin/v1/agreements/{agreement_id}/authorise"), {}, token=partner["token"])
    assert_error(reply, 401, "QP.Auth.Admin")
    authorised = _customer_action(stack, agreement_id, "authorise")
    assert authorised.status == 200 and authorised.body["status"] == "Authorised", authorised.body
    paid = stack.pay(partner, agreement_id, partner["settlement_account"], "1.00")
    assert paid.status == 201 and paid.body["status"] == COMPLETED, paid.body
    history = _agreement(stack, partner, agreement_id)["status_history"]
    assert [(h["from"], h["to"], h["by"]) for h in history] == [
        (None, "AwaitingAuthorisation", "partner"),
        ("AwaitingAuthorisation", "Authorised", "customer"),
    ]


def test_a_rejected_agreement_never_pays(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=1, authorise=False)
    rejected = _customer_action(stack, customer["agreement_id"], "reject")
    assert rejected.status == 200 and rejected.body["status"] == "Rejected"
    assert_error(
        stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00"),
        422,
        "QP.Agreement.NotAuthorised",
    )
    # Terminal: it cannot be authorised afterwards.
    assert_error(_customer_action(stack, customer["agreement_id"], "authorise"), 409, "QP.Agreement.InvalidTransition")


# ---- lifecycle ----------------------------------------------------------------------------
def test_suspend_resume_revoke_and_idempotent_transitions(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=0)
    agreement_id = customer["agreement_id"]
    settlement = partner["settlement_account"]
    suspended = _customer_action(stack, agreement_id, "suspend")
    assert suspended.status == 200 and suspended.body["status"] == "Suspended"
    again = _customer_action(stack, agreement_id, "suspend")
    assert again.status == 200 and again.body == suspended.body  # the same resource, nothing new
    assert_error(stack.pay(partner, agreement_id, settlement, "1.00"), 422, "QP.Agreement.Suspended")
    assert_error(_customer_action(stack, agreement_id, "authorise"), 409, "QP.Agreement.InvalidTransition")
    resumed = _customer_action(stack, agreement_id, "resume")
    assert resumed.status == 200 and resumed.body["status"] == "Authorised"
    assert stack.pay(partner, agreement_id, settlement, "1.00").body["status"] == COMPLETED
    # The partner ends it; revoking a revoked agreement answers the same resource.
    revoked = stack.call("DELETE", f"/v1/agreements/{agreement_id}", token=partner["token"])
    assert revoked.status == 200 and revoked.body["status"] == "Revoked", revoked.body
    again = stack.call("DELETE", f"/v1/agreements/{agreement_id}", token=partner["token"])
    assert again.status == 200 and again.body == revoked.body
    assert_error(stack.pay(partner, agreement_id, settlement, "1.00"), 422, "QP.Agreement.Revoked")
    for action in ("resume", "authorise", "suspend"):
        assert_error(_customer_action(stack, agreement_id, action), 409, "QP.Agreement.InvalidTransition")
    history = _agreement(stack, partner, agreement_id)["status_history"]
    assert [(h["from"], h["to"], h["by"]) for h in history] == [
        (None, "AwaitingAuthorisation", "partner"),
        ("AwaitingAuthorisation", "Authorised", "customer"),
        ("Authorised", "Suspended", "customer"),
        ("Suspended", "Authorised", "customer"),
        ("Authorised", "Revoked", "partner"),
    ]
    assert all(h["at"].endswith("Z") for h in history)
    final = _agreement(stack, partner, agreement_id)
    assert final["status_updated_at"] == history[-1]["at"]


def test_the_customer_revokes(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=1)
    revoked = _customer_action(stack, customer["agreement_id"], "revoke")
    assert revoked.status == 200 and revoked.body["status"] == "Revoked"
    assert_error(
        stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00"), 422, "QP.Agreement.Revoked"
    )


def test_validity_window(stack: Stack, partner: dict[str, Any]) -> None:
    later = stack.new_customer(partner, shard=0, valid_from=_rfc3339(3600))
    assert_error(
        stack.pay(partner, later["agreement_id"], partner["settlement_account"], "1.00"),
        422,
        "QP.Agreement.NotYetValid",
    )
    soon = stack.new_customer(partner, shard=1, valid_to=_rfc3339(1.5))
    assert stack.pay(partner, soon["agreement_id"], partner["settlement_account"], "1.00").body["status"] == COMPLETED
    time.sleep(1.7)
    assert _agreement(stack, partner, soon["agreement_id"])["status"] == "Expired"
    assert_error(
        stack.pay(partner, soon["agreement_id"], partner["settlement_account"], "1.00"), 422, "QP.Agreement.Expired"
    )
    # An expired agreement can still be revoked, and nothing else.
    assert_error(_customer_action(stack, soon["agreement_id"], "suspend"), 409, "QP.Agreement.InvalidTransition")
    assert _customer_action(stack, soon["agreement_id"], "revoke").body["status"] == "Revoked"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"valid_from": _rfc3339(7200), "valid_to": _rfc3339(3600)}, "QP.Agreement.InvalidValidity"),
        ({"valid_to": _rfc3339(-60)}, "QP.Agreement.InvalidValidity"),
        ({"valid_from": "1969-12-31T23:59:59Z"}, "QP.Agreement.InvalidValidity"),
        ({"periodic_limits": [{"period": "Day", "amount": "1.00"}]}, "QP.Agreement.DuplicateLimit"),
    ],
)
def test_bad_agreement_terms_are_422(stack: Stack, partner: dict[str, Any], body: dict[str, Any], code: str) -> None:
    account = stack.new_account()
    reply = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00", "daily_limit": "2.00", **body},
        token=partner["token"],
    )
    assert_error(reply, 422, code, field_errors=True)


@pytest.mark.parametrize(
    "body",
    [
        {"valid_to": "2030-01-01T00:00:00"},  # no offset
        {"valid_to": "tomorrow"},
        {"periodic_limits": [{"period": "Fortnight", "amount": "1.00"}]},
        {"periodic_limits": [{"period": "Day", "alignment": "Lunar", "amount": "1.00"}]},
        {"periodic_limits": [{"period": "Week", "amount": "1.001"}]},
        {"periodic_limits": [{"period": "Week"}]},
    ],
)
def test_malformed_agreement_terms_are_400(stack: Stack, partner: dict[str, Any], body: dict[str, Any]) -> None:
    account = stack.new_account()
    reply = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00", **body},
        token=partner["token"],
    )
    assert_error(reply, 400, field_errors=True)


# ---- limits -------------------------------------------------------------------------------
def test_daily_and_monthly_limits_reject_with_their_period(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(
        partner,
        shard=0,
        funding="1000.00",
        per_payment="80.00",
        daily="100.00",
        periodic_limits=[
            {"period": "Month", "alignment": "Calendar", "amount": "150.00"},
            {"period": "Week", "alignment": "Consent", "amount": "500.00"},
        ],
    )
    agreement_id = customer["agreement_id"]
    settlement = partner["settlement_account"]
    over = stack.pay(partner, agreement_id, settlement, "80.01")
    assert over.body["status"] == "Rejected" and over.body["reasons"] == ["AGREEMENT_PER_PAYMENT_LIMIT"]
    assert over.body["reason_details"] == {"limit": "80.00"}
    assert stack.pay(partner, agreement_id, settlement, "70.00").body["status"] == COMPLETED
    day = stack.pay(partner, agreement_id, settlement, "30.01")
    assert day.body["status"] == "Rejected" and day.body["reasons"] == ["AGREEMENT_PERIODIC_LIMIT"]
    details = day.body["reason_details"]
    assert (details["period"], details["alignment"], details["limit"], details["remaining"]) == (
        "Day",
        "Calendar",
        "100.00",
        "30.00",
    )
    assert details["period_start"].endswith("T00:00:00.000Z") and details["period_end"].endswith("T00:00:00.000Z")
    assert stack.pay(partner, agreement_id, settlement, "30.00").body["status"] == COMPLETED
    # The day's limit is used up; the month's has 50.00 left. Both show on the agreement.
    limits = {(p["period"], p["alignment"]): p for p in _agreement(stack, partner, agreement_id)["periodic_limits"]}
    assert limits[("Month", "Calendar")]["remaining"] == "50.00"
    assert limits[("Week", "Consent")]["remaining"] == "400.00"
    assert limits[("Day", "Calendar")]["remaining"] == "0.00"
    # A rejected payment takes nothing from any limit.
    assert stack.balance(customer["account"]) == "900.00"
    # The monthly limit bites on its own: a second agreement with a smaller month than day.
    monthly = stack.new_customer(
        partner,
        shard=1,
        funding="1000.00",
        per_payment="80.00",
        daily="100.00",
        periodic_limits=[{"period": "Month", "amount": "60.00"}],
    )
    assert stack.pay(partner, monthly["agreement_id"], settlement, "50.00").body["status"] == COMPLETED
    month = stack.pay(partner, monthly["agreement_id"], settlement, "20.00")
    assert month.body["reasons"] == ["AGREEMENT_PERIODIC_LIMIT"]
    assert (month.body["reason_details"]["period"], month.body["reason_details"]["remaining"]) == ("Month", "10.00")
    assert month.body["reason_details"]["period_start"][8:] == "01T00:00:00.000Z"
    # The rejection is recorded: reading it (or replaying its key) shows the same details.
    got = stack.call("GET", f"/v1/quick-payments/{month.body['payment_id']}", token=partner["token"])
    assert got.body == month.body


def test_status_spend_and_refunds_survive_a_shard_worker_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The worker keeps statuses, window spend and refunded amounts in memory; a SIGKILLed
    worker rebuilds them from PostgreSQL (agreements table, journal) and decides the same."""
    from conftest import start_stack, stop_stack
    from test_faults import child_pid, wait_child_replaced

    own = start_stack(tmp_path_factory.mktemp("agreements-restart"), demo=False)
    try:
        who = own.new_partner("Restart Partner")
        settlement = who["settlement_account"]
        limited = own.new_customer(
            who,
            shard=0,
            funding="500.00",
            per_payment="100.00",
            daily="100.00",
            periodic_limits=[{"period": "Month", "amount": "150.00"}],
        )
        suspended = own.new_customer(who, shard=0)
        assert own.pay(who, limited["agreement_id"], settlement, "90.00").body["status"] == COMPLETED
        paid = own.pay(who, limited["agreement_id"], settlement, "10.00").body
        assert _refund(own, who, paid["payment_id"], {"amount": "4.00"}).body["status"] == "Succeeded"
        assert _customer_action(own, suspended["agreement_id"], "suspend").status == 200
        old = child_pid(own, "shard-0")
        os.kill(old, signal.SIGKILL)
        wait_child_replaced(own, "shard-0", old)
        own.wait_ready()
        # Day spent 100 of 100 (a refund gives nothing back), month 100 of 150.
        day = own.pay(who, limited["agreement_id"], settlement, "0.01").body
        assert day["reasons"] == ["AGREEMENT_PERIODIC_LIMIT"] and day["reason_details"]["period"] == "Day"
        limits = {p["period"]: p["remaining"] for p in _agreement(own, who, limited["agreement_id"])["periodic_limits"]}
        assert limits == {"Day": "0.00", "Month": "50.00"}
        assert_error(own.pay(who, suspended["agreement_id"], settlement, "1.00"), 422, "QP.Agreement.Suspended")
        assert_error(_refund(own, who, paid["payment_id"], {"amount": "6.01"}), 422, "QP.Refund.ExceedsPayment")
        assert _refund(own, who, paid["payment_id"]).body["amount"] == "6.00"
        _check(own)
        # `quickpay check` covers refunds: a payment whose refunded amount disagrees with its
        # refunds is reported (the row is changed behind the ledger's back, then put back).
        import asyncio

        import asyncpg

        async def set_refunded(value: int) -> None:
            conn = await asyncpg.connect(own.dsn(0))
            try:
                await conn.execute("UPDATE transfers SET refunded_minor = $2 WHERE id = $1", paid["payment_id"], value)
            finally:
                await conn.close()

        asyncio.run(set_refunded(300))
        done = subprocess.run(
            [sys.executable, "-m", "quickpay.cli", "check", "--state-dir", str(own.state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and paid["payment_id"] in done.stdout + done.stderr, done.stdout
        asyncio.run(set_refunded(1000))
        _check(own)
    finally:
        stop_stack(own)


# ---- listing ------------------------------------------------------------------------------
def test_partner_lists_its_agreements_by_status_with_a_cursor(stack: Stack) -> None:
    lister = stack.new_partner("Lister")
    made = [stack.new_customer(lister, shard=i % 2, funding="", authorise=i % 3 != 0)["agreement_id"] for i in range(7)]
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        path = "/v1/agreements?limit=3" + (f"&cursor={cursor}" if cursor else "")
        reply = stack.call("GET", path, token=lister["token"])
        assert reply.status == 200, reply.body
        seen.extend(reply.body["agreements"])
        pages += 1
        cursor = reply.body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert [a["agreement_id"] for a in seen] == list(reversed(made))  # newest first, each once
    assert pages == 3
    awaiting = stack.call("GET", "/v1/agreements?status=AwaitingAuthorisation", token=lister["token"]).body
    assert {a["agreement_id"] for a in awaiting["agreements"]} == {made[0], made[3], made[6]}
    assert all(a["status"] == "AwaitingAuthorisation" for a in awaiting["agreements"])
    assert_error(stack.call("GET", "/v1/agreements?status=active", token=lister["token"]), 400, "QP.Query.Invalid")
    assert_error(stack.call("GET", "/v1/agreements?cursor=bm9wZQ", token=lister["token"]), 400, "QP.Cursor.Invalid")


def test_the_bank_lists_a_customers_agreements_across_partners(
    stack: Stack, partner: dict[str, Any], partner_b: dict[str, Any]
) -> None:
    account = stack.new_account(shard=0)
    ids = []
    for who in (partner, partner_b):
        reply = stack.call(
            "POST",
            "/v1/agreements",
            {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"},
            token=who["token"],
        )
        assert reply.status == 201, reply.body
        ids.append(reply.body["agreement_id"])
    listed = stack.admin("GET", f"/admin/v1/accounts/{account}/agreements")
    assert listed.status == 200, listed.body
    assert [a["agreement_id"] for a in listed.body["agreements"]] == list(reversed(ids))
    assert {a["partner_id"] for a in listed.body["agreements"]} == {partner["partner_id"], partner_b["partner_id"]}
    assert_error(stack.admin("GET", "/admin/v1/accounts/acc_nosuchaccount/agreements"), 404, "QP.Account.NotFound")
    # A partner token is not the bank's.
    assert_error(
        http("GET", stack.url(f"/admin/v1/accounts/{account}/agreements"), token=partner["token"]), 401, "QP.Auth.Admin"
    )


# ---- refunds ------------------------------------------------------------------------------
def test_partial_refund_then_the_rest_then_a_third_is_refused(stack: Stack, partner: dict[str, Any]) -> None:
    customer = stack.new_customer(partner, shard=1, funding="100.00")
    paid = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "30.00").body
    assert paid["refunded_amount"] == "0.00"
    key = uuid.uuid4().hex
    first = _refund(
        stack,
        partner,
        paid["payment_id"],
        {"amount": "10.00", "reason": "requested_by_customer", "reference": "size too small"},
        key=key,
    )
    assert first.status == 201, first.body
    refund = first.body
    assert (refund["status"], refund["amount"], refund["payment_id"], refund["reason"], refund["reference"]) == (
        "Succeeded",
        "10.00",
        paid["payment_id"],
        "requested_by_customer",
        "size too small",
    )
    assert refund["refund_id"].startswith("ref_") and refund["refund_id"].endswith("_1")
    assert stack.balance(customer["account"]) == "80.00"
    # A retry with the same key is the same refund, once; another body under it is 422.
    replay = _refund(
        stack,
        partner,
        paid["payment_id"],
        {"amount": "10.00", "reason": "requested_by_customer", "reference": "size too small"},
        key=key,
    )
    assert replay.status == 201 and replay.body == refund and replay.headers.get("x-idempotent-replayed") == "true"
    assert_error(
        _refund(stack, partner, paid["payment_id"], {"amount": "11.00"}, key=key), 422, "QP.Idempotency.Mismatch"
    )
    assert stack.balance(customer["account"]) == "80.00"
    assert_error(_refund(stack, partner, paid["payment_id"], {"amount": "20.01"}), 422, "QP.Refund.ExceedsPayment")
    rest = _refund(stack, partner, paid["payment_id"])  # no amount: what remains
    assert rest.status == 201 and rest.body["amount"] == "20.00" and rest.body["status"] == "Succeeded"
    assert stack.balance(customer["account"]) == "100.00"
    assert_error(_refund(stack, partner, paid["payment_id"], {"amount": "0.01"}), 422, "QP.Refund.ExceedsPayment")
    assert_error(_refund(stack, partner, paid["payment_id"]), 422, "QP.Refund.ExceedsPayment")
    payment = stack.call("GET", f"/v1/quick-payments/{paid['payment_id']}", token=partner["token"]).body
    assert payment["refunded_amount"] == "30.00" and payment["status"] == COMPLETED
    got = stack.call("GET", f"/v1/refunds/{refund['refund_id']}", token=partner["token"])
    assert got.status == 200 and got.body == refund
    # Refunds show in the customer's transactions as their own kind, credited to the debtor.
    page = stack.call("GET", f"/v1/accounts/{customer['account']}/transactions", token=partner["token"]).body
    refunds = [t for t in page["transactions"] if t["kind"] == "refund"]
    assert sorted(t["amount"] for t in refunds) == ["10.00", "20.00"]
    assert all(t["direction"] == "credit" and t["status"] == "Succeeded" for t in refunds)
    # Refunds do not give back spent limit: the day's spend still counts the 30.00.
    agreement = _agreement(stack, partner, customer["agreement_id"])
    assert agreement["periodic_limits"][0]["remaining"] == "99970.00"
    _check(stack)


def test_what_is_not_refundable(stack: Stack, partner: dict[str, Any]) -> None:
    settlement = partner["settlement_account"]
    customer = stack.new_customer(partner, shard=0, funding="10.00")
    to_customer = stack.pay(partner, customer["agreement_id"], stack.new_account(shard=0), "1.00").body
    assert to_customer["status"] == COMPLETED
    assert_error(_refund(stack, partner, to_customer["payment_id"]), 422, "QP.Refund.NotRefundable")
    cross = stack.pay(partner, customer["agreement_id"], stack.new_account(shard=1), "1.00").body
    assert cross["status"] in (COMPLETED, IN_PROCESS)
    assert_error(_refund(stack, partner, cross["payment_id"]), 422, "QP.Refund.NotRefundable")
    rejected = stack.pay(partner, customer["agreement_id"], settlement, "9.00").body
    assert rejected["status"] == "Rejected"
    assert_error(_refund(stack, partner, rejected["payment_id"]), 422, "QP.Refund.NotRefundable")
    assert_error(_refund(stack, partner, "pay_" + "0" * 32 + "_0"), 404, "QP.Payment.NotFound")
    assert_error(_refund(stack, partner, "nonsense"), 404, "QP.Payment.NotFound")
    # Bad bodies and keys are 400 and write nothing.
    paid = stack.pay(partner, customer["agreement_id"], settlement, "2.00").body
    for body, status, code in (
        ({"amount": "-1"}, 400, "QP.Amount.Invalid"),
        # more decimals than this payment's currency has: a rule of the payment
        ({"amount": "1.001"}, 422, "QP.Amount.TooManyDecimals"),
        ({"amount": 1}, 400, "QP.Field.Invalid"),
        ({"reason": "bored"}, 400, "QP.Field.Invalid"),
        ({"extra": 1}, 400, "QP.Field.Invalid"),
    ):
        assert_error(_refund(stack, partner, paid["payment_id"], body), status, code)
    no_key = stack.call("POST", f"/v1/quick-payments/{paid['payment_id']}/refunds", {}, token=partner["token"])
    assert_error(no_key, 400, "QP.Header.Missing")
    assert (
        stack.call("GET", f"/v1/quick-payments/{paid['payment_id']}", token=partner["token"]).body["refunded_amount"]
        == "0.00"
    )
    assert_error(
        stack.call("GET", "/v1/refunds/ref_" + "0" * 32 + "_0", token=partner["token"]), 404, "QP.Refund.NotFound"
    )
    assert_error(
        stack.call("GET", f"/v1/refunds/{paid['payment_id']}", token=partner["token"]), 404, "QP.Refund.NotFound"
    )


# ---- isolation ----------------------------------------------------------------------------
def test_partner_b_can_do_nothing_to_partner_as_things(
    stack: Stack, partner: dict[str, Any], partner_b: dict[str, Any]
) -> None:
    customer = stack.new_customer(partner, shard=0, funding="50.00")
    agreement_id = customer["agreement_id"]
    paid = stack.pay(partner, agreement_id, partner["settlement_account"], "5.00").body
    refund = _refund(stack, partner, paid["payment_id"], {"amount": "1.00"}).body
    b = partner_b["token"]
    assert_error(stack.call("GET", f"/v1/agreements/{agreement_id}", token=b), 404, "QP.Agreement.NotFound")
    assert_error(stack.call("DELETE", f"/v1/agreements/{agreement_id}", token=b), 404, "QP.Agreement.NotFound")
    assert_error(
        http("POST", stack.url(f"/admin/v1/agreements/{agreement_id}/authorise"), {}, token=b), 401, "QP.Auth.Admin"
    )
    assert_error(
        stack.pay(partner_b, agreement_id, partner_b["settlement_account"], "1.00"), 404, "QP.Agreement.NotFound"
    )
    assert_error(_refund(stack, partner_b, paid["payment_id"]), 404, "QP.Payment.NotFound")
    assert_error(_refund(stack, partner_b, paid["payment_id"], {"amount": "1.00"}), 404, "QP.Payment.NotFound")
    assert_error(stack.call("GET", f"/v1/refunds/{refund['refund_id']}", token=b), 404, "QP.Refund.NotFound")
    listed = stack.call("GET", "/v1/agreements?limit=200", token=b).body["agreements"]
    assert agreement_id not in {a["agreement_id"] for a in listed}
    # Nothing B tried changed A's agreement, payment or the customer's money.
    assert _agreement(stack, partner, agreement_id)["status"] == "Authorised"
    assert stack.balance(customer["account"]) == "46.00"
    assert (
        stack.call("GET", f"/v1/quick-payments/{paid['payment_id']}", token=partner["token"]).body["refunded_amount"]
        == "1.00"
    )
    # B revoking is refused; A's own revoke still works.
    assert stack.call("DELETE", f"/v1/agreements/{agreement_id}", token=partner["token"]).body["status"] == "Revoked"


def test_cross_shard_settlement_is_covered(stack: Stack, partner: dict[str, Any]) -> None:
    """A payment in flight to another shard is not refundable (its credit went to a customer);
    the settlement ones (same shard, striped) settle at once: wait_status confirms Completed."""
    customer = stack.new_customer(partner, shard=1, funding="5.00")
    paid = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "5.00").body
    assert wait_status(stack, partner, paid["payment_id"], COMPLETED)["status"] == COMPLETED
    assert _refund(stack, partner, paid["payment_id"]).body["status"] == "Succeeded"
    _check(stack)


def test_asking_for_an_agreement_shows_nothing_of_the_account_until_consent(
    stack: Stack, partner: dict[str, Any], partner_b: dict[str, Any]
) -> None:
    """Review finding: creating an agreement used to make the customer's balance and
    transactions visible to the partner at once, before any consent, and for good."""
    customer = stack.new_customer(partner, shard=0, funding="30.00")
    account = customer["account"]
    asked = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"},
        token=partner_b["token"],
    ).body
    for path in (f"/v1/accounts/{account}/balance", f"/v1/accounts/{account}/transactions"):
        assert_error(stack.call("GET", path, token=partner_b["token"]), 404, "QP.Account.NotFound")
    assert _customer_action(stack, asked["agreement_id"], "authorise").status == 200
    assert stack.call("GET", f"/v1/accounts/{account}/balance", token=partner_b["token"]).body["balance"] == "30.00"
    assert _customer_action(stack, asked["agreement_id"], "revoke").status == 200
    assert_error(
        stack.call("GET", f"/v1/accounts/{account}/balance", token=partner_b["token"]), 404, "QP.Account.NotFound"
    )
    # A rejected request never shows it either; A, whose agreement stands, still sees it.
    rejected = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"},
        token=partner_b["token"],
    ).body
    assert _customer_action(stack, rejected["agreement_id"], "reject").status == 200
    assert_error(
        stack.call("GET", f"/v1/accounts/{account}/transactions", token=partner_b["token"]), 404, "QP.Account.NotFound"
    )
    assert stack.call("GET", f"/v1/accounts/{account}/balance", token=partner["token"]).status == 200


def test_a_full_page_of_agreements_still_has_a_cursor(stack: Stack) -> None:
    """Review finding: with limit=200 the shard capped the gateway's limit+1 at 200, so the
    first page looked like the last."""
    many = stack.new_partner("Many agreements")
    # At most PENDING_PER_ACCOUNT_MAX pending agreements of one partner over one account.
    from ledger.state import PENDING_PER_ACCOUNT_MAX

    accounts = [stack.new_account(shard=0) for _ in range(203 // PENDING_PER_ACCOUNT_MAX + 1)]
    for i in range(203):
        reply = stack.call(
            "POST",
            "/v1/agreements",
            {"debtor_account": accounts[i // PENDING_PER_ACCOUNT_MAX], "currency": "CNY", "per_payment_limit": "1.00"},
            token=many["token"],
        )
        assert reply.status == 201
    first = stack.call("GET", "/v1/agreements?limit=200", token=many["token"]).body
    assert len(first["agreements"]) == 200 and first["next_cursor"]
    rest = stack.call("GET", f"/v1/agreements?limit=200&cursor={first['next_cursor']}", token=many["token"]).body
    assert len(rest["agreements"]) == 3 and rest["next_cursor"] is None
