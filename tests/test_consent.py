"""The customer's consent redirect flow (issue 20, part 1), at the HTTP level against the real
stack: a partner registers exact redirect URIs; an agreement created with one of them (and a
`state`) returns `authorisation_url`; the customer opens it, asks for a code sent to the
phone the bank holds, reads it (here: from the simulated SMS outbox through the admin API),
enters it and authorises or declines; the answer is a 303 to the registered URI with the
agreement id, the state and the outcome only, and the agreement changed exactly as the admin
call changes it. Also: declines, expiry, three wrong codes, a replayed link, a tampered state,
an unregistered redirect URI, CSRF, the security headers and an HTML-injection partner name.

The browser client is httpx with redirects not followed (to assert Location) and its own
cookie jar per customer."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Stack, start_stack, stop_stack

REDIRECT = "https://partner.example/consent/done"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def new_partner(stack: Stack, name: str = "Consent Partner", uris: list[str] | None = None) -> dict[str, Any]:
    partner = stack.new_partner(name)
    reply = stack.admin(
        "PUT", f"/admin/v1/partners/{partner['partner_id']}/redirect-uris", {"redirect_uris": uris or [REDIRECT]}
    )
    assert reply.status == 200, reply.body
    return partner


def new_customer(stack: Stack, phone: str | None = None) -> tuple[str, str]:
    """A funded account with a phone (unique per test, so SMS reads cannot mix)."""
    phone = phone or "+861" + str(uuid.uuid4().int)[:10]
    account = stack.new_account()
    stack.fund(account, "1000.00")
    reply = stack.admin("PUT", f"/admin/v1/accounts/{account}/phone", {"phone": phone})
    assert reply.status == 200, reply.body
    return account, phone


def create_agreement(stack: Stack, partner: dict[str, Any], account: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"debtor_account": account, "currency": "CNY", "per_payment_limit": "50.00", "daily_limit": "200.00"}
    reply = stack.call("POST", "/v1/agreements", {**body, **extra}, token=partner["token"])
    return reply.status, reply.body


def consent_link(stack: Stack, partner: dict[str, Any], account: str, state: str = "st-1") -> dict[str, Any]:
    status, body = create_agreement(stack, partner, account, redirect_uri=REDIRECT, state=state)
    assert status == 201, body
    assert body["status"] == "AwaitingAuthorisation"
    assert body["authorisation_url"].startswith(stack.base_url + "/consent/")
    return body


def csrf_of(response: httpx.Response) -> str:
    found = CSRF.search(response.text)
    assert found is not None, response.text
    return found.group(1)


def last_code(stack: Stack, account: str) -> str:
    reply = stack.admin("GET", f"/admin/v1/sms?account_id={account}&limit=200")
    assert reply.status == 200, reply.body
    messages = reply.body["messages"]
    assert messages, "no SMS sent"
    found = re.search(r"\b(\d{6})\b", messages[-1]["text"])
    assert found is not None, messages[-1]
    return found.group(1)


@pytest.fixture
def browser(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, follow_redirects=False, timeout=30) as client:
        yield client


def sign_in(stack: Stack, browser: httpx.Client, url: str, account: str) -> tuple[str, str]:
    """Open the link, ask for a code, enter it: (the link's path, the decision form's CSRF token)."""
    path = urllib.parse.urlsplit(url).path
    page = browser.get(path)
    assert page.status_code == 200, page.text
    sent = browser.post(path + "/code", data={"csrf": csrf_of(page)})
    assert sent.status_code == 200, sent.text
    assert 'name="code"' in sent.text
    verified = browser.post(path + "/verify", data={"csrf": csrf_of(sent), "code": last_code(stack, account)})
    assert verified.status_code == 200, verified.text
    assert 'value="authorise"' in verified.text
    # The decision page's form may end at the partner's registered origin (browsers apply
    # form-action to the 303 after the POST too: tests/test_consent_browser.py); no other page's.
    assert "form-action 'self' https://partner.example;" in verified.headers["content-security-policy"]
    assert "form-action 'self';" in sent.headers["content-security-policy"]
    return path, csrf_of(verified)


def test_whole_journey_authorise_then_pay(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account, state="opaque/state?x=1&y=<2>")
    path, csrf = sign_in(stack, browser, agreement["authorisation_url"], account)

    done = browser.post(path + "/decision", data={"csrf": csrf, "decision": "authorise", "evil": "x"})
    assert done.status_code == 303, done.text
    location = urllib.parse.urlsplit(done.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    assert urllib.parse.parse_qs(location.query) == {
        "agreement_id": [agreement["agreement_id"]],
        "state": ["opaque/state?x=1&y=<2>"],
        "outcome": ["authorised"],
    }
    shown = stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=partner["token"]).body
    assert shown["status"] == "Authorised"
    # The same transition the admin call records: by the customer.
    assert shown["status_history"][-1]["by"] == "customer"
    assert shown["status_history"][-1]["to"] == "Authorised"
    paid = stack.pay(partner, agreement["agreement_id"], partner["settlement_account"], "10.00")
    assert paid.status == 201, paid.body
    assert paid.body["status"] in ("AcceptedSettlementCompleted", "AcceptedSettlementInProcess"), paid.body
    # The same event the admin call produces, in the partner's feed.
    deadline = time.monotonic() + 30
    while True:
        events = stack.call("GET", "/v1/events?type=agreement.authorised", token=partner["token"]).body["events"]
        if any(e["data"]["object"]["agreement_id"] == agreement["agreement_id"] for e in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.2)


def test_decline_rejects_and_redirects(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account, state="s2")
    path, csrf = sign_in(stack, browser, agreement["authorisation_url"], account)
    done = browser.post(path + "/decision", data={"csrf": csrf, "decision": "decline"})
    assert done.status_code == 303
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(done.headers["location"]).query)
    assert query == {"agreement_id": [agreement["agreement_id"]], "state": ["s2"], "outcome": ["declined"]}
    shown = stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=partner["token"]).body
    assert shown["status"] == "Rejected"
    paid = stack.pay(partner, agreement["agreement_id"], partner["settlement_account"], "10.00")
    assert paid.status == 422, paid.body


def test_replayed_link_is_refused(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path, csrf = sign_in(stack, browser, agreement["authorisation_url"], account)
    assert browser.post(path + "/decision", data={"csrf": csrf, "decision": "authorise"}).status_code == 303
    again = browser.get(path)
    assert again.status_code == 410
    assert "QP.Consent.LinkUsed" in again.text
    replay = browser.post(path + "/decision", data={"csrf": csrf, "decision": "decline"})
    assert replay.status_code == 410
    shown = stack.call("GET", f"/v1/agreements/{agreement['agreement_id']}", token=partner["token"]).body
    assert shown["status"] == "Authorised"


def test_three_wrong_codes_lock_the_code(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    page = browser.get(path)
    sent = browser.post(path + "/code", data={"csrf": csrf_of(page)})
    right = last_code(stack, account)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    answers = [browser.post(path + "/verify", data={"csrf": csrf_of(sent), "code": wrong}) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 403]
    assert "2 tries left" in answers[0].text and "1 try left" in answers[1].text
    # The right code no longer works once locked, and nothing was decided.
    late = browser.post(path + "/verify", data={"csrf": csrf_of(sent), "code": right})
    assert late.status_code == 403
    assert 'value="authorise"' not in late.text
    decision = browser.post(path + "/decision", data={"csrf": csrf_of(sent), "decision": "authorise"})
    assert decision.status_code == 403
    assert stack.admin("GET", f"/admin/v1/agreements/{agreement['agreement_id']}").body["status"] == (
        "AwaitingAuthorisation"
    )


def test_codes_are_rate_limited_per_account(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    csrf = csrf_of(browser.get(path))
    statuses = [browser.post(path + "/code", data={"csrf": csrf}).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    sms = stack.admin("GET", f"/admin/v1/sms?account_id={account}").body["messages"]
    assert len(sms) == 5


def test_state_cannot_be_tampered_with(stack: Stack, browser: httpx.Client) -> None:
    """The redirect carries the stored state and registered URI, whatever the request adds."""
    partner = new_partner(stack, uris=[REDIRECT, "https://partner.example/other"])
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account, state="the-real-state")
    path, csrf = sign_in(stack, browser, agreement["authorisation_url"], account)
    done = browser.post(
        path + "/decision?state=forged&redirect_uri=https://evil.example/",
        data={"csrf": csrf, "decision": "authorise", "state": "forged", "redirect_uri": "https://evil.example/"},
    )
    assert done.status_code == 303
    location = urllib.parse.urlsplit(done.headers["location"])
    assert location.netloc == "partner.example" and location.path == "/consent/done"
    assert urllib.parse.parse_qs(location.query)["state"] == ["the-real-state"]
    # A link token that is not ours (altered by one character) opens nothing.
    token = path.rsplit("/", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert browser.get("/consent/" + forged).status_code == 404


def test_unregistered_or_bad_redirect_uri_is_refused(stack: Stack) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    for uri in (REDIRECT + "/", REDIRECT + "?x=1", "https://partner.example/consent/don", "https://evil.example/"):
        status, body = create_agreement(stack, partner, account, redirect_uri=uri, state="s")
        assert status == 422, (uri, body)
        assert body["code"] == "QP.Agreement.RedirectUriNotRegistered"
    status, body = create_agreement(stack, partner, account, state="s")
    assert status == 422 and body["code"] == "QP.Agreement.StateWithoutRedirect"
    status, body = create_agreement(stack, partner, account, redirect_uri=REDIRECT, state="x" * 257)
    assert status == 400, body
    # Registration: https only (http to loopback for local use), no fragment, no credentials, bounded.
    url = f"/admin/v1/partners/{partner['partner_id']}/redirect-uris"
    for bad in (
        "http://partner.example/cb",
        "https://partner.example/cb#frag",
        "https://u:p@partner.example/cb",
        # An IPv6 literal: the decision page's CSP could not name its origin, and Chromium
        # would block the 303 to it (tests/test_consent_browser.py saw that form-action rule).
        "http://[::1]:9999/cb",
        "https://[2001:db8::1]/cb",
    ):
        reply = stack.admin("PUT", url, {"redirect_uris": [bad]})
        assert reply.status == 422, (bad, reply.body)
        assert reply.body["code"] == "QP.RedirectUri.Invalid"
    reply = stack.admin("PUT", url, {"redirect_uris": [f"https://p.example/{i}" for i in range(11)]})
    assert reply.status == 400
    reply = stack.admin("PUT", url, {"redirect_uris": ["https://p.example/" + "a" * 600]})
    assert reply.status == 400
    reply = stack.admin("PUT", url, {"redirect_uris": ["http://127.0.0.1:8080/cb", REDIRECT]})
    assert reply.status == 200 and reply.body["redirect_uris"] == sorted(["http://127.0.0.1:8080/cb", REDIRECT])
    # Without redirect_uri an agreement is created as before, with no link.
    status, body = create_agreement(stack, partner, account)
    assert status == 201 and "authorisation_url" not in body


def test_security_headers_and_escaped_partner_name(stack: Stack, browser: httpx.Client) -> None:
    name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    partner = new_partner(stack, name=name)
    account, phone = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    page = browser.get(urllib.parse.urlsplit(agreement["authorisation_url"]).path)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    for directive in ("default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    # Only this customer's account and phone, masked; no other partner's data.
    assert account not in page.text and phone not in page.text
    assert account[-4:] in page.text and phone[-4:] in page.text
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    css = browser.get("/consent/static/consent.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # The page names its icon, so a browser does not fetch /favicon.ico (the API's JSON 404).
    assert '<link rel="icon" href="/consent/static/favicon.svg"' in page.text
    icon = browser.get("/consent/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg") and "img-src 'self'" in icon.headers["content-security-policy"]


def test_csrf_missing_or_wrong_is_refused(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    csrf = csrf_of(browser.get(path))
    assert browser.post(path + "/code", data={}).status_code == 403
    assert browser.post(path + "/code", data={"csrf": csrf[:-1] + "x"}).status_code == 403
    # A cross-site form carries no cookie (SameSite=Strict): the right field alone is not enough.
    with httpx.Client(base_url=stack.base_url, follow_redirects=False) as other:
        assert other.post(path + "/code", data={"csrf": csrf}).status_code == 403
    assert stack.admin("GET", f"/admin/v1/sms?account_id={account}").body["messages"] == []


def test_account_without_phone_cannot_get_a_code(stack: Stack, browser: httpx.Client) -> None:
    partner = new_partner(stack)
    account = stack.new_account()
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    page = browser.get(path)
    assert page.status_code == 200 and "no phone number" in page.text
    assert 'name="csrf"' not in page.text  # no form to send a code
    assert browser.post(path + "/code", data={"csrf": browser.cookies["qp_csrf"]}).status_code == 409
    # The phone can also be given when the account is opened.
    opened = stack.admin("POST", "/admin/v1/accounts", {"currency": "CNY", "phone": "+8613800138000"})
    assert opened.status == 201 and opened.body["phone"] == "+8613800138000"
    assert stack.admin("POST", "/admin/v1/accounts", {"currency": "CNY", "phone": "12345"}).status == 400


@pytest.fixture(scope="module")
def short_link_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack whose links expire after 2 s (QUICKPAY_CONSENT_LINK_TTL_S)."""
    os.environ["QUICKPAY_CONSENT_LINK_TTL_S"] = "2"
    try:
        s = start_stack(tmp_path_factory.mktemp("consent-expiry"), shards=1, workers=1)
    finally:
        del os.environ["QUICKPAY_CONSENT_LINK_TTL_S"]
    try:
        yield s
    finally:
        stop_stack(s)


def test_link_expires(short_link_stack: Stack) -> None:
    stack = short_link_stack
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    with httpx.Client(base_url=stack.base_url, follow_redirects=False) as browser:
        page = browser.get(path)
        assert page.status_code == 200
        time.sleep(2.5)
        late = browser.get(path)
        assert late.status_code == 410 and "QP.Consent.LinkExpired" in late.text
        assert browser.post(path + "/code", data={"csrf": csrf_of(page)}).status_code == 410
    assert stack.admin("GET", f"/admin/v1/agreements/{agreement['agreement_id']}").body["status"] == (
        "AwaitingAuthorisation"
    )
    # The partner asks for another link for the agreement still waiting: it works (until it expires too).
    again = stack.call(
        "POST",
        f"/v1/agreements/{agreement['agreement_id']}/authorisation-url",
        {"redirect_uri": REDIRECT, "state": "second"},
        token=partner["token"],
    )
    assert again.status == 201, again.body
    assert again.body["authorisation_url"] != agreement["authorisation_url"]
    with httpx.Client(base_url=stack.base_url, follow_redirects=False) as browser:
        assert browser.get(urllib.parse.urlsplit(again.body["authorisation_url"]).path).status_code == 200


def test_sdk_creates_with_redirect_and_verifies_the_callback(stack: Stack, browser: httpx.Client) -> None:
    from quickpay_sdk import Client, ConsentCallbackError, new_state, verify_callback

    partner = new_partner(stack)
    account, _ = new_customer(stack)
    state = new_state()
    with Client(stack.base_url, partner["client_id"], partner["client_secret"]) as qp:
        agreement = qp.create_agreement_with_redirect(
            account, "CNY", "50.00", redirect_uri=REDIRECT, state=state, daily_limit="200.00"
        )
    path, csrf = sign_in(stack, browser, agreement["authorisation_url"], account)
    location = browser.post(path + "/decision", data={"csrf": csrf, "decision": "authorise"}).headers["location"]
    callback = verify_callback(location, expected_state=state, expected_agreement_id=agreement["agreement_id"])
    assert callback.authorised and callback.agreement_id == agreement["agreement_id"]
    tampered = location.replace("state=", "state=x")
    with pytest.raises(ConsentCallbackError):
        verify_callback(tampered, expected_state=state)
    with pytest.raises(ConsentCallbackError):
        verify_callback(location + "&state=" + state, expected_state=state)  # two states
    with pytest.raises(ConsentCallbackError):
        verify_callback(location, expected_state=new_state())


def test_cli_registers_redirect_uris_and_tails_the_sms_outbox(stack: Stack) -> None:
    import json
    import subprocess
    import sys

    partner = stack.new_partner("CLI Partner")
    common = ["--url", stack.base_url, "--state-dir", str(stack.state_dir)]

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quickpay.cli", *argv], capture_output=True, text=True, timeout=60, check=False
        )

    done = cli("partners", "redirect-uris", partner["partner_id"], REDIRECT, "http://localhost:9000/cb", *common)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["redirect_uris"] == sorted([REDIRECT, "http://localhost:9000/cb"])
    shown = cli("partners", "redirect-uris", partner["partner_id"], *common)
    assert json.loads(shown.stdout)["redirect_uris"] == sorted([REDIRECT, "http://localhost:9000/cb"])
    refused = cli("partners", "redirect-uris", partner["partner_id"], "http://partner.example/cb", *common)
    assert refused.returncode == 1 and "QP.RedirectUri.Invalid" in refused.stderr

    account, phone = new_customer(stack)
    agreement = consent_link(
        stack, {**partner, "token": stack.partner_token(partner["client_id"], partner["client_secret"])}, account
    )
    with httpx.Client(base_url=stack.base_url, follow_redirects=False) as browser:
        path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
        assert browser.post(path + "/code", data={"csrf": csrf_of(browser.get(path))}).status_code == 200
    tail = cli("sms", "tail", "--phone", phone, *common)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 1 and phone in lines[0] and last_code(stack, account) in lines[0]


def test_link_of_an_agreement_decided_in_the_back_office(stack: Stack, browser: httpx.Client) -> None:
    """The admin call stays (the bank's back office); a link to an agreement it decided sends no code."""
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    path = urllib.parse.urlsplit(agreement["authorisation_url"]).path
    csrf = csrf_of(browser.get(path))
    stack.agreement_action(agreement["agreement_id"], "authorise")
    page = browser.get(path)
    assert page.status_code == 409 and "QP.Consent.NotAwaiting" in page.text
    assert browser.post(path + "/code", data={"csrf": csrf}).status_code == 409
    assert stack.admin("GET", f"/admin/v1/sms?account_id={account}").body["messages"] == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"csrf=\xff\xfe"),
        ("application/x-www-form-urlencoded; charset=bogus", b"csrf=a"),
        ("multipart/form-data; boundary=xx", b"garbage"),
        ("multipart/form-data", b"garbage"),
        ("application/json", b'{"csrf": "x"}'),
        ("application/x-www-form-urlencoded", b"csrf=" + b"a" * 70_000),
    ],
)
def test_unreadable_forms_are_4xx_never_5xx(stack: Stack, content_type: str, body: bytes) -> None:
    """Broken bodies on every form endpoint: a prompt 4xx (400/403/413), never a 500."""
    partner = new_partner(stack)
    account, _ = new_customer(stack)
    path = urllib.parse.urlsplit(consent_link(stack, partner, account)["authorisation_url"]).path
    with httpx.Client(base_url=stack.base_url, follow_redirects=False, timeout=30) as client:
        client.get(path)
        for target in (path + "/code", path + "/verify", path + "/decision", "/portal/login", "/portal/verify"):
            answer = client.post(target, content=body, headers={"content-type": content_type})
            assert answer.status_code in (400, 403, 413), (target, answer.status_code, answer.text[:300])


def test_another_link_for_a_waiting_agreement_only(stack: Stack, browser: httpx.Client) -> None:
    partner, other = new_partner(stack), new_partner(stack, name="Other Partner")
    account, _ = new_customer(stack)
    agreement = consent_link(stack, partner, account)
    url = f"/v1/agreements/{agreement['agreement_id']}/authorisation-url"
    # Another partner cannot ask for a link to this agreement, and an unregistered URI is refused.
    assert stack.call("POST", url, {"redirect_uri": REDIRECT}, token=other["token"]).status == 404
    unregistered = stack.call("POST", url, {"redirect_uri": "https://evil.example/"}, token=partner["token"])
    assert unregistered.status == 422 and unregistered.body["code"] == "QP.Agreement.RedirectUriNotRegistered"
    # Five links per agreement at most (the creation's included).
    answers = [stack.call("POST", url, {"redirect_uri": REDIRECT}, token=partner["token"]) for _ in range(5)]
    assert [a.status for a in answers] == [201, 201, 201, 201, 409]
    assert answers[-1].body["code"] == "QP.Agreement.TooManyLinks"
    # A link without state redirects without one; once decided, no more links.
    path, csrf = sign_in(stack, browser, answers[0].body["authorisation_url"], account)
    done = browser.post(path + "/decision", data={"csrf": csrf, "decision": "authorise"})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(done.headers["location"]).query)
    assert query == {"agreement_id": [agreement["agreement_id"]], "outcome": ["authorised"]}
    # The other links of the agreement now show it is decided.
    assert browser.get(urllib.parse.urlsplit(answers[1].body["authorisation_url"]).path).status_code == 409
    fresh = new_partner(stack)
    account2, _ = new_customer(stack)
    decided = consent_link(stack, fresh, account2)
    stack.agreement_action(decided["agreement_id"], "reject")
    late = stack.call(
        "POST",
        f"/v1/agreements/{decided['agreement_id']}/authorisation-url",
        {"redirect_uri": REDIRECT},
        token=fresh["token"],
    )
    assert late.status == 409 and late.body["code"] == "QP.Agreement.InvalidTransition"
