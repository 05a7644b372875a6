"""The customer's portal (issue 20, part 2), at the HTTP level against the real stack: the
customer signs in with the account id and a code sent to the account's phone, sees every
agreement over the account across partners (status, limits, spend so far, last payments)
and suspends, resumes or revokes each; a change holds at once on the payment path. Another
customer's agreement cannot be touched, and the page tells nothing about other accounts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Stack

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(response: httpx.Response) -> str:
    found = CSRF.search(response.text)
    assert found is not None, response.text
    return found.group(1)


def customer_with_phone(stack: Stack, partner: dict[str, Any]) -> tuple[dict[str, str], str]:
    customer = stack.new_customer(partner)
    phone = "+861" + str(uuid.uuid4().int)[:10]
    assert stack.admin("PUT", f"/admin/v1/accounts/{customer['account']}/phone", {"phone": phone}).status == 200
    return customer, phone


def last_code(stack: Stack, account: str) -> str:
    messages = stack.admin("GET", f"/admin/v1/sms?account_id={account}&limit=200").body["messages"]
    assert messages
    found = re.search(r"\b(\d{6})\b", messages[-1]["text"])
    assert found is not None
    return found.group(1)


@pytest.fixture
def browser(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, follow_redirects=False, timeout=30) as client:
        yield client


def sign_in(stack: Stack, browser: httpx.Client, account: str) -> httpx.Response:
    """Signed in: the agreements page."""
    start = browser.get("/portal")
    assert start.status_code == 200
    sent = browser.post("/portal/login", data={"csrf": csrf_of(start), "account_id": account})
    assert sent.status_code == 200 and 'name="code"' in sent.text
    done = browser.post(
        "/portal/verify", data={"csrf": csrf_of(sent), "account_id": account, "code": last_code(stack, account)}
    )
    assert done.status_code == 303 and done.headers["location"] == "/portal/agreements", done.text
    page = browser.get("/portal/agreements")
    assert page.status_code == 200
    return page


def act(browser: httpx.Client, page: httpx.Response, agreement_id: str, action: str) -> httpx.Response:
    return browser.post(f"/portal/agreements/{agreement_id}/{action}", data={"csrf": csrf_of(page)})


def test_pay_revoke_in_portal_next_payment_refused(stack: Stack, browser: httpx.Client) -> None:
    partner = stack.new_partner("Portal Partner One")
    other = stack.new_partner("Portal <b>Partner</b> Two")
    customer, phone = customer_with_phone(stack, partner)
    account = customer["account"]
    # A second partner's agreement over the same account.
    second = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "20.00", "daily_limit": "40.00"},
        token=other["token"],
    ).body
    stack.agreement_action(second["agreement_id"], "authorise")
    paid = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "12.34", reference="<i>ref</i>")
    assert paid.status == 201, paid.body

    page = sign_in(stack, browser, account)
    assert customer["agreement_id"] in page.text and second["agreement_id"] in page.text
    assert "Portal Partner One" in page.text
    assert "Portal &lt;b&gt;Partner&lt;/b&gt; Two" in page.text and "<b>" not in page.text
    assert "12.34" in page.text and "&lt;i&gt;ref&lt;/i&gt;" in page.text  # last payments, escaped
    assert re.search(r'class="spent">12\.34<', page.text)  # spent in today's period
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert phone not in page.text and account not in page.text.replace(customer["agreement_id"], "")

    revoked = act(browser, page, customer["agreement_id"], "revoke")
    assert revoked.status_code == 303 and revoked.headers["location"] == "/portal/agreements"
    refused = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert refused.status == 422 and refused.body["code"] == "QP.Agreement.Revoked", refused.body
    # The other partner's agreement is untouched and still pays.
    assert stack.pay(other, second["agreement_id"], other["settlement_account"], "1.00").status == 201
    shown = stack.admin("GET", f"/admin/v1/agreements/{customer['agreement_id']}").body
    assert shown["status"] == "Revoked" and shown["status_history"][-1]["by"] == "customer"


def test_suspend_and_resume_take_effect_at_once(stack: Stack, browser: httpx.Client) -> None:
    partner = stack.new_partner("Portal Suspender")
    customer, _ = customer_with_phone(stack, partner)
    page = sign_in(stack, browser, customer["account"])
    assert act(browser, page, customer["agreement_id"], "suspend").status_code == 303
    refused = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert refused.status == 422 and refused.body["code"] == "QP.Agreement.Suspended", refused.body
    page = browser.get("/portal/agreements")
    assert re.search(r'class="status">Suspended<', page.text)
    assert act(browser, page, customer["agreement_id"], "resume").status_code == 303
    assert stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00").status == 201
    # Revoked is final: resuming it is a 409 page, and the agreement stays Revoked.
    page = browser.get("/portal/agreements")
    assert act(browser, page, customer["agreement_id"], "revoke").status_code == 303
    assert act(browser, page, customer["agreement_id"], "resume").status_code == 409


def test_another_customers_agreement_cannot_be_touched(stack: Stack, browser: httpx.Client) -> None:
    partner = stack.new_partner("Portal Neighbour")
    mine, _ = customer_with_phone(stack, partner)
    theirs, _ = customer_with_phone(stack, partner)
    page = sign_in(stack, browser, mine["account"])
    assert theirs["agreement_id"] not in page.text
    answer = act(browser, page, theirs["agreement_id"], "revoke")
    assert answer.status_code == 404
    assert stack.admin("GET", f"/admin/v1/agreements/{theirs['agreement_id']}").body["status"] == "Authorised"


def test_sign_in_needs_the_code_csrf_and_a_session(stack: Stack, browser: httpx.Client) -> None:
    partner = stack.new_partner("Portal Guard")
    customer, _ = customer_with_phone(stack, partner)
    account = customer["account"]
    # Not signed in: back to the login page; no change possible.
    assert browser.get("/portal/agreements").status_code == 303
    start = browser.get("/portal")
    csrf = csrf_of(start)
    assert browser.post(f"/portal/agreements/{customer['agreement_id']}/revoke", data={"csrf": csrf}).status_code == 403
    # CSRF missing: refused, no code sent.
    assert browser.post("/portal/login", data={"account_id": account}).status_code == 403
    assert stack.admin("GET", f"/admin/v1/sms?account_id={account}").body["messages"] == []
    # An unknown account gets the same page as a known one, and no SMS goes anywhere.
    unknown = browser.post("/portal/login", data={"csrf": csrf, "account_id": "acc_" + "0" * 20})
    known = browser.post("/portal/login", data={"csrf": csrf, "account_id": account})
    assert unknown.status_code == known.status_code == 200
    assert unknown.text.replace("acc_" + "0" * 20, "X") == known.text.replace(account, "X")
    # Three wrong codes lock it.
    right = last_code(stack, account)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    statuses = [
        browser.post("/portal/verify", data={"csrf": csrf, "account_id": account, "code": wrong}).status_code
        for _ in range(3)
    ]
    assert statuses == [400, 400, 403]
    late = browser.post("/portal/verify", data={"csrf": csrf, "account_id": account, "code": right})
    assert late.status_code == 403 and "qp_portal" not in late.headers.get("set-cookie", "")
    assert stack.admin("GET", f"/admin/v1/agreements/{customer['agreement_id']}").body["status"] == "Authorised"


def test_sign_out_ends_the_session(stack: Stack, browser: httpx.Client) -> None:
    partner = stack.new_partner("Portal Leaver")
    customer, _ = customer_with_phone(stack, partner)
    page = sign_in(stack, browser, customer["account"])
    cookie = browser.cookies["qp_portal"]
    out = browser.post("/portal/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/portal"
    # The old cookie, replayed, opens nothing.
    with httpx.Client(base_url=stack.base_url, follow_redirects=False, cookies={"qp_portal": cookie}) as replay:
        assert replay.get("/portal/agreements").status_code == 303
