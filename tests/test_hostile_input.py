"""Hostile input against a live stack (issue 7 §1): every refusal is a prompt 4xx in the one
error shape with x-fapi-interaction-id, never a 5xx, whatever a partner (or an admin) sends:
control characters, NUL, Unicode digits and look-alikes, huge and negative numbers, int64
edges, exponents, wrong JSON types, long and deeply nested values, bad cursors, odd methods,
bad content types, invalid UTF-8, abused headers. Bodies are also fuzzed with Hypothesis
(bounded, derandomized).

Regressions: `GET /v1/quick-payments/pay_<hex>_²` was a plain-text 500; a body that is not
UTF-8 was a plain-text 500; a cursor holding 2**63 or more was a 500 (or, beyond 2**64, broke
other partners' calls); limit "１０" (fullwidth) was read as 10; "agr_x\\n" passed the id pattern.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Reply, Stack, http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROMPT_S = 20.0  # every answer must come back; this bounds the wait, it does not measure speed

CONTROL = [
    "\x00",
    "a\x00b",
    "\x01",
    "\x08",
    "\x1b[31m",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "line\nbreak",
    "tab\there",
    "cr\r",
    "end\n",
]
UNICODE_DIGITS = ["\u00b2", "\u0663", "\uff11\uff12", "\u0661.\u0660\u0660", "1\u00b2", "\u2460", "\U0001d7d9"]
BAD_AMOUNTS = [
    *UNICODE_DIGITS,
    "1e3",
    "1E3",
    "1e-2",
    "-1",
    "+1",
    " 1",
    "1 ",
    "0x10",
    "1_000",
    "9" * 40,
    "92233720368547758.08",
    "99999999999999999999999",
    "-92233720368547758.08",
    "0",
    "0.00",
    "1.001",
    "",
    ".5",
    "1.",
    "1..0",
    "NaN",
    "Infinity",
    "-0",
    "1,00",
    "\x00",
    "1\x00",
]
WRONG_TYPES: list[Any] = [
    None,
    1,
    -1,
    0,
    1.5,
    1e308,
    True,
    False,
    [],
    {},
    ["x"],
    {"a": "b"},
    2**63,
    2**64,
    -(2**63) - 1,
]
NESTED_LIST: Any = []
for _ in range(300):
    NESTED_LIST = [NESTED_LIST]
NESTED_MAP: Any = {}
for _ in range(300):
    NESTED_MAP = {"a": NESTED_MAP}
LONG = ["x" * 141, "\u00e9" * 141, "\U0001f600" * 141, "x" * 20_000, NESTED_LIST, NESTED_MAP]
BAD_IDS = [
    "agr_\u00e9",
    "agr_../x",
    "agr_ x",
    "",
    "agr_" + "a" * 100,
    "\uff41gr_x",
    "agr_x\n",
    "agr_\x00",
    "acc_x\n",
    "acc_\x00",
    "acc_\u0663",
    "set_ptn_\u00b2",
    " acc_x",
    "x" * 65,
]


def assert_refused(reply: Reply, what: Any, *statuses: int) -> None:
    assert 400 <= reply.status < 500, (what, reply.status, reply.body)
    if statuses:
        assert reply.status in statuses, (what, reply.status, reply.body)
    body = reply.body
    assert isinstance(body, dict) and set(body) == {"code", "message", "errors"}, (what, body)
    assert isinstance(body["code"], str) and body["code"] and isinstance(body["message"], str), (what, body)
    assert isinstance(body["errors"], list), (what, body)
    for item in body["errors"]:
        assert set(item) == {"code", "message", "path"}, (what, body)
    assert reply.headers.get("x-fapi-interaction-id"), (what, reply.headers)


def assert_not_5xx(reply: Reply, what: Any) -> None:
    assert reply.status < 500, (what, reply.status, reply.body)
    if reply.status >= 400:
        assert_refused(reply, what)


@pytest.fixture(scope="module")
def hostile(stack: Stack) -> dict[str, Any]:
    partner = stack.new_partner("Hostile Input Partner")
    customer = stack.new_customer(partner, shard=0, funding="100000.00", per_payment="1000.00", daily="90000000.00")
    account = customer["account"]
    return {
        "partner": partner,
        "token": partner["token"],
        "customer": customer,
        "account": account,
        "body": {
            "agreement_id": customer["agreement_id"],
            "amount": "0.01",
            "currency": "CNY",
            "creditor_account": partner["settlement_account"],
            "reference": "hostile",
        },
    }


def _pay(
    stack: Stack,
    hostile: dict[str, Any],
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> Reply:
    return http(
        "POST",
        stack.url("/v1/quick-payments"),
        body,
        raw=raw,
        token=token or hostile["token"],
        headers={"x-idempotency-key": uuid.uuid4().hex, **(headers or {})},
        timeout=PROMPT_S,
    )


def _get(stack: Stack, path: str, token: str | None) -> Reply:
    return http("GET", stack.url(path), token=token, timeout=PROMPT_S)


# ---- bodies -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["agreement_id", "amount", "currency", "creditor_account", "reference"])
def test_payment_fields_wrong_types_and_sizes(stack: Stack, hostile: dict[str, Any], field: str) -> None:
    for value in WRONG_TYPES + LONG:
        assert_refused(_pay(stack, hostile, {**hostile["body"], field: value}), (field, str(value)[:40]), 400)


@pytest.mark.parametrize("field", ["reference", "device_id", "ip"])
def test_text_fields_refuse_control_characters(stack: Stack, hostile: dict[str, Any], field: str) -> None:
    for value in CONTROL + [""]:
        body = dict(hostile["body"])
        if field == "reference":
            body["reference"] = value
        else:
            body["risk"] = {field: value}
        assert_refused(_pay(stack, hostile, body), (field, value), 400)


def test_text_limits_are_characters_and_any_unicode_is_stored(stack: Stack, hostile: dict[str, Any]) -> None:
    # 140 characters of four UTF-8 bytes each: accepted, stored and read back exactly
    for reference in ("\U0001f600" * 140, "\u00e9t\u00e9 \u4e2d\u6587 \u0663\u00b2", "a" * 140):
        reply = _pay(stack, hostile, {**hostile["body"], "reference": reference})
        assert reply.status == 201, reply.body
        got = _get(stack, f"/v1/quick-payments/{reply.body['payment_id']}", hostile["token"])
        assert got.status == 200 and got.body["reference"] == reference
    for reference in ("\U0001f600" * 141, "a" * 141):
        assert_refused(_pay(stack, hostile, {**hostile["body"], "reference": reference}), reference[:3], 400)


def test_amounts_ascii_digits_and_int64_only(stack: Stack, hostile: dict[str, Any]) -> None:
    for amount in BAD_AMOUNTS:
        assert_refused(_pay(stack, hostile, {**hostile["body"], "amount": amount}), amount, 400)
    # the largest amount int64 holds is accepted as a request, and rejected by the agreement
    edge = _pay(stack, hostile, {**hostile["body"], "amount": "92233720368547758.07"})
    assert edge.status == 201 and edge.body["status"] == "Rejected", edge.body
    assert edge.body["reasons"] == ["AGREEMENT_PER_PAYMENT_LIMIT"]


@pytest.mark.parametrize("field", ["agreement_id", "creditor_account"])
def test_ids_in_bodies(stack: Stack, hostile: dict[str, Any], field: str) -> None:
    for value in BAD_IDS:
        assert_refused(_pay(stack, hostile, {**hostile["body"], field: value}), (field, value), 400)


def test_malformed_bodies(stack: Stack, hostile: dict[str, Any]) -> None:
    good = json.dumps(hostile["body"]).encode()
    cases: list[tuple[bytes, int]] = [
        (b'{"reference": "\xff\xfe"}', 400),
        (b"\xff" + good, 400),
        (b"\xef\xbb\xbf" + good, 400),
        (good.replace(b'"hostile"', b'"\xed\xa0\x80"'), 400),  # UTF-8 of a surrogate
        (good.replace(b'"hostile"', b'"\\ud800"'), 400),  # lone surrogate escape
        (good.replace(b'"hostile"', b'"\\udc00x"'), 400),
        (good.replace(b'"hostile"', b'"a\\u0000"'), 400),  # NUL escape
        (b"", 400),
        (b"null", 400),
        (b"[]", 400),
        (b"1", 400),
        (b'"s"', 400),
        (b"{", 400),
        (b"[" * 100_00 + b"]" * 100_00, 400),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, 400),
        (good[:-1] + b', "extra": 1}', 400),
        (b" " * 1000, 400),
        (good[:-1] + b"x" * (70 * 1024) + b"}", 413),
    ]
    for raw, status in cases:
        assert_refused(_pay(stack, hostile, raw=raw), raw[:40], status)


def test_content_types(stack: Stack, hostile: dict[str, Any]) -> None:
    good = json.dumps(hostile["body"]).encode()
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json-patch+json",
        "\u00e9/\u00e9".encode().decode("latin-1"),
    ):
        reply = _pay(stack, hostile, raw=good, headers={"content-type": content_type})
        assert_refused(reply, content_type, 415)
    # parameters of application/json are fine
    ok = _pay(stack, hostile, raw=good, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status == 201, ok.body


# ---- paths and query strings --------------------------------------------------------------------
def test_payment_ids_in_paths(stack: Stack, hostile: dict[str, Any]) -> None:
    hexes = "0" * 32
    for tail in [*UNICODE_DIGITS, "-1", "+1", "01", "1 ", "99999999999999999999999", "1e3", "\x00", "0\n"]:
        reply = _get(stack, f"/v1/quick-payments/pay_{hexes}_{quote(tail)}", hostile["token"])
        assert_refused(reply, tail, 400, 404)
    for payment_id in (
        "pay_" + "\u0660" * 32 + "_0",
        "pay_" + "G" * 32 + "_0",
        "pay_" + "0" * 2000 + "_0",
        "%00",
        "%ff%fe",
        "pay_%2e%2e%2f_0",
        "\u00e9" * 100,
    ):
        assert_refused(
            _get(stack, f"/v1/quick-payments/{quote(payment_id, safe='%')}", hostile["token"]),
            payment_id[:20],
            400,
            404,
        )


def test_ten_thousand_character_paths_are_refused_in_the_error_shape(stack: Stack, hostile: dict[str, Any]) -> None:
    # Found by `quickpay soak`: aiohttp answered a request line over 8190 bytes itself, in plain text.
    for path in (
        "/v1/" + "x" * 10_000,
        "/v1/accounts/acc_" + "a" * 10_000 + "/balance",
        "/v1/events?after=" + "9" * 10_000,
        "/v1/" + "%C3%A9" * 3_000,
    ):
        assert_refused(_get(stack, path, hostile["token"]), path[:30], 400, 404)


@pytest.mark.parametrize(
    "template",
    ["/v1/agreements/{}", "/v1/accounts/{}/balance", "/v1/accounts/{}/transactions", "/admin/v1/accounts/{}/balance"],
)
def test_ids_in_paths(stack: Stack, hostile: dict[str, Any], template: str) -> None:
    token = stack.admin_token if template.startswith("/admin") else hostile["token"]
    for value in BAD_IDS + ["%00", "%ff", "acc_%0a", "a" * 3000, "acc_x%00", "..", "acc_%e2%80%ae"]:
        if not value:
            continue
        path = template.format(quote(value, safe="%") if "%" in value else quote(value))
        assert_refused(_get(stack, path, token), (template, value[:20]), 400, 404)


def _cursor(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_query_numbers_and_cursors(stack: Stack, hostile: dict[str, Any]) -> None:
    base = f"/v1/accounts/{hostile['account']}/transactions"
    token = hostile["token"]
    for limit in [
        *UNICODE_DIGITS,
        "\uff11\uff10",
        "1e3",
        "-1",
        "0",
        "201",
        "9" * 30,
        " 5",
        "5 ",
        "+5",
        "0x10",
        "",
        "1.5",
        "%00",
    ]:
        assert_refused(_get(stack, f"{base}?limit={quote(limit, safe='%')}", token), limit, 400)
    assert _get(stack, f"{base}?limit=200", token).status == 200
    for cursor in [
        "!!!",
        "%00",
        "\u00e9",
        "a" * 5000,
        _cursor([]),
        _cursor(1),
        _cursor("x"),
        _cursor(None),
        _cursor({"0": 2**63}),
        _cursor({"0": 2**64}),
        _cursor({"0": 2**70}),
        _cursor({"0": -1}),
        _cursor({"0": 0}),
        _cursor({"0": 1.5}),
        _cursor({"0": "5"}),
        _cursor({"0": True}),
        _cursor({"\u0660": 5}),
        _cursor({"\u00b2": 5}),
        _cursor({"-0": 5}),
        _cursor({"99": 5}),
        _cursor({"0": [1]}),
        _cursor({"0": {"a": 1}}),
        base64.b64encode(b"\xff\xfe").decode(),
    ]:
        reply = _get(stack, f"{base}?cursor={quote(cursor, safe='%')}", token)
        assert_refused(reply, cursor[:30], 400)
    for query in [
        "decision=%00",
        "decision=\u00e9",
        "decision=allow&limit=\u00b2",
        "rule_id=" + "r" * 500,
        "rule_id=%00",
        "limit=%ff",
    ]:
        assert_refused(
            _get(stack, f"/admin/v1/fraud/decisions?{quote(query, safe='=&%')}", stack.admin_token), query, 400
        )


# ---- methods ------------------------------------------------------------------------------------
ROUTES = [
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/oauth2/token",
    "/v1/agreements",
    "/v1/agreements/agr_x",
    "/v1/quick-payments",
    "/v1/quick-payments/pay_x",
    "/v1/accounts/acc_x/balance",
    "/v1/accounts/acc_x/transactions",
    "/admin/v1/partners",
    "/admin/v1/accounts",
    "/admin/v1/accounts/acc_x/fundings",
    "/admin/v1/accounts/acc_x/balance",
    "/admin/v1/fraud/rules",
    "/admin/v1/fraud/rules/rollback",
    "/admin/v1/fraud/rules/1/activate",
    "/admin/v1/fraud/lists",
    "/admin/v1/fraud/lists/blocked",
    "/admin/v1/fraud/decisions",
    "/admin/v1/fraud/alerts",
    "/v1/quick-payments/pay_x/refunds",
    "/v1/refunds/ref_x",
    "/admin/v1/agreements/agr_x",
    "/admin/v1/agreements/agr_x/authorise",
    "/admin/v1/accounts/acc_x/agreements",
]
# Routes that have one of the methods tried below.
DECLARED = {("DELETE", "/v1/agreements/agr_x")}


def test_undeclared_methods_answer_405_on_every_route(stack: Stack) -> None:
    for path in ROUTES:
        for method in ("TRACE", "PATCH", "DELETE", "PUT", "OPTIONS"):
            if (method, path) in DECLARED:
                continue
            reply = http(method, stack.url(path), token=stack.admin_token, timeout=PROMPT_S)
            assert_refused(reply, (method, path), 405)
            assert reply.body["code"] == "QP.Method.NotAllowed"
            assert reply.headers.get("allow"), (method, path)


# ---- headers --------------------------------------------------------------------------------------
def _raw_http(stack: Stack, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=PROMPT_S) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _raw_pay(
    stack: Stack, hostile: dict[str, Any], extra_headers: bytes, *, auth: bytes | None = None, key: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    body = json.dumps(hostile["body"]).encode()
    auth = auth if auth is not None else b"Bearer " + hostile["token"].encode()
    key = key if key is not None else uuid.uuid4().hex.encode()
    request = (
        b"POST /v1/quick-payments HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Authorization: " + auth + b"\r\nx-idempotency-key: " + key + b"\r\n" + extra_headers + b"\r\n" + body
    )
    status, headers, raw = _raw_http(stack, request)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return status, headers, parsed


def test_header_abuse(stack: Stack, hostile: dict[str, Any]) -> None:
    refused = []
    for key in ["\u00e9".encode(), b"\xff\xfe", b"k" * 65, b"", b"\xe2\x80\xae", b"\xc2\x85"]:
        status, headers, body = _raw_pay(stack, hostile, b"", key=key)
        refused.append((key, status))
        assert 400 <= status < 500 and isinstance(body, dict) and set(body) == {"code", "message", "errors"}, (
            key,
            status,
            body,
        )
        assert headers.get("x-fapi-interaction-id")
    for auth in [
        b"Bearer \xff\xfe",
        b"Bearer " + "\u00e9".encode() * 10,
        b"Bearer " + b"a" * 5000,
        b"Bearer",
        b"Basic \xff",
        b"\xff",
    ]:
        status, headers, body = _raw_pay(stack, hostile, b"", auth=auth)
        assert status == 401 and isinstance(body, dict) and set(body) == {"code", "message", "errors"}, (
            auth,
            status,
            body,
        )
        assert headers.get("x-fapi-interaction-id")
    # a bad interaction id is replaced by a fresh one; the payment itself is fine
    for interaction in ["\u00e9".encode(), b"\xff", b"x" * 129, b"\xc2\x85"]:
        status, headers, body = _raw_pay(stack, hostile, b"x-fapi-interaction-id: " + interaction + b"\r\n")
        assert status in (201, 400), (interaction, status, body)
        replaced = headers.get("x-fapi-interaction-id", "")
        assert replaced and replaced.encode() != interaction and replaced.isascii()
    # control characters in a header never reach the application: aiohttp's HTTP parser
    # refuses the request with a 400 of its own (plain text: it answers before any middleware)
    for extra in [
        b"x-fapi-interaction-id: a\x00b\r\n",
        b"x-other: a\rb\r\n",
        b"x-idempotency-key: a\x01b\r\n",
        b"x-fapi-interaction-id: \x7f\r\n",
    ]:
        status, _, _ = _raw_pay(stack, hostile, extra)
        assert status == 400, (extra, status)


# ---- the token endpoint ---------------------------------------------------------------------------
def test_token_endpoint(stack: Stack, hostile: dict[str, Any]) -> None:
    partner = hostile["partner"]
    url = stack.url("/oauth2/token")
    for client_id in ["\x00", partner["client_id"] + "\x00", "\u00e9" * 10, "a" * 65, 7, None, [], {}]:
        reply = http(
            "POST",
            url,
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": partner["client_secret"]},
            timeout=PROMPT_S,
        )
        assert_refused(reply, client_id, 400, 401)
    for secret in ["\x00", "\u00e9", "a" * 300, 7]:
        reply = http(
            "POST",
            url,
            {"grant_type": "client_credentials", "client_id": partner["client_id"], "client_secret": secret},
            timeout=PROMPT_S,
        )
        assert_refused(reply, secret, 400, 401)
    form = {"content-type": "application/x-www-form-urlencoded"}
    for raw in [
        b"grant_type=client_credentials&client_id=%00&client_secret=x",
        b"grant_type=%ff%fe",
        b"grant_type=client_credentials&client_id=%ff&client_secret=%ff",
        b"\xff\xfe=\xff",
        b"grant_type=client_credentials&client_id=" + b"a" * 5000 + b"&client_secret=x",
    ]:
        assert_refused(http("POST", url, raw=raw, headers=form, timeout=PROMPT_S), raw[:30], 400, 401)
    for raw in [b"[" * 10000 + b"]" * 10000, b"\xff", b"[]", b"null", b'{"grant_type": [1]}']:
        assert_refused(http("POST", url, raw=raw, timeout=PROMPT_S), raw[:30], 400, 401)


# ---- admin endpoints --------------------------------------------------------------------------------
def test_admin_endpoints(stack: Stack, hostile: dict[str, Any]) -> None:
    admin = stack.admin_token

    def call(method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return http(method, stack.url(path), body, token=admin, timeout=PROMPT_S, **kwargs)

    for name in [*CONTROL, "", "x" * 101, *WRONG_TYPES]:
        assert_refused(call("POST", "/admin/v1/partners", {"name": name}), name, 400)
    for currency in ["CN\x00", "cny", "CNY\n", "\uff23NY", "XXX", 1, None]:
        assert_refused(call("POST", "/admin/v1/accounts", {"currency": currency}), currency, 400)
    account = hostile["account"]
    fund = f"/admin/v1/accounts/{account}/fundings"
    for amount in BAD_AMOUNTS + WRONG_TYPES:
        assert_refused(
            call("POST", fund, {"amount": amount, "currency": "CNY"}, headers={"x-idempotency-key": uuid.uuid4().hex}),
            amount,
            400,
        )
    for reference in CONTROL + ["x" * 141]:
        assert_refused(
            call(
                "POST",
                fund,
                {"amount": "1.00", "currency": "CNY", "reference": reference},
                headers={"x-idempotency-key": uuid.uuid4().hex},
            ),
            reference,
            400,
        )
    for value in ["acc_%00", "acc_\u00e9", "sys_funding", "set_x", "a" * 200]:
        assert_refused(
            call(
                "POST",
                f"/admin/v1/accounts/{quote(value, safe='%')}/fundings",
                {"amount": "1.00", "currency": "CNY"},
                headers={"x-idempotency-key": uuid.uuid4().hex},
            ),
            value,
            400,
            404,
        )
    # fraud administration (the stack runs without rules: a valid request is a 409)
    for body in [
        {"text": "rule \x00"},
        {"text": "\x01"},
        {"text": ""},
        {"text": 1},
        {"text": "r", "author": "\x00"},
        {"text": "r", "filename": "a\nb"},
        {"text": "r", "activate": "yes"},
    ]:
        assert_refused(call("POST", "/admin/v1/fraud/rules", body), body, 400, 409, 422)
    for version in [*UNICODE_DIGITS, "-1", "9" * 30, "1e3", "%00", "0x1"]:
        assert_refused(
            call("POST", f"/admin/v1/fraud/rules/{quote(version, safe='%')}/activate"), version, 400, 404, 409
        )
    for author in ["%00", "%0a", "%ff"]:
        assert_refused(call("POST", f"/admin/v1/fraud/rules/rollback?author={author}"), author, 400, 409)
    for name in ["%00", "a%20b", "\u00e9", "x" * 65]:
        assert_refused(call("POST", f"/admin/v1/fraud/lists/{quote(name, safe='%')}", {"add": ["x"]}), name, 400)
    for body in [
        {"add": ["\x00"]},
        {"add": [""]},
        {"add": ["x" * 129]},
        {"add": "x"},
        {"remove": [1]},
        {"add": ["ok"], "author": "\x00"},
    ]:
        assert_refused(call("POST", "/admin/v1/fraud/lists/blocked", body), body, 400)


# ---- fuzzing ----------------------------------------------------------------------------------------
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=10,
)
_amount_text = st.one_of(
    st.from_regex(
        r"-?[0-9\u0660-\u0669\uff10-\uff19\u00b2]{0,25}(\.[0-9]{0,5})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
    ),
    st.text(max_size=30),
)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(
        st.sampled_from(["agreement_id", "amount", "currency", "creditor_account", "reference", "risk", "extra"]),
        st.one_of(_json_value, _amount_text, st.text(alphabet=st.characters(max_codepoint=0x2000), max_size=200)),
        max_size=3,
    )
)
def test_fuzzed_payment_bodies_never_5xx(stack: Stack, hostile: dict[str, Any], changes: dict[str, Any]) -> None:
    reply = _pay(stack, hostile, {**hostile["body"], **changes})
    assert_not_5xx(reply, changes)


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    segment=st.text(alphabet=st.characters(max_codepoint=0x10FFFF), min_size=1, max_size=80), limit=st.text(max_size=12)
)
def test_fuzzed_paths_and_queries_never_5xx(stack: Stack, hostile: dict[str, Any], segment: str, limit: str) -> None:
    token = hostile["token"]
    encoded = quote(segment, safe="")
    for path in (
        f"/v1/quick-payments/{encoded}",
        f"/v1/agreements/{encoded}",
        f"/v1/accounts/{encoded}/balance",
        f"/v1/accounts/{hostile['account']}/transactions?limit={quote(limit, safe='')}&cursor={encoded}",
    ):
        assert_not_5xx(_get(stack, path, token), path)


def test_the_shards_survived_and_the_ledger_checks(stack: Stack) -> None:
    """Runs last in this module: after all of the above, every shard still answers."""
    assert http("GET", stack.url("/readyz"), timeout=PROMPT_S).status == 200
