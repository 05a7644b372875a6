"""The consent journey and the portal's revoke in a real browser (headless Chromium,
tests/browser_support.py), against the shared stack: the partner (named with HTML) creates
an agreement with its registered redirect URI; the browser opens `authorisation_url`, the
name shows as text, a code is read from the SMS outbox and typed in, Authorise lands on the
partner's callback (a local HTTP server) with the right state, and a payment succeeds. Then
the customer signs in to the portal, revokes the agreement, and the next payment is refused.
The browser reports no CSP violation (the pages have no script; their stylesheet is ours).
Screenshots go to test-artefacts/ (the main ones are docs/consent.png and docs/portal.png)."""

from __future__ import annotations

import http.server
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from browser_support import Browser, chromium_session, wait_for
from conftest import Stack, free_port

HOSTILE_NAME = '<img src=x onerror=alert(1)>Wallet "Ltd"'
PAGE_WAIT_S = 15.0


@pytest.fixture
def callback() -> Iterator[str]:
    """The partner's callback: a local server that answers every GET with a small page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>partner callback</title><p>back at the partner</p>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/callback"
    finally:
        server.shutdown()
        server.server_close()


def page_errors(browser: Browser) -> list[dict[str, object]]:
    """The browser's errors (CSP violations among them), but the favicon the bank's pages do not have."""
    return [e for e in browser.console_errors() if "/favicon.ico" not in str(e.get("message"))]


def last_code(stack: Stack, account: str) -> str:
    messages = stack.admin("GET", f"/admin/v1/sms?account_id={account}&limit=200").body["messages"]
    found = re.search(r"quickpay: (\d{6})", messages[-1]["text"]) if messages else None
    assert found is not None, messages
    return found.group(1)


def test_consent_and_portal_in_a_real_browser(stack: Stack, callback: str) -> None:
    from selenium.webdriver.common.by import By

    partner = stack.new_partner(HOSTILE_NAME)
    assert (
        stack.admin(
            "PUT", f"/admin/v1/partners/{partner['partner_id']}/redirect-uris", {"redirect_uris": [callback]}
        ).status
        == 200
    )
    account = stack.new_account()
    stack.fund(account, "500.00")
    phone = "+861" + str(uuid.uuid4().int)[:10]
    assert stack.admin("PUT", f"/admin/v1/accounts/{account}/phone", {"phone": phone}).status == 200
    created = stack.call(
        "POST",
        "/v1/agreements",
        {
            "debtor_account": account,
            "currency": "CNY",
            "per_payment_limit": "50.00",
            "daily_limit": "200.00",
            "redirect_uri": callback,
            "state": "browser-state-1",
        },
        token=partner["token"],
    )
    assert created.status == 201, created.body
    agreement_id = created.body["agreement_id"]

    with chromium_session("consent") as browser:
        driver = browser.driver
        driver.get(created.body["authorisation_url"])
        names = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".partner"), PAGE_WAIT_S, "the terms")
        assert names[0].text == HOSTILE_NAME  # shown as text, not markup
        assert driver.find_elements(By.TAG_NAME, "img") == []
        assert "200.00 CNY" in driver.find_element(By.CSS_SELECTOR, ".limits").text
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly cookies only
        browser.screenshot("terms")

        driver.find_element(By.CSS_SELECTOR, "form[action$='/code'] button").click()
        code_input = wait_for(lambda: driver.find_elements(By.ID, "code"), PAGE_WAIT_S, "the code form")
        code_input[0].send_keys(last_code(stack, account))
        browser.screenshot("code")
        driver.find_element(By.CSS_SELECTOR, "form[action$='/verify'] button").click()
        authorise = wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[value='authorise']"), PAGE_WAIT_S, "the decision"
        )
        browser.screenshot("decide")
        authorise[0].click()
        wait_for(lambda: driver.current_url.startswith(callback), PAGE_WAIT_S, "the partner's callback")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
        assert query == {"agreement_id": [agreement_id], "state": ["browser-state-1"], "outcome": ["authorised"]}
        assert "back at the partner" in driver.page_source
        assert page_errors(browser) == []

    paid = stack.pay(partner, agreement_id, partner["settlement_account"], "12.00", reference="<b>order 7</b>")
    assert paid.status == 201 and paid.body["status"].startswith("Accepted"), paid.body

    with chromium_session("portal") as browser:
        driver = browser.driver
        driver.get(stack.url("/portal"))
        wait_for(lambda: driver.find_elements(By.ID, "account_id"), PAGE_WAIT_S, "the sign-in form")[0].send_keys(
            account
        )
        driver.find_element(By.CSS_SELECTOR, "form[action='/portal/login'] button").click()
        code_input = wait_for(lambda: driver.find_elements(By.ID, "code"), PAGE_WAIT_S, "the code form")
        code_input[0].send_keys(last_code(stack, account))
        driver.find_element(By.CSS_SELECTOR, "form[action='/portal/verify'] button").click()
        row = wait_for(lambda: driver.find_elements(By.ID, agreement_id), PAGE_WAIT_S, "the agreement's row")[0]
        assert row.find_element(By.CSS_SELECTOR, ".status").text == "Authorised"
        assert row.find_element(By.CSS_SELECTOR, ".partner").text.startswith(HOSTILE_NAME)
        assert "12.00" in row.find_element(By.CSS_SELECTOR, ".spent").text
        assert "<b>order 7</b>" in driver.find_element(By.CSS_SELECTOR, ".payments").text
        browser.screenshot("agreements")
        row.find_element(By.CSS_SELECTOR, f"form[action='/portal/agreements/{agreement_id}/revoke'] button").click()
        wait_for(
            lambda: driver.find_element(By.ID, agreement_id).find_element(By.CSS_SELECTOR, ".status").text == "Revoked",
            PAGE_WAIT_S,
            "the agreement revoked",
        )
        browser.screenshot("revoked")
        assert page_errors(browser) == []

    refused = stack.pay(partner, agreement_id, partner["settlement_account"], "1.00")
    assert refused.status == 422 and refused.body["code"] == "QP.Agreement.Revoked", refused.body
