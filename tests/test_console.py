"""The operator console at the HTTP level (the browser journey is test_console_browser.py):
login with CSRF, the session cookie's attributes and lifetime, logout, the security
headers on every console response, the snapshot's data read from the real stack's metrics
and admin API, bounded and validated query input, and the static files (uPlot vendored)."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import pytest
from conftest import Stack

from gateway.console.session import CSRF_TTL_S, SESSION_TTL_S, SessionKeys
from gateway.console.snapshot import PARTNERS_WATCHED_MAX, parse_metrics, rule_hits

# ---- pure: sessions and CSRF tokens (time injected) -------------------------------------------


def test_session_is_valid_for_its_lifetime_only() -> None:
    keys = SessionKeys("admin-token-one")
    cookie = keys.new_session(1_000_000)
    assert keys.session_nonce(cookie, 1_000_000) is not None
    assert keys.session_nonce(cookie, 1_000_000 + SESSION_TTL_S * 1000 - 1) is not None
    assert keys.session_nonce(cookie, 1_000_000 + SESSION_TTL_S * 1000) is None
    assert keys.session_nonce(cookie, 1_000_000 - 60_000) is None  # issued in the future


def test_session_refuses_tampering_and_other_keys() -> None:
    keys = SessionKeys("admin-token-one")
    cookie = keys.new_session(5_000)
    version, issued, nonce, mac = cookie.split(".")
    assert keys.session_nonce(f"{version}.{int(issued) + 1}.{nonce}.{mac}", 5_000) is None
    assert keys.session_nonce(f"{version}.{issued}.{nonce}x.{mac}", 5_000) is None
    assert keys.session_nonce(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), 5_000) is None
    assert SessionKeys("admin-token-two").session_nonce(cookie, 5_000) is None
    assert keys.session_nonce("", 5_000) is None
    assert keys.session_nonce("v1.1.x", 5_000) is None
    assert keys.session_nonce("é" * 10, 5_000) is None
    # a login CSRF token is not a session
    assert keys.session_nonce(keys.new_login_csrf(5_000), 5_000) is None


def test_login_csrf_must_match_its_cookie_and_expires() -> None:
    keys = SessionKeys("admin-token-one")
    token = keys.new_login_csrf(0)
    assert keys.login_csrf_ok(token, token, 1)
    assert not keys.login_csrf_ok(token, keys.new_login_csrf(0), 1)
    assert not keys.login_csrf_ok(None, token, 1)
    assert not keys.login_csrf_ok(token, None, 1)
    assert not keys.login_csrf_ok(token, token, CSRF_TTL_S * 1000)
    forged = "v1.0.abc.deadbeef"
    assert not keys.login_csrf_ok(forged, forged, 1)


def test_logout_csrf_is_bound_to_the_session() -> None:
    keys = SessionKeys("admin-token-one")
    one = keys.session_nonce(keys.new_session(0), 0)
    two = keys.session_nonce(keys.new_session(0), 0)
    assert one is not None and two is not None and one != two
    assert keys.logout_csrf_ok(one, keys.logout_csrf(one))
    assert not keys.logout_csrf_ok(one, keys.logout_csrf(two))
    assert not keys.logout_csrf_ok(one, None)


SAMPLE_METRICS = """\
# HELP quickpay_http_requests_total HTTP requests answered
# TYPE quickpay_http_requests_total counter
quickpay_http_requests_total{method="POST",route="/v1/quick-payments",status="201"} 120.0
quickpay_http_requests_total{method="POST",route="/v1/quick-payments",status="422"} 3.0
quickpay_http_requests_total{method="GET",route="/readyz",status="200"} 50.0
quickpay_http_requests_total{method="GET",route="unmatched",status="404"} 7.0
# HELP quickpay_shard_up 1 when the shard worker answered the scrape's ping
# TYPE quickpay_shard_up gauge
quickpay_shard_up{shard="0"} 1.0
quickpay_shard_up{shard="1"} 0.0
# HELP quickpay_shard_committed_transfers Journal rows committed since start
# TYPE quickpay_shard_committed_transfers counter
quickpay_shard_committed_transfers_total{shard="0"} 321.0
# HELP quickpay_shard_batch_cycle_seconds Whole group-commit cycle
# TYPE quickpay_shard_batch_cycle_seconds gauge
quickpay_shard_batch_cycle_seconds{quantile="0.5",shard="0"} 0.0021
quickpay_shard_batch_cycle_seconds{quantile="0.99",shard="0"} 0.0135
# HELP quickpay_webhook_backlog Webhook deliveries waiting
# TYPE quickpay_webhook_backlog gauge
quickpay_webhook_backlog 4.0
"""


def test_parse_metrics_picks_the_console_figures() -> None:
    parsed = parse_metrics(SAMPLE_METRICS)
    assert [s["shard"] for s in parsed["shards"]] == [0, 1]
    zero, one = parsed["shards"]
    assert zero["up"] is True and one["up"] is False
    assert zero["committed_transfers"] == 321
    assert zero["cycle_p50_ms"] == pytest.approx(2.1) and zero["cycle_p99_ms"] == pytest.approx(13.5)
    assert parsed["payments_answered_2xx"] == 120
    assert parsed["webhooks"] == {"backlog": 4}
    errors = {(e["route"], e["status"]): e["count"] for e in parsed["errors"]}
    assert errors == {("/v1/quick-payments", "422"): 3, ("unmatched", "404"): 7}


def test_rule_hits_count_shadow_rules_apart() -> None:
    def payment(*hits: tuple[str, bool]) -> dict[str, Any]:
        reasons = [
            {"rule_id": r, "action": "review", "score": 10, "shadow": shadow, "values": {}} for r, shadow in hits
        ]
        return {"fraud": {"decision": "review", "score": 10, "reasons": reasons}}

    counted = rule_hits(
        [payment(("velocity", False), ("new_rule", True)), payment(("velocity", False)), {"fraud": None}]
    )
    assert counted == [
        {"rule_id": "velocity", "action": "review", "shadow": False, "hits": 2},
        {"rule_id": "new_rule", "action": "review", "shadow": True, "hits": 1},
    ]


def test_snapshots_are_shared_for_a_moment_per_set_of_partners() -> None:
    import asyncio

    from gateway.console.snapshot import SNAPSHOT_REUSE_S, SnapshotSource

    class Counting(SnapshotSource):
        taken: list[tuple[str, ...]] = []

        async def _take(self, base_url: str, partners: tuple[str, ...]) -> dict[str, Any]:
            self.taken.append(partners)
            return {"n": len(self.taken)}

    async def scenario() -> list[int]:
        source = Counting("admin-token")
        at = 100.0
        seen = [
            (await source.snapshot("http://x", (), at))["n"],
            (await source.snapshot("http://x", (), at + SNAPSHOT_REUSE_S / 2))["n"],  # shared
            (await source.snapshot("http://x", ("ptn_a",), at + SNAPSHOT_REUSE_S / 2))["n"],  # other partners
            (await source.snapshot("http://x", ("ptn_a",), at + SNAPSHOT_REUSE_S * 2))["n"],  # too old
        ]
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2, 3]


# ---- against the shared stack -------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def cookies(self) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        return jar


def request(
    stack: Stack, method: str, path: str, body: bytes | None = None, cookies: dict[str, str] | None = None
) -> Answer:
    """One request, redirects not followed (the console answers 303s)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    headers = {}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def assert_secure_headers(answer: Answer) -> None:
    csp = answer.headers["Content-Security-Policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
    assert directives["default-src"] == "default-src 'self'"
    assert directives["script-src"] == "script-src 'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["style-src"] == "style-src 'self'"
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert "unsafe" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def login(stack: Stack, token: str | None = None) -> tuple[Answer, dict[str, str]]:
    form = request(stack, "GET", "/console/login")
    assert form.status == 200
    csrf_cookie = form.cookies()["qp_console_csrf"].value
    field = re.search(rb'name="csrf" value="([^"]+)"', form.body)
    assert field is not None
    body = urllib.parse.urlencode({"csrf": field.group(1).decode(), "token": token or stack.admin_token}).encode()
    answer = request(stack, "POST", "/console/login", body, {"qp_console_csrf": csrf_cookie})
    jar = answer.cookies()
    return answer, ({"qp_console": jar["qp_console"].value} if "qp_console" in jar else {})


def test_console_redirects_to_login_without_a_session(stack: Stack) -> None:
    answer = request(stack, "GET", "/console")
    assert answer.status == 303 and answer.headers["Location"] == "/console/login"
    assert_secure_headers(answer)
    forged = request(stack, "GET", "/console", cookies={"qp_console": "v1.1.abc.00"})
    assert forged.status == 303


def test_login_form_sets_a_strict_csrf_cookie(stack: Stack) -> None:
    answer = request(stack, "GET", "/console/login")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert_secure_headers(answer)
    morsel = answer.cookies()["qp_console_csrf"]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/console"
    assert b"<script" not in answer.body  # the login page runs no script at all


def test_login_refuses_a_missing_csrf_and_a_wrong_token(stack: Stack) -> None:
    body = urllib.parse.urlencode({"token": stack.admin_token}).encode()
    no_csrf = request(stack, "POST", "/console/login", body)
    assert no_csrf.status == 403 and "qp_console" not in no_csrf.cookies()
    wrong, cookies = login(stack, token="not-the-admin-token")
    assert wrong.status == 401 and cookies == {}
    assert_secure_headers(wrong)
    huge = request(stack, "POST", "/console/login", b"token=" + b"x" * 10_000)
    assert huge.status == 413


def test_login_logout_and_the_session_cookie(stack: Stack) -> None:
    answer, cookies = login(stack)
    assert answer.status == 303 and answer.headers["Location"] == "/console"
    morsel = answer.cookies()["qp_console"]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/console"
    assert int(morsel["max-age"]) == SESSION_TTL_S
    assert stack.admin_token not in answer.headers.get("Set-Cookie", "")

    page = request(stack, "GET", "/console", cookies=cookies)
    assert page.status == 200
    assert_secure_headers(page)
    assert b'src="/console/static/vendor/uPlot.iife.min.js"' in page.body
    assert re.search(rb"<script>|\sstyle=|\son[a-z]+=", page.body) is None  # nothing inline
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert csrf is not None

    stale = request(stack, "POST", "/console/logout", b"csrf=wrong", cookies)
    assert stale.status == 403
    out = request(stack, "POST", "/console/logout", b"csrf=" + csrf.group(1), cookies)
    assert out.status == 303 and out.headers["Location"] == "/console/login"
    assert out.cookies()["qp_console"].value == ""  # cleared in the browser


def test_snapshot_needs_a_session_and_reads_the_real_stack(stack: Stack) -> None:
    refused = request(stack, "GET", "/console/api/snapshot")
    assert refused.status == 401
    assert stack.call("GET", "/console/api/snapshot").body["code"] == "QP.Console.Session"
    # the admin token is not a session: the console API is for the page only
    assert stack.admin("GET", "/console/api/snapshot").status == 401

    _, cookies = login(stack)
    partner = stack.new_partner("<img src=x onerror=alert(1)> Console Partner")
    query = urllib.parse.quote(f"{partner['partner_id']},nosuchpartner")
    answer = request(stack, "GET", f"/console/api/snapshot?partners={query}", cookies=cookies)
    assert answer.status == 200, answer.body
    assert_secure_headers(answer)
    import json

    snap: dict[str, Any] = json.loads(answer.body)
    # the one source not read is the unknown partner's (the page lists it under "Sources not read")
    assert [(p["source"], p["status"]) for p in snap["problems"]] == [("/admin/v1/partners/nosuchpartner", 404)]
    assert snap["fraud"]["enabled"] is False  # the shared stack runs with --no-rules
    assert [s["shard"] for s in snap["metrics"]["shards"]] == list(range(stack.shards))
    assert all(s["up"] for s in snap["metrics"]["shards"])
    assert snap["health"]["status"] in ("ready", "degraded")
    assert len(snap["health"]["shards"]) == stack.shards
    assert {c["name"] for c in snap["health"]["children"]} >= {"postgres"} or snap["health"]["children"]
    found, missing = snap["partners"]
    assert (
        found["partner_id"] == partner["partner_id"] and found["name"] == partner["name"] if "name" in partner else True
    )
    assert found["name"].startswith("<img") and found["disabled"] is False
    assert found["rate_limit"]["requests_per_s"] > 0
    assert missing == {"partner_id": "nosuchpartner", "missing": True}
    listed = {p["partner_id"]: p for p in snap["partner_list"]}
    assert listed[partner["partner_id"]]["name"] == found["name"]
    assert listed[partner["partner_id"]]["pending_agreements"] == 0
    assert listed[partner["partner_id"]]["disabled"] is False
    # the reconciliation status: today open, the two days before closed (GET /admin/v1/reconciliation)
    days = snap["reconciliation"]["days"]
    assert [d["closed"] for d in days] == [False, True, True], days
    assert all(d["summary_state"] in ("read", "reading") for d in days), days
    # the shards' database members (GET /admin/v1/ha): no --ha here, so one server each
    assert snap["ha"]["mode"] == "single"
    assert [[m["role"] for m in s["members"]] for s in snap["ha"]["shards"]] == [["single"]] * stack.shards


def test_snapshot_counts_payments_from_the_metrics(stack: Stack) -> None:
    import json

    logged_in, cookies = login(stack)
    assert cookies, (logged_in.status, logged_in.body[:500])
    partner = stack.new_partner("Console Counting Partner")
    customer = stack.new_customer(partner)
    creditor = stack.new_account()

    def answered() -> int:
        answer = request(stack, "GET", "/console/api/snapshot", cookies=cookies)
        assert answer.status == 200, (answer.status, answer.body[:500])
        snap = json.loads(answer.body)
        assert snap["metrics"] is not None, snap["problems"]
        return int(snap["metrics"]["payments_answered_2xx"])

    import time

    before = answered()
    for _ in range(5):
        assert stack.pay(partner, customer["agreement_id"], creditor, "1.00").status == 201
    time.sleep(0.6)  # past the snapshot's reuse window
    assert answered() >= before + 5


def test_snapshot_query_is_bounded_and_validated(stack: Stack) -> None:
    _, cookies = login(stack)
    too_many = ",".join(f"p{i}" for i in range(PARTNERS_WATCHED_MAX + 1))
    for query in (too_many, "a/b", "x" * 3000, urllib.parse.quote("<script>")):
        answer = request(stack, "GET", f"/console/api/snapshot?partners={query}", cookies=cookies)
        assert answer.status == 400, (query, answer.body)
        assert b'"QP.Query.Invalid"' in answer.body


def test_static_files_are_the_vendored_ones_only(stack: Stack) -> None:
    script = request(stack, "GET", "/console/static/vendor/uPlot.iife.min.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert b"uPlot" in script.body and len(script.body) > 10_000
    assert_secure_headers(script)
    assert request(stack, "GET", "/console/static/console.js").status == 200
    for path in ("/console/static/../routes.py", "/console/static/session.py", "/console/static/vendor/none.js"):
        assert request(stack, "GET", path).status == 404, path


def test_every_static_file_is_package_data() -> None:
    """An installed (non-editable) package must serve the page's files: each one the routes
    serve matches a package-data glob of gateway.console in pyproject.toml, and exists."""
    import fnmatch
    import tomllib

    from conftest import ROOT

    from gateway.console.routes import STATIC_DIR, STATIC_FILES

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "gateway.console"
    ]
    for name in STATIC_FILES:
        assert (STATIC_DIR / name).is_file(), name
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in globs), name
