"""The customer's consent page and portal in a real browser (headless Chromium through
tests/browser_support.py), against the shared stack: the partner's side is Python (the
partner API creates the agreement with a redirect URI and a state; the admin API reads the
simulated SMS outbox), the customer's side is the browser, which clicks through the real
forms and lands on the partner's site, a small HTTP server on 127.0.0.1 started here.

Proved: the whole journey (terms shown, code asked for, read and entered, authorised, back at
the partner with the agreement id, the stored state and the outcome, then a payment goes
through); decline; an expired link (a private stack whose links live 3 s); three wrong codes
lock the code; a used link opened again is refused; a state or redirect URI added by the
customer's side is not what comes back; the portal's revoke stops the next payment; and, seen
from the browser, the CSP and frame headers, no framing by another origin, no open redirect,
and a hostile partner name shown as text, with no script run.

The journey found that Chromium applies the pages' `form-action 'self'` to the decision's
303 to the partner too, so no customer ever got back; the decision page now also allows the
registered redirect URI's origin (gateway/web/consent.py decision_csp, tested last here).

The page tests at the HTTP level are tests/test_consent.py and tests/test_portal.py.
Screenshots: test-artefacts/consent-*.png and portal-*.png (docs/consent.png is a crop of
consent-decide.png, docs/portal.png of portal-agreements.png)."""

from __future__ import annotations

import html
import http.client
import http.server
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import INSTALL_TIMEOUT_S, Browser, chromium_session, wait_for
from conftest import Stack, start_stack, stop_stack

# On a fresh machine the first browser test installs Chromium (scripts/install-browser-deps)
# inside its own run: room for that on top of the suite's 300 s per test.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)

PAGE_WAIT_S = 30.0
CALLBACKS_KEPT_MAX = 200  # the partner site remembers at most this many requests
CALLBACK_PATH = "/consent/done"
SHORT_LINK_TTL_S = 3
HOSTILE_NAME = "<img src=x onerror=alert(1)> Evil & Co"
SMS_CODE = re.compile(r"\b(\d{6})\b")


# ---- the partner's site ------------------------------------------------------------------
class PartnerSite:
    """The partner's web site on 127.0.0.1 (http to loopback is a redirect URI the bank lets a
    partner register): it records the requests the customer's browser makes to CALLBACK_PATH
    and answers a small page; /frame?src=URL is a page of its own that frames URL."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        site = self
        # The partner's pages name no icon to fetch, so any favicon.ico request is the bank's.
        NO_ICON = "<link rel='icon' href='data:,'>"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == CALLBACK_PATH:
                    if len(site.requests) < CALLBACKS_KEPT_MAX:
                        site.requests.append(self.path)
                    query = html.escape(url.query)
                    body = f"<!doctype html><title>Partner</title>{NO_ICON}<h1 id='back'>Back at the partner</h1><p>{query}</p>"
                elif url.path == "/frame":
                    src = html.escape(urllib.parse.parse_qs(url.query).get("src", [""])[0], quote=True)
                    body = f"<!doctype html><title>Framing</title>{NO_ICON}<iframe id='framed' src='{src}'></iframe>"
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.callback_uri = self.origin + CALLBACK_PATH
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def site() -> Iterator[PartnerSite]:
    s = PartnerSite()
    try:
        yield s
    finally:
        s.close()


# ---- the bank's and the partner's side, from Python -----------------------------------
def new_partner(stack: Stack, site: PartnerSite, name: str) -> dict[str, Any]:
    partner = stack.new_partner(name)
    reply = stack.admin(
        "PUT", f"/admin/v1/partners/{partner['partner_id']}/redirect-uris", {"redirect_uris": [site.callback_uri]}
    )
    assert reply.status == 200, reply.body
    return partner


def new_customer(stack: Stack) -> tuple[str, str]:
    """A funded account with a phone of its own (unique, so SMS reads cannot mix)."""
    phone = "+861" + str(uuid.uuid4().int)[:10]
    account = stack.new_account()
    stack.fund(account, "1000.00")
    reply = stack.admin("PUT", f"/admin/v1/accounts/{account}/phone", {"phone": phone})
    assert reply.status == 200, reply.body
    return account, phone


def consent_link(stack: Stack, partner: dict[str, Any], site: PartnerSite, account: str, state: str) -> dict[str, Any]:
    body = {
        "debtor_account": account,
        "currency": "CNY",
        "per_payment_limit": "50.00",
        "daily_limit": "200.00",
        "redirect_uri": site.callback_uri,
        "state": state,
    }
    reply = stack.call("POST", "/v1/agreements", body, token=partner["token"])
    assert reply.status == 201, reply.body
    assert reply.body["status"] == "AwaitingAuthorisation"
    assert reply.body["authorisation_url"].startswith(stack.base_url + "/consent/")
    return dict(reply.body)


def sms_codes(stack: Stack, account: str) -> list[str]:
    reply = stack.admin("GET", f"/admin/v1/sms?account_id={account}&limit=200")
    assert reply.status == 200, reply.body
    found = [SMS_CODE.search(m["text"]) for m in reply.body["messages"]]
    return [f.group(1) for f in found if f is not None]


def last_code(stack: Stack, account: str) -> str:
    codes = sms_codes(stack, account)
    assert codes, "no SMS with a code sent"
    return codes[-1]


def status_of(stack: Stack, agreement_id: str) -> str:
    return str(stack.admin("GET", f"/admin/v1/agreements/{agreement_id}").body["status"])


def headers_of(stack: Stack, path: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


# ---- the customer's side, in the browser ----------------------------------------------
def css(browser: Browser, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.driver.find_elements(By.CSS_SELECTOR, selector))


def click(browser: Browser, selector: str) -> None:
    """Clicks the one element `selector` names and waits for the page it submits to."""
    found = css(browser, selector)
    assert len(found) == 1, (selector, browser.driver.page_source[:3000])
    before = browser.driver.find_element("tag name", "html")
    found[0].click()
    try:
        wait_for(lambda: is_stale(before), PAGE_WAIT_S, f"the page after clicking {selector}")
    except AssertionError as exc:  # say what the browser said (a CSP refusal, say)
        raise AssertionError(f"{exc}\nbrowser console: {browser.console_errors()}") from None
    wait_for(lambda: browser.driver.execute_script("return document.readyState") == "complete", PAGE_WAIT_S, "load")


def is_stale(element: Any) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        _ = element.tag_name
    except StaleElementReferenceException:
        return True
    return False


def text_of(browser: Browser) -> str:
    return str(browser.driver.find_element("tag name", "body").text)


def error_text(browser: Browser) -> str:
    shown = css(browser, "p.error[role=alert]")
    return shown[0].text if shown else ""


def no_alert(browser: Browser) -> None:
    """No JavaScript dialog is open (an injected onerror=alert(1) would have opened one)."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = browser.driver.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"a JavaScript alert fired: {alert.text!r}")


def page_errors(browser: Browser) -> list[dict[str, Any]]:
    """The SEVERE console entries but the expected ones: the pages this test means to be
    refused (4xx message pages). A fetch of /favicon.ico (the API's JSON 404) counts: every page
    names its own icon."""
    return [
        e
        for e in browser.console_errors()
        if "favicon.ico" in e["message"] or not re.search(r"status of 4\d\d", e["message"])
    ]


def ask_for_code(browser: Browser) -> None:
    click(browser, "form[action$='/code'] button[type=submit]")
    assert css(browser, "input#code"), text_of(browser)


def enter_code(browser: Browser, code: str) -> None:
    field = css(browser, "input#code")
    assert len(field) == 1, text_of(browser)
    field[0].clear()
    field[0].send_keys(code)
    click(browser, "form[action$='/verify'] button[type=submit]")


def sign_in_on_consent_page(stack: Stack, browser: Browser, url: str, account: str) -> None:
    """Open the link, ask for a code, enter it: the decision buttons are shown."""
    browser.driver.get(url)
    ask_for_code(browser)
    enter_code(browser, last_code(stack, account))
    assert css(browser, "button[value=authorise]") and css(browser, "button[value=decline]"), text_of(browser)


def landed(browser: Browser, site: PartnerSite) -> dict[str, list[str]]:
    """The browser is on the partner's callback page: the query it arrived with."""
    wait_for(lambda: browser.driver.current_url.startswith(site.callback_uri), PAGE_WAIT_S, "the partner's page")
    wait_for(lambda: css(browser, "h1#back"), PAGE_WAIT_S, "the partner's page to render")
    url = urllib.parse.urlsplit(browser.driver.current_url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == site.callback_uri
    assert url.query and f"{CALLBACK_PATH}?{url.query}" in site.requests  # it reached the partner's server
    return urllib.parse.parse_qs(url.query, keep_blank_values=True)


# ---- the tests ---------------------------------------------------------------------------
def test_consent_journey_authorise_then_pay(stack: Stack, site: PartnerSite) -> None:
    partner = new_partner(stack, site, "Demo Wallet 演示钱包")
    account, phone = new_customer(stack)
    state = "opaque/state?x=1&y=<2>"
    agreement = consent_link(stack, partner, site, account, state)
    with chromium_session("consent") as browser:
        driver = browser.driver
        driver.get(agreement["authorisation_url"])
        # The terms, in plain words and in Chinese; the account and phone masked.
        body = text_of(browser)
        assert "Demo Wallet 演示钱包 asks for a payment agreement" in body
        assert "申请与您签订免密支付协议" in body
        assert "50.00 CNY" in body and "200.00 CNY" in body, body
        assert account[-4:] in body and phone[-4:] in body
        assert account not in body and phone not in body
        assert css(browser, "form[action$='/code'] input[name=csrf]")
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["qp_csrf"]["httpOnly"] is True and cookies["qp_csrf"]["sameSite"] == "Strict"
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
        browser.screenshot("page")

        ask_for_code(browser)
        assert sms_codes(stack, account), "pressing the button sends an SMS"
        browser.screenshot("code")
        enter_code(browser, last_code(stack, account))
        assert css(browser, "button[value=authorise]") and css(browser, "button[value=decline]"), text_of(browser)
        assert "qp_consent" in {c["name"] for c in driver.get_cookies()}
        browser.screenshot("decide")

        click(browser, "button[value=authorise]")
        query = landed(browser, site)
        assert query == {"agreement_id": [agreement["agreement_id"]], "state": [state], "outcome": ["authorised"]}
        browser.screenshot("outcome")
        assert page_errors(browser) == []
    shown = stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=partner["token"]).body
    assert shown["status"] == "Authorised" and shown["status_history"][-1]["by"] == "customer"
    paid = stack.pay(partner, agreement["agreement_id"], partner["settlement_account"], "10.00")
    assert paid.status == 201, paid.body
    assert paid.body["status"] in ("AcceptedSettlementCompleted", "AcceptedSettlementInProcess"), paid.body


def test_decline_lands_declined_and_nothing_pays(stack: Stack, site: PartnerSite) -> None:
    partner = new_partner(stack, site, "Decline Partner")
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, site, account, "decline-state")
    with chromium_session("consent-decline") as browser:
        sign_in_on_consent_page(stack, browser, agreement["authorisation_url"], account)
        click(browser, "button[value=decline]")
        query = landed(browser, site)
        assert query == {
            "agreement_id": [agreement["agreement_id"]],
            "state": ["decline-state"],
            "outcome": ["declined"],
        }
        browser.screenshot("outcome")
    assert status_of(stack, agreement["agreement_id"]) == "Rejected"
    refused = stack.pay(partner, agreement["agreement_id"], partner["settlement_account"], "10.00")
    assert refused.status == 422, refused.body


def test_three_wrong_codes_lock_the_code(stack: Stack, site: PartnerSite) -> None:
    partner = new_partner(stack, site, "Lock Partner")
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, site, account, "lock-state")
    with chromium_session("consent-wrong-code") as browser:
        browser.driver.get(agreement["authorisation_url"])
        ask_for_code(browser)
        right = last_code(stack, account)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        enter_code(browser, wrong)
        assert "2 tries left" in error_text(browser), text_of(browser)
        enter_code(browser, wrong)
        assert "1 try left" in error_text(browser), text_of(browser)
        enter_code(browser, wrong)
        assert "Too many wrong codes" in error_text(browser), text_of(browser)
        browser.screenshot("locked")
        # Locked: no code field and no decision, only a new code to ask for.
        assert css(browser, "input#code") == [] and css(browser, "button[value=authorise]") == []
        assert status_of(stack, agreement["agreement_id"]) == "AwaitingAuthorisation"
        # The page says "ask for a new one": a new code works, the locked one never again.
        ask_for_code(browser)
        fresh = last_code(stack, account)
        assert len(sms_codes(stack, account)) == 2
        if fresh != right:
            enter_code(browser, right)
            assert "not right" in error_text(browser), text_of(browser)
        enter_code(browser, fresh)
        click(browser, "button[value=authorise]")
        assert landed(browser, site)["outcome"] == ["authorised"]
    assert status_of(stack, agreement["agreement_id"]) == "Authorised"


def test_used_link_is_refused_when_opened_again(stack: Stack, site: PartnerSite) -> None:
    partner = new_partner(stack, site, "Replay Partner")
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, site, account, "replay-state")
    with chromium_session("consent-replayed") as browser:
        driver = browser.driver
        sign_in_on_consent_page(stack, browser, agreement["authorisation_url"], account)
        first = driver.current_window_handle
        # The same link also open in a second tab, before the decision.
        driver.switch_to.new_window("tab")
        driver.get(agreement["authorisation_url"])
        assert css(browser, "form[action$='/code']"), text_of(browser)
        second = driver.current_window_handle
        driver.switch_to.window(first)
        click(browser, "button[value=authorise]")
        assert landed(browser, site)["outcome"] == ["authorised"]
        # The stale page in the other tab: its form is refused, and nothing reaches the partner.
        driver.switch_to.window(second)
        click(browser, "form[action$='/code'] button[type=submit]")
        assert "This link has already been used." in text_of(browser), text_of(browser)
        assert "QP.Consent.LinkUsed" in text_of(browser)
        assert css(browser, "form") == []
        # The link opened again (the same browser, its cookies still there): refused.
        driver.get(agreement["authorisation_url"])
        assert "QP.Consent.LinkUsed" in text_of(browser)
        assert css(browser, "form") == []
        browser.screenshot("used")
    with chromium_session("consent-replayed-elsewhere") as other:
        other.driver.get(agreement["authorisation_url"])  # another device, no cookies at all
        assert "QP.Consent.LinkUsed" in text_of(other)
    assert status_of(stack, agreement["agreement_id"]) == "Authorised"
    assert len(sms_codes(stack, account)) == 1  # the stale tab got no code sent
    outcomes = [r for r in site.requests if agreement["agreement_id"] in r]
    assert len(outcomes) == 1 and "outcome=authorised" in outcomes[0]


def test_tampered_state_is_not_what_comes_back(stack: Stack, site: PartnerSite) -> None:
    """Whatever the customer's side adds (a state or redirect_uri in the link's query, or in
    the decision form, changed in the page), the browser lands on the registered URI with the
    state the partner stored, and the SDK's check accepts exactly that."""
    from quickpay_sdk import ConsentCallbackError, verify_callback

    partner = new_partner(stack, site, "State Partner")
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, site, account, "the-real-state")
    forged = urllib.parse.urlencode({"state": "forged", "redirect_uri": "https://evil.example/cb"})
    with chromium_session("consent-tampered") as browser:
        sign_in_on_consent_page(stack, browser, agreement["authorisation_url"] + "?" + forged, account)
        # The page is the customer's: add fields and a query to the decision form (devtools do as much).
        browser.driver.execute_script(
            """
            const form = document.querySelector("form.decision");
            form.action = form.action + "?" + arguments[0];
            for (const [name, value] of [["state", "forged"], ["redirect_uri", "https://evil.example/cb"]]) {
              const input = document.createElement("input");
              input.type = "hidden"; input.name = name; input.value = value;
              form.appendChild(input);
            }
            """,
            forged,
        )
        click(browser, "button[value=authorise]")
        query = landed(browser, site)
        assert query["state"] == ["the-real-state"] and "redirect_uri" not in query, query
        final_url = browser.driver.current_url
    callback = verify_callback(
        final_url, expected_state="the-real-state", expected_agreement_id=agreement["agreement_id"]
    )
    assert callback.authorised
    with pytest.raises(ConsentCallbackError):
        verify_callback(final_url, expected_state="forged")
    assert not any("evil.example" in r or "forged" in r for r in site.requests)


def test_portal_revoke_stops_the_next_payment(stack: Stack, site: PartnerSite) -> None:
    partner = stack.new_partner("Portal Wallet 门户钱包")
    hostile = stack.new_partner(HOSTILE_NAME)
    customer = stack.new_customer(partner, per_payment="50.00", daily="200.00")
    account = customer["account"]
    phone = "+861" + str(uuid.uuid4().int)[:10]
    assert stack.admin("PUT", f"/admin/v1/accounts/{account}/phone", {"phone": phone}).status == 200
    other = stack.call(
        "POST",
        "/v1/agreements",
        {"debtor_account": account, "currency": "CNY", "per_payment_limit": "20.00", "daily_limit": "40.00"},
        token=hostile["token"],
    ).body
    stack.agreement_action(other["agreement_id"], "authorise")
    paid = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "12.34", reference="coffee")
    assert paid.status == 201, paid.body

    with chromium_session("portal") as browser:
        driver = browser.driver
        driver.get(stack.url("/portal"))
        browser.screenshot("login")
        css(browser, "input#account_id")[0].send_keys(account)
        click(browser, "form[action='/portal/login'] button[type=submit]")
        assert css(browser, "input#code"), text_of(browser)
        browser.screenshot("code")
        css(browser, "input#code")[0].send_keys(last_code(stack, account))
        click(browser, "form[action='/portal/verify'] button[type=submit]")
        wait_for(lambda: driver.current_url == stack.url("/portal/agreements"), PAGE_WAIT_S, "the agreements page")
        session = {c["name"]: c for c in driver.get_cookies()}["qp_portal"]
        assert session["httpOnly"] is True and session["sameSite"] == "Strict"

        row = f"tr[id='{customer['agreement_id']}']"
        assert css(browser, f"{row} td.status")[0].text == "Authorised"
        assert "Portal Wallet 门户钱包" in css(browser, f"{row} td.partner")[0].text
        assert css(browser, f"{row} .spent")[0].text == "12.34"
        assert "coffee" in css(browser, "table.payments")[0].text
        # The other partner's hostile name is text in its row; no element came of it.
        hostile_cell = css(browser, f"tr[id='{other['agreement_id']}'] td.partner")[0]
        assert HOSTILE_NAME in hostile_cell.text
        assert css(browser, "img") == []
        no_alert(browser)
        browser.screenshot("agreements")

        click(browser, f"{row} form[action$='/revoke'] button")
        assert driver.current_url == stack.url("/portal/agreements")
        assert css(browser, f"{row} td.status")[0].text == "Revoked"
        assert css(browser, f"{row} form") == []  # nothing left to do with it
        browser.screenshot("revoked")
        assert page_errors(browser) == []
    refused = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "1.00")
    assert refused.status == 422 and refused.body["code"] == "QP.Agreement.Revoked", refused.body
    assert stack.pay(hostile, other["agreement_id"], hostile["settlement_account"], "1.00").status == 201


def test_security_seen_from_the_browser(stack: Stack, site: PartnerSite) -> None:
    partner = new_partner(stack, site, HOSTILE_NAME)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, site, account, "security-state")
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path

    # The headers, on every kind of customer page (a plain request: no cookies, no session).
    for target, expected in ((path, 200), ("/portal", 200), ("/portal/agreements", 303), ("/consent/x", 404)):
        status, headers = headers_of(stack, target)
        assert status == expected, target
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (target, csp)
        assert "script-src" not in csp and "unsafe-inline" not in csp, (target, csp)
        assert headers["x-frame-options"] == "DENY", target
        assert headers["x-content-type-options"] == "nosniff", target

    # No open redirect: a redirect URI the bank has not registered for this partner is refused
    # when the agreement is asked for, so no link to it exists.
    for uri in (site.origin + "/elsewhere", site.callback_uri + "/", "https://evil.example/cb"):
        body = {"debtor_account": account, "currency": "CNY", "per_payment_limit": "5.00", "redirect_uri": uri}
        reply = stack.call("POST", "/v1/agreements", {**body, "state": "s"}, token=partner["token"])
        assert reply.status == 422 and reply.body["code"] == "QP.Agreement.RedirectUriNotRegistered", (uri, reply)

    with chromium_session("consent-security") as browser:
        driver = browser.driver
        # The hostile partner name is text on the consent page, and no script ran.
        driver.get(agreement["authorisation_url"])
        names = css(browser, "span.partner")
        assert names and all(HOSTILE_NAME in n.text for n in names), [n.text for n in names]
        assert "<img" in names[0].text
        assert css(browser, "img") == [] and css(browser, "img[src=x]") == []
        assert css(browser, "script") == []
        no_alert(browser)
        browser.screenshot("hostile-name")
        # Through the code step too.
        ask_for_code(browser)
        assert all(HOSTILE_NAME in n.text for n in css(browser, "span.partner"))
        assert css(browser, "img") == []
        no_alert(browser)
        assert page_errors(browser) == []  # not even a CSP violation: nothing tried to run

        # Another origin (the partner's site) framing the consent page gets nothing shown.
        driver.get(site.origin + "/frame?" + urllib.parse.urlencode({"src": agreement["authorisation_url"]}))
        frame = wait_for(lambda: css(browser, "iframe#framed"), PAGE_WAIT_S, "the framing page")[0]
        driver.switch_to.frame(frame)
        try:
            assert css(browser, "span.partner") == [] and css(browser, "form") == []
        finally:
            driver.switch_to.default_content()
        browser.screenshot("framed")
        framing_refused = [e for e in browser.console_errors() if "frame-ancestors" in e["message"]]
        assert framing_refused, "Chromium reports the refused frame"


@pytest.fixture(scope="module")
def short_link_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack whose links expire after SHORT_LINK_TTL_S (QUICKPAY_CONSENT_LINK_TTL_S)."""
    os.environ["QUICKPAY_CONSENT_LINK_TTL_S"] = str(SHORT_LINK_TTL_S)
    try:
        s = start_stack(tmp_path_factory.mktemp("consent-browser-expiry"), shards=1, workers=1)
    finally:
        del os.environ["QUICKPAY_CONSENT_LINK_TTL_S"]
    try:
        yield s
    finally:
        stop_stack(s)


def test_expired_link_is_refused(short_link_stack: Stack, site: PartnerSite) -> None:
    stack = short_link_stack
    partner = new_partner(stack, site, "Expiry Partner")
    account, _ = new_customer(stack)
    with chromium_session("consent-expired") as browser:
        browser.driver.get(stack.url("/portal"))  # the browser warmed up before the short-lived link exists
        agreement = consent_link(stack, partner, site, account, "expiry-state")
        browser.driver.get(agreement["authorisation_url"])
        assert css(browser, "form[action$='/code']"), text_of(browser)
        # The customer waits too long, then presses the button on the page still open.
        path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
        wait_for(lambda: headers_of(stack, path)[0] == 410, SHORT_LINK_TTL_S + PAGE_WAIT_S, "the link to expire")
        click(browser, "form[action$='/code'] button[type=submit]")
        assert "This link has expired" in text_of(browser) and "QP.Consent.LinkExpired" in text_of(browser)
        assert css(browser, "form") == []
        browser.screenshot("expired")
        browser.driver.get(agreement["authorisation_url"])
        assert "QP.Consent.LinkExpired" in text_of(browser)
    assert sms_codes(stack, account) == []  # no code was sent for it
    assert status_of(stack, agreement["agreement_id"]) == "AwaitingAuthorisation"
    assert not any(agreement["agreement_id"] in r for r in site.requests)


def test_decision_page_lets_forms_go_to_the_registered_origin_only() -> None:
    """The decision page's form-action names 'self' and the registered redirect URI's origin
    (Chromium checks the 303's target against it), nothing of its path or query, and nothing
    a CSP header could be split with."""
    from gateway.web.consent import decision_csp
    from gateway.web.html import SECURITY_HEADERS

    def form_action(uri: str) -> str:
        directives = [d.strip() for d in decision_csp(uri).split(";")]
        return next(d for d in directives if d.startswith("form-action"))

    assert form_action("https://partner.example/consent/done?x=1") == "form-action 'self' https://partner.example"
    assert form_action("https://partner.example:8443/cb") == "form-action 'self' https://partner.example:8443"
    assert form_action("http://127.0.0.1:9999/callback") == "form-action 'self' http://127.0.0.1:9999"
    assert form_action("http://[::1]:9999/cb") == "form-action 'self'"  # not a CSP host-source
    rest = decision_csp("https://partner.example/cb").replace(" https://partner.example", "")
    assert rest == SECURITY_HEADERS["Content-Security-Policy"]
