"""Daily reconciliation files: the day's bounds and closing (pure, injected time); on a live
stack, a partner's payments (to its settlement account and to customers, same- and
cross-shard) and refunds of a day are listed once each, the summary's totals per kind are
the rows' sums, and `settlement_net` equals how the partner's settlement account moved over
the day across both shards; the file is final only once the day is closed (the CLI with an
injected clock), the API gives a provisional one before, marked in the file and a header,
with the SHA-256 of the body."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from conftest import Stack, http
from test_api import assert_error

from gateway.app import RECON_PROVISIONAL_REUSE_S
from kernel.money import parse_amount
from ledger import recon


def test_day_bounds_and_closing() -> None:
    day = datetime.date(2028, 2, 29)
    start, end = recon.day_bounds(day)
    assert datetime.datetime.fromtimestamp(start / 1000, datetime.UTC).isoformat() == "2028-02-29T00:00:00+00:00"
    assert end - start == recon.DAY_MS
    assert not recon.is_closed(day, end) and not recon.is_closed(day, end + recon.CLOSE_GRACE_MS - 1)
    assert recon.is_closed(day, end + recon.CLOSE_GRACE_MS)


def _wire(**extra: Any) -> dict[str, Any]:
    return {
        "id": "pay_1",
        "kind": "payment",
        "status": "AcceptedSettlementCompleted",
        "currency": "CNY",
        "amount_minor": 1000,
        "created_at_ms": 1_800_000_000_000,
        "agreement_id": "agr_1",
        "debit_account": "acc_d",
        "credit_account": "set_ptn_a",
        "creditor_account": "set_ptn_a",
        "reference": "r",
        "details": None,
        **extra,
    }


def test_the_summary_adds_up_and_nets_the_settlement_account() -> None:
    report = recon.Reconciliation("ptn_a", datetime.date(2027, 1, 15), provisional=False, generated_at_ms=0)
    report.add(
        [
            _wire(),
            _wire(id="pay_2", amount_minor=250),
            _wire(
                id="pay_3",
                creditor_account="acc_c",
                credit_account="sys_clearing",
                status="AcceptedSettlementInProcess",
            ),
            _wire(id="pay_4", status="Rejected"),
            _wire(
                id="ref_1",
                kind="refund",
                status="Succeeded",
                amount_minor=100,
                debit_account="set_ptn_a",
                credit_account="acc_d",
                creditor_account="acc_d",
                details={"payment_id": "pay_1"},
            ),
            _wire(id="fund_1", kind="funding"),
        ]
    )
    text = report.text()
    assert not text.startswith("#")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == list(recon.COLUMNS)
    rows = [line for line in lines[1:] if line and line[0] != "summary"]
    assert [(r[0], r[1]) for r in rows] == [
        ("payment", "pay_1"),
        ("payment", "pay_2"),
        ("payment_to_customer", "pay_3"),
        ("refund", "ref_1"),
    ]
    refund = rows[3]
    assert (refund[7], refund[8], refund[10]) == ("acc_d", "set_ptn_a", "pay_1")
    summary = {(line[1], line[2]): line[3:] for line in lines if line and line[0] == "summary" and line[1] != "kind"}
    assert summary[("payment", "CNY")] == ["2", "12.50", "1250"]
    assert summary[("payment_to_customer", "CNY")] == ["1", "10.00", "1000"]
    assert summary[("refund", "CNY")] == ["1", "1.00", "100"]
    assert summary[("settlement_net", "CNY")] == ["", "11.50", "1150"]
    provisional = recon.Reconciliation("ptn_a", datetime.date(2027, 1, 15), provisional=True, generated_at_ms=0)
    assert provisional.text().startswith("# PROVISIONAL")


def _settlement_minor(stack: Stack, partner: dict[str, Any]) -> int:
    reply = stack.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"])
    assert reply.status == 200, reply.body
    return parse_amount(reply.body["balance"], "CNY") if reply.body["balance"] != "0.00" else 0


def _recon_cli(stack: Stack, partner_id: str, day: datetime.date, now_ms: int) -> tuple[int, str, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quickpay.cli",
            "recon",
            "--state-dir",
            str(stack.state_dir),
            "--partner",
            partner_id,
            "--date",
            day.isoformat(),
            "--now-ms",
            str(now_ms),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def test_a_days_file_matches_the_settlement_accounts_movement(stack: Stack) -> None:
    partner = stack.new_partner("Reconciled")
    today = datetime.datetime.now(datetime.UTC).date()
    if datetime.datetime.now(datetime.UTC).hour == 23 and datetime.datetime.now().minute >= 58:
        pytest.skip("too close to midnight UTC for a one-day test")
    before = _settlement_minor(stack, partner)
    paid = []
    for shard, amount in ((0, "10.00"), (1, "20.50"), (0, "3.00")):
        customer = stack.new_customer(partner, shard=shard, funding="100.00")
        reply = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], amount)
        assert reply.body["status"] == "AcceptedSettlementCompleted"
        paid.append(reply.body)
    customer = stack.new_customer(partner, shard=0, funding="100.00")
    to_customer = stack.pay(partner, customer["agreement_id"], stack.new_account(shard=1), "7.00").body
    rejected = stack.pay(partner, customer["agreement_id"], partner["settlement_account"], "999.00").body
    assert rejected["status"] == "Rejected"
    refund = stack.call(
        "POST",
        f"/v1/quick-payments/{paid[1]['payment_id']}/refunds",
        {"amount": "0.50"},
        token=partner["token"],
        headers={"x-idempotency-key": uuid.uuid4().hex},
    ).body
    assert refund["status"] == "Succeeded"
    moved = _settlement_minor(stack, partner) - before

    # Final once the day is closed: the CLI with a clock after midnight plus the grace.
    end_ms = recon.day_bounds(today)[1]
    code, text, err = _recon_cli(stack, partner["partner_id"], today, end_ms + recon.CLOSE_GRACE_MS)
    assert code == 0, err
    assert "final file" in err and hashlib.sha256(text.encode()).hexdigest() in err
    lines = list(csv.reader(io.StringIO(text)))
    rows = [line for line in lines[1:] if line and line[0] != "summary"]
    ids = [r[1] for r in rows]
    assert sorted(ids) == sorted([p["payment_id"] for p in paid] + [to_customer["payment_id"], refund["refund_id"]])
    summary = {(line[1], line[2]): line[3:] for line in lines if line and line[0] == "summary" and line[1] != "kind"}
    assert summary[("settlement_net", "CNY")][2] == str(moved) == "3300"
    assert summary[("payment", "CNY")] == ["3", "33.50", "3350"]
    assert summary[("refund", "CNY")] == ["1", "0.50", "50"]
    assert summary[("payment_to_customer", "CNY")] == ["1", "7.00", "700"]
    # Before the day is closed the CLI refuses a final file.
    code, _, err = _recon_cli(stack, partner["partner_id"], today, end_ms - 1)
    assert code != 0 and "not closed" in err

    # The API: today is not closed (404 with the reason), provisional is the same rows, marked.
    assert_error(
        stack.call("GET", f"/v1/reconciliation-files/{today.isoformat()}", token=partner["token"]),
        404,
        "QP.Reconciliation.NotReady",
    )
    reply = http(
        "GET", stack.url(f"/v1/reconciliation-files/{today.isoformat()}?provisional=true"), token=partner["token"]
    )
    assert reply.status == 200 and reply.headers["quickpay-reconciliation"] == "provisional"
    text_api = reply.raw.decode()
    assert text_api.startswith("# PROVISIONAL")
    assert hashlib.sha256(text_api.encode()).hexdigest() == reply.headers["quickpay-content-sha256"]
    assert text_api.split("\n", 1)[1] == text  # the same file, under its provisional line
    other = stack.new_partner("Someone else")
    other_file = http(
        "GET", stack.url(f"/v1/reconciliation-files/{today.isoformat()}?provisional=true"), token=other["token"]
    )
    assert other_file.status == 200 and partner["partner_id"] not in other_file.raw.decode()
    assert paid[0]["payment_id"] not in other_file.raw.decode()
    for path, status, code_ in (
        (f"/v1/reconciliation-files/{today.isoformat()}x", 400, "QP.Path.Invalid"),
        ("/v1/reconciliation-files/2026-02-30", 404, "QP.Reconciliation.NoSuchDay"),
        (f"/v1/reconciliation-files/{today.isoformat()}?provisional=yes", 400, "QP.Query.Invalid"),
        ("/v1/reconciliation-files/2999-01-01?provisional=true", 404, "QP.Reconciliation.NotReady"),
    ):
        assert_error(stack.call("GET", path, token=partner["token"]), status, code_)


def test_a_provisional_file_is_made_once_per_window_and_shared(stack: Stack) -> None:
    """A partner asking for the same provisional file again and again (the fairness hammer)
    gets the one made in the last RECON_PROVISIONAL_REUSE_S seconds, made once by its gateway
    process, instead of the process re-reading the whole day each time; after the window the
    file is made again and shows what happened meanwhile."""
    import http.client
    import time
    from urllib.parse import urlsplit

    from gateway.app import RECON_PROVISIONAL_REUSE_S

    partner = stack.new_partner("Recon reuse")
    customer = stack.new_customer(partner, funding="100.00")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    where = urlsplit(stack.base_url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)  # one connection: one process

    def fetch() -> tuple[str, bytes]:
        conn.request(
            "GET",
            f"/v1/reconciliation-files/{today}?provisional=true",
            headers={"Authorization": f"Bearer {partner['token']}"},
        )
        reply = conn.getresponse()
        body = reply.read()
        assert reply.status == 200, body
        return reply.headers["Quickpay-Content-SHA256"], body

    try:
        first_sha, first = fetch()
        paid = stack.call(
            "POST",
            "/v1/quick-payments",
            {
                "agreement_id": customer["agreement_id"],
                "amount": "1.00",
                "currency": "CNY",
                "creditor_account": partner["settlement_account"],
                "reference": "reuse",
            },
            token=partner["token"],
            headers={"x-idempotency-key": uuid.uuid4().hex},
        )
        assert paid.status == 201, paid.body
        again_sha, again = fetch()
        assert (again_sha, again) == (first_sha, first)  # reused: the same file, byte for byte
        assert paid.body["payment_id"].encode() not in again
        time.sleep(RECON_PROVISIONAL_REUSE_S + 0.2)
        later_sha, later = fetch()
        assert later_sha != first_sha and paid.body["payment_id"].encode() in later
        assert hashlib.sha256(later).hexdigest() == later_sha
    finally:
        conn.close()


def test_a_file_longer_than_a_page_lists_each_row_once(stack: Stack) -> None:
    """The gateway reads a shard's rows in pages of RECON_PAGE_ROWS_MAX (kept small so a file
    does not hold a shard's event loop, tests/test_fairness.py): a file of more rows than a
    page, and of exactly a page, has every payment once, none twice."""
    from kernel.limits import RECON_PAGE_ROWS_MAX

    if datetime.datetime.now(datetime.UTC).hour == 23 and datetime.datetime.now().minute >= 58:
        pytest.skip("too close to midnight UTC for a one-day test")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    partner = stack.new_partner("Paged")
    customer = stack.new_customer(partner, shard=0, funding="1000.00")

    def pay(count: int) -> list[str]:
        items = [
            {
                "agreement_id": customer["agreement_id"],
                "amount": "0.01",
                "currency": "CNY",
                "creditor_account": partner["settlement_account"],
                "reference": "paged",
                "idempotency_key": uuid.uuid4().hex,
            }
            for _ in range(count)
        ]
        reply = stack.call(
            "POST",
            "/v1/quick-payments/batch",
            {"payments": items},
            token=partner["token"],
            headers={"x-idempotency-key": uuid.uuid4().hex},
        )
        assert reply.status == 200, reply.body
        results = reply.body["results"]
        assert all(r["status"] == 201 for r in results), [r for r in results if r["status"] != 201][:3]
        return [r["payment"]["payment_id"] for r in results]

    def listed() -> list[str]:
        reply = http("GET", stack.url(f"/v1/reconciliation-files/{today}?provisional=true"), token=partner["token"])
        assert reply.status == 200, reply.raw[:300]
        lines = list(csv.reader(io.StringIO(reply.raw.decode())))
        return [line[1] for line in lines[2:] if line and line[0] not in ("summary",) and not line[0].startswith("#")]

    paid = pay(RECON_PAGE_ROWS_MAX)
    assert sorted(listed()) == sorted(paid)  # exactly one page: the next, empty, ends it
    time.sleep(RECON_PROVISIONAL_REUSE_S + 0.2)  # a new file, not the one just made
    paid += pay(RECON_PAGE_ROWS_MAX // 2 + 1)
    ids = listed()
    assert len(ids) == len(set(ids)) == len(paid)
    assert sorted(ids) == sorted(paid)
