"""The operator console in a real browser (headless Chromium, tests/browser_support.py),
against a private `quickpay up` stack: log in through the form, the page renders (charts,
every shard listed), the live payments/s figure changes while a bounded, rate-limited load
of payments runs and falls back once it stops, a hostile partner name is shown as text,
the CSP is enforced without violations, the console's responses carry the CSP and frame
headers, the reconciliation table (three days, today's payment and refund counted) and the
database members table (role single without --ha) render with their values, and logout ends
the session. Screenshots go to test-artefacts/console-*.png; console-full-page.png is
README's docs/console.png."""

from __future__ import annotations

import datetime
import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import INSTALL_TIMEOUT_S, Browser, chromium_session, wait_for
from conftest import Stack, start_stack, stop_stack

# On a fresh machine the first browser test installs Chromium (scripts/install-browser-deps)
# inside its own run: room for that on top of the suite's 300 s per test.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)

LOAD_PAYMENTS = 600  # bounded load: this many payments...
LOAD_RATE_PER_S = 50.0  # ...at about this rate (12 s: several 2 s refreshes), from one thread
LOAD_CUSTOMERS = 40  # 15 payments each, below the default rules' velocity limit
PAGE_WAIT_S = 30.0
FULL_PAGE_HEIGHT_MAX = 6000  # pixels: the full-page screenshot's window
HOSTILE_NAME = "<img src=x onerror=\"document.title='pwned'\"> Console & Co"


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # With the fraud filter (the default rules), so the console has decisions to explain.
    stack = start_stack(tmp_path_factory.mktemp("console-browser"), flags=("--no-monitor",))
    try:
        yield stack
    finally:
        stop_stack(stack)


def headers_of(stack: Stack, path: str) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def run_load(
    stack: Stack, partner: dict[str, Any], customers: list[dict[str, str]], creditor: str, results: list[str]
) -> None:
    interval_s = 1.0 / LOAD_RATE_PER_S
    started = time.monotonic()
    for i in range(LOAD_PAYMENTS):
        agreement_id = customers[i % len(customers)]["agreement_id"]
        reply = stack.pay(partner, agreement_id, creditor, "0.01", key=f"console-load-{uuid.uuid4().hex}")
        results.append(f"{reply.status} {reply.body.get('status') if isinstance(reply.body, dict) else ''}")
        pause = started + (i + 1) * interval_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def payments_per_s(browser: Browser) -> float | None:
    from selenium.webdriver.common.by import By

    text = browser.driver.find_element(By.ID, "payments-per-s").text.strip()
    try:
        return float(text)
    except ValueError:
        return None


def test_console_in_a_real_browser(console_stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    stack = console_stack
    # The console's responses carry the CSP and frame headers (the browser enforces them below).
    for path in ("/console", "/console/login", "/console/static/console.js", "/console/static/vendor/uPlot.min.css"):
        headers = headers_of(stack, path)
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert "unsafe-inline" not in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY", path

    # One payment the default rules block (its creditor on the block list), for the decisions table.
    blocked_creditor = stack.new_account()
    listed = stack.admin("POST", "/admin/v1/fraud/lists/blocked_accounts", {"add": [blocked_creditor]})
    assert listed.status == 200, listed.body
    hostile = stack.new_partner(HOSTILE_NAME)
    stack.new_customer(hostile, funding="", authorise=False)  # one agreement pending for the list
    partner = stack.new_partner("Console Load Partner")
    # Enough customers that none reaches the default rules' velocity limit (20 in 10 minutes).
    customers = [stack.new_customer(partner, funding="10.00") for _ in range(LOAD_CUSTOMERS)]
    customer = customers[0]
    creditor = stack.new_account()
    blocked = stack.pay(partner, customer["agreement_id"], blocked_creditor, "1.00")
    assert blocked.status == 201 and blocked.body["status"] == "Rejected", blocked.body
    # Today's reconciliation rows before the page opens (its first count of the open day has them):
    # a payment to the partner's settlement account and a refund of part of it.
    settled = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "2.00")
    assert settled.body["status"] == "AcceptedSettlementCompleted", settled.body
    refund = stack.call(
        "POST",
        f"/v1/quick-payments/{settled.body['payment_id']}/refunds",
        {"amount": "0.50"},
        token=partner["token"],
        headers={"x-idempotency-key": uuid.uuid4().hex},
    )
    assert refund.body["status"] == "Succeeded", refund.body

    with chromium_session("console") as browser:
        driver = browser.driver
        driver.get(stack.url("/console"))
        wait_for(lambda: driver.current_url.endswith("/console/login"), PAGE_WAIT_S, "the redirect to the login form")
        browser.screenshot("login")

        # a wrong token is refused and the form is shown again
        driver.find_element(By.ID, "token").send_keys("not-the-admin-token")
        driver.find_element(By.ID, "login").click()
        wait_for(lambda: driver.find_elements(By.ID, "login-error"), PAGE_WAIT_S, "the login error")
        assert "qp_console" not in {c["name"] for c in driver.get_cookies()}
        refused = browser.console_errors()  # drains the log: the 401 of that POST is expected
        assert all("401" in e["message"] for e in refused), refused

        driver.find_element(By.ID, "token").send_keys(stack.admin_token)
        driver.find_element(By.ID, "login").click()
        wait_for(lambda: driver.current_url.endswith("/console"), PAGE_WAIT_S, "the console after login")
        session = next(c for c in driver.get_cookies() if c["name"] == "qp_console")
        assert session["httpOnly"] is True and session["sameSite"] == "Strict"
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it

        # renders: both charts drawn, every shard listed, the health status shown
        wait_for(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#shards tbody tr")) == stack.shards,
            PAGE_WAIT_S,
            "every shard in the table",
        )
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".uplot canvas")) >= 2, PAGE_WAIT_S, "two charts")
        shard_cells = [
            r.find_element(By.TAG_NAME, "td").text for r in driver.find_elements(By.CSS_SELECTOR, "#shards tbody tr")
        ]
        assert shard_cells == [str(i) for i in range(stack.shards)]
        assert driver.find_element(By.ID, "status").text in ("ready", "degraded")

        # the fraud decision and the rule that fired, with the value it saw; the rule-set version
        wait_for(
            lambda: any(
                "blocked_creditor (block, +100)" in c.text and blocked_creditor in c.text
                for c in driver.find_elements(By.CSS_SELECTOR, "#decisions td")
            ),
            PAGE_WAIT_S,
            "the blocked payment's decision explained",
        )
        hits = {
            r.find_element(By.TAG_NAME, "td").text for r in driver.find_elements(By.CSS_SELECTOR, "#rule-hits tbody tr")
        }
        assert "blocked_creditor" in hits
        versions = driver.find_elements(By.CSS_SELECTOR, "#versions tr")
        assert len(versions) >= 2 and "yes" in versions[1].text  # a header and the active version

        # watch two partners: the hostile name is text, not markup
        watch = driver.find_element(By.ID, "watch")
        watch.clear()
        watch.send_keys(f"{hostile['partner_id']},{partner['partner_id']}")
        driver.find_element(By.CSS_SELECTOR, "#watch-form button").click()
        wait_for(
            lambda: any(HOSTILE_NAME == c.text for c in driver.find_elements(By.CSS_SELECTOR, "#partners td")),
            PAGE_WAIT_S,
            "the hostile partner name shown as text",
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#partners img") == []

        # every partner is listed (without watching): state, rate limit and pending agreements
        def listed_row(partner_id: str) -> list[str]:
            for row in driver.find_elements(By.CSS_SELECTOR, "#partner-list tbody tr"):
                cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
                if cells and cells[0] == partner_id:
                    return cells
            return []

        wait_for(lambda: listed_row(hostile["partner_id"]), PAGE_WAIT_S, "the hostile partner in the partner list")
        name, enabled, rate_limit, pending = listed_row(hostile["partner_id"])[1:5]
        assert (name, enabled, pending) == (HOSTILE_NAME, "enabled", "1")
        assert rate_limit.endswith("(default)") and "/s, burst " in rate_limit
        assert listed_row(partner["partner_id"])[4] == "0"  # its agreements are all authorised
        assert driver.find_elements(By.CSS_SELECTOR, "#partner-list img") == []
        assert driver.find_element(By.ID, "partner-list-more").text.endswith("partners.")
        assert driver.title != "pwned"

        # the reconciliation status: today open (its files provisional), the two days before closed
        def cells(table: str) -> list[list[str]]:
            # One script reads the whole table: the page redraws every 2 s, and reading it
            # element by element could meet a row the redraw replaced (StaleElementReference).
            rows: list[list[str]] = driver.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]),"
                " r => Array.from(r.querySelectorAll('td'), c => c.innerText.trim()))",
                f"#{table} tbody tr",
            )
            return rows

        wait_for(
            lambda: len(recon := cells("recon")) == 3 and all(r[2].isdigit() for r in recon),
            PAGE_WAIT_S,
            "three days counted in the reconciliation table",
        )
        today, yesterday, before = cells("recon")
        days = [datetime.date.fromisoformat(r[0]) for r in (today, yesterday, before)]
        assert days == [days[0] - datetime.timedelta(days=n) for n in range(3)], days
        assert today[1].startswith("provisional (closes ") and yesterday[1] == before[1] == "final (closed)"
        # this stack's journal began today: the closed days hold nothing; today the payment and refund above
        assert yesterday[2] == before[2] == "0" and yesterday[3] == "0" and yesterday[7] == "the whole day"
        assert today[2:7] == ["2", "1 (2.00 CNY)", "0", "1 (0.50 CNY)", "1.50 CNY"], today
        assert today[7].startswith(days[0].isoformat() + "T")  # as of

        # the shards' database members: one server each (no --ha), said in the shard table too
        assert cells("ha") == [[str(i), "(one server)", "single", "", "", "", ""] for i in range(stack.shards)]
        assert [r[8] for r in cells("shards")] == ["single"] * stack.shards
        assert driver.find_element(By.ID, "ha-mode").text.startswith("Each shard's database is one server")

        # the live figure: idle first, then it moves while the load runs
        wait_for(lambda: payments_per_s(browser) is not None, PAGE_WAIT_S, "a first payments/s reading")
        idle = payments_per_s(browser)
        assert idle is not None and idle < 5.0, idle
        results: list[str] = []
        load = threading.Thread(target=run_load, args=(stack, partner, customers, creditor, results), daemon=True)
        load.start()
        try:
            seen = wait_for(
                lambda: (v := payments_per_s(browser)) is not None and v >= 10.0 and v,
                PAGE_WAIT_S,
                "the payments/s figure to rise under load",
            )
            browser.screenshot("under-load")
            # The whole page (every panel) for README's docs/console.png: the window as tall as the page.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, min(int(height) + 160, FULL_PAGE_HEIGHT_MAX))
            browser.screenshot("full-page")
            driver.set_window_size(1400, 1800)
            assert load.is_alive(), "the figure must move while the load still runs"
        finally:
            load.join(LOAD_PAYMENTS / LOAD_RATE_PER_S * 4 + 30)
        assert not load.is_alive()
        accepted = sum(1 for r in results if r.startswith("201 Accepted"))  # InProcess: a cross-shard credit
        assert accepted == LOAD_PAYMENTS, {s: results.count(s) for s in set(results)}
        assert seen <= LOAD_RATE_PER_S * 3, seen  # a rate, not a count
        # and it falls back once the load has stopped
        wait_for(lambda: (v := payments_per_s(browser)) is not None and v < 5.0, PAGE_WAIT_S, "the figure to fall back")
        rate_points = driver.execute_script(
            "return document.querySelectorAll('#chart-rate .u-legend .u-series').length"
        )
        assert rate_points >= stack.shards + 1  # the time axis and one series per shard
        browser.screenshot("after-load")

        # the page ran under its CSP without a single violation or script error
        errors = browser.console_errors()
        assert errors == [], errors

        driver.find_element(By.ID, "logout").click()
        wait_for(lambda: driver.current_url.endswith("/console/login"), PAGE_WAIT_S, "the login form after logout")
        assert "qp_console" not in {c["name"] for c in driver.get_cookies()}
        driver.get(stack.url("/console"))
        wait_for(lambda: driver.current_url.endswith("/console/login"), PAGE_WAIT_S, "no console without a session")


def test_ensure_browser_installs_as_root_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The fixture's set-up on a machine without Chromium: as root it runs
    scripts/install-browser-deps (faked here: it "installs" into tmp_path); as anyone else the
    test is skipped with the command to run."""
    import subprocess

    import browser_support

    chromium, driver = tmp_path / "chromium", tmp_path / "chromedriver"
    monkeypatch.setattr(browser_support, "CHROMIUM", chromium)
    monkeypatch.setattr(browser_support, "CHROMEDRIVER", driver)
    calls: list[list[str]] = []

    def fake_install(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        chromium.write_text("")
        driver.write_text("")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(browser_support.subprocess, "run", fake_install)
    monkeypatch.setattr(browser_support.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="install-browser-deps"):
        browser_support.ensure_browser()
    assert calls == []
    monkeypatch.setattr(browser_support.os, "geteuid", lambda: 0)
    browser_support.ensure_browser()
    assert calls == [[str(browser_support.ROOT / "scripts" / "install-browser-deps")]]
    browser_support.ensure_browser()  # present now: nothing run again
    assert len(calls) == 1
