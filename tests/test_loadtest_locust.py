"""The Locust suite runs headless against a fake quickpay and enforces its gates.

Locust is only ever run as a subprocess: importing it here would let gevent monkeypatch the
pytest process. The fake implements the API surface the suite uses (token, quick payments
with idempotent replay, payment status, balance) and checks what the suite sends.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest_asyncio
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
STATUSES = {"AcceptedSettlementCompleted", "AcceptedSettlementInProcess", "Rejected"}


class FakeQuickpay:
    def __init__(self, population: dict) -> None:
        self.clients = {p["client_id"]: p["client_secret"] for p in population["partners"]}
        self.blocked = {b["agreement_id"] for b in population["blocked_agreements"]}
        self.tokens: set[str] = set()
        self.by_key: dict[str, tuple[bytes, dict]] = {}
        self.payments: dict[str, dict] = {}
        self.counts = {"token": 0, "payment": 0, "replay": 0, "rejected": 0, "status": 0, "balance": 0, "bad": 0}

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    async def token(self, request: web.Request) -> web.Response:
        form = urllib.parse.parse_qs((await request.read()).decode())
        client_id = form.get("client_id", [""])[0]
        if (
            form.get("grant_type") != ["client_credentials"]
            or self.clients.get(client_id) != form.get("client_secret", [""])[0]
        ):
            self.counts["bad"] += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        self.counts["token"] += 1
        token = uuid.uuid4().hex
        self.tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    async def pay(self, request: web.Request) -> web.Response:
        key = request.headers.get("x-idempotency-key", "")
        body = await request.read()
        if not self.authorized(request) or not 0 < len(key) <= 64:
            self.counts["bad"] += 1
            return web.json_response({"Code": "bad"}, status=400)
        if key in self.by_key:
            first_body, answer = self.by_key[key]
            if first_body != body:
                return web.json_response({"Code": "different body"}, status=422)
            self.counts["replay"] += 1
            return web.json_response(answer, status=201)
        payment = json.loads(body)
        assert set(payment) == {"agreement_id", "amount", "currency", "creditor_account", "reference"}
        rejected = payment["agreement_id"] in self.blocked
        self.counts["rejected" if rejected else "payment"] += 1
        answer = {"payment_id": uuid.uuid4().hex, "status": "Rejected" if rejected else "AcceptedSettlementCompleted"}
        self.by_key[key] = (body, answer)
        self.payments[answer["payment_id"]] = answer
        return web.json_response(answer, status=201)

    async def payment_status(self, request: web.Request) -> web.Response:
        payment = self.payments.get(request.match_info["payment_id"])
        if not self.authorized(request) or payment is None:
            return web.json_response({"Code": "not found"}, status=404)
        self.counts["status"] += 1
        return web.json_response(payment)

    async def balance(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"Code": "unauthorized"}, status=401)
        self.counts["balance"] += 1
        return web.json_response({"account_id": request.match_info["account_id"], "balance": "100.00"})


def write_population(folder: Path) -> dict:
    partners = [
        {
            "partner_id": f"p{i}",
            "client_id": f"client{i}",
            "client_secret": f"secret{i}",
            "settlement_account": f"settle{i}",
        }
        for i in range(2)
    ]
    with (folder / "agreements.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["partner_index", "agreement_id", "debtor_account"])
        for i in range(200):
            writer.writerow([i % 2, f"agr{i:04d}", f"acct{i:04d}"])
    population = {
        "base_url": "unused",
        "admin_token": "unused",
        "currency": "CNY",
        "partners": partners,
        "agreements_csv": "agreements.csv",
        "blocked_agreements": [
            {"partner_index": 0, "agreement_id": "blocked0", "debtor_account": "acct-b0"},
            {"partner_index": 1, "agreement_id": "blocked1", "debtor_account": "acct-b1"},
        ],
    }
    (folder / "population.json").write_text(json.dumps(population))
    return population


@pytest_asyncio.fixture(loop_scope="function")
async def quickpay(tmp_path):
    fake = FakeQuickpay(write_population(tmp_path))
    app = web.Application()
    app.router.add_post("/oauth2/token", fake.token)
    app.router.add_post("/v1/quick-payments", fake.pay)
    app.router.add_get("/v1/quick-payments/{payment_id}", fake.payment_status)
    app.router.add_get("/v1/accounts/{account_id}/balance", fake.balance)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield fake, port, tmp_path
    await runner.cleanup()


async def run_locust(port: int, folder: Path, seconds: int, extra_env: dict, *args: str) -> tuple[int, str]:
    env = dict(os.environ, QUICKPAY_POPULATION=str(folder / "population.json"), **extra_env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        f"{seconds}s",
        "--host",
        f"http://127.0.0.1:{port}",
        "--csv",
        str(folder / "out" / "locust"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, output.decode(errors="replace")


async def test_locust_suite_passes_its_gates(quickpay):
    fake, port, folder = quickpay
    (folder / "out").mkdir()
    code, output = await run_locust(port, folder, 4, {})
    assert code == 0, output
    assert "quickpay gates passed" in output
    with (folder / "out" / "locust_stats.csv").open() as file:
        total = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, output
    assert fake.counts["bad"] == 0
    assert fake.counts["token"] >= 4 and fake.counts["payment"] > 0
    assert fake.counts["status"] + fake.counts["balance"] > 0


async def test_locust_gate_failure_gives_nonzero_exit(quickpay):
    _, port, folder = quickpay
    (folder / "out").mkdir()
    code, output = await run_locust(port, folder, 2, {"QUICKPAY_GATE_MIN_RPS": "1e9"}, "--processes", "2")
    assert code != 0, output
    assert "quickpay gates FAILED" in output and "throughput" in output
    # Only the throughput gate: the two forked processes must not reuse each other's keys.
    assert "failure ratio" not in output, output
