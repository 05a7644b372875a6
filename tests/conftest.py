"""Shared fixtures: a real `quickpay up` stack (embedded PostgreSQL, 2 shard workers,
2 gateway workers) started once per session, plus helpers to start private stacks for
tests that kill processes, and small HTTP helpers (urllib, synchronous)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kernel.ids import shard_of
from quickpay.secret_policy import generate as generate_secret

ROOT = Path(__file__).resolve().parent.parent

# The flags every test stack starts with. One place to change when the fraud filter
# and the monitor become part of the default test topology.
STACK_FLAGS: tuple[str, ...] = ("--no-rules", "--no-monitor")

READY_TIMEOUT_S = 120.0

# One cluster secret for every stack of the session, so shard clients made in tests
# (ledger.client.ShardClient reads QUICKPAY_CLUSTER_SECRET) can talk to any test stack;
# `quickpay up` uses the environment's secret over its state directory's.
os.environ.setdefault("QUICKPAY_CLUSTER_SECRET", generate_secret())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- HTTP helpers ---------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One HTTP call; never raises on a status code. `body` is JSON-encoded, `raw` sent as is."""
    all_headers = {k.lower(): v for k, v in (headers or {}).items()}
    data = raw
    if data is None and body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("content-type", "application/json")
    elif data is not None:
        all_headers.setdefault("content-type", "application/json")
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, hdrs, content = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, content = exc.code, dict(exc.headers), exc.read()
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = content.decode(errors="replace")
    return Reply(status, {k.lower(): v for k, v in hdrs.items()}, parsed, content)


# ---- stacks -------------------------------------------------------------------------------
@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    base_url: str
    port: int
    state_dir: Path
    log_path: Path
    shards: int
    demo: dict[str, Any] = field(default_factory=dict)
    admin_token: str = ""
    _tokens: dict[str, str] = field(default_factory=dict)

    # -- plumbing
    def url(self, path: str) -> str:
        return self.base_url + path

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return http(method, self.url(path), body, **kwargs)

    def admin(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return http(method, self.url(path), body, token=self.admin_token, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def shard_socket(self, shard: int) -> str:
        from quickpay.config import StateDir

        return StateDir(self.state_dir).shard_socket(shard)

    def dsn(self, shard: int) -> str:
        from quickpay.embedded_pg import EmbeddedPostgres, shard_database

        return EmbeddedPostgres(self.state_dir).dsn(shard_database(shard))

    # -- partners and customers
    def partner_token(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        """An access token (HTTP Basic client credentials); the demo partner's by default."""
        client_id = client_id or self.demo["client_id"]
        client_secret = client_secret or self.demo["client_secret"]
        cached = self._tokens.get(client_id)
        if cached:
            return cached
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        reply = http(
            "POST",
            self.url("/oauth2/token"),
            raw=b"grant_type=client_credentials",
            headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
        )
        assert reply.status == 200, reply.body
        self._tokens[client_id] = reply.body["access_token"]
        return str(reply.body["access_token"])

    def new_partner(self, name: str = "Test Partner", currency: str = "CNY") -> dict[str, Any]:
        reply = self.admin("POST", "/admin/v1/partners", {"name": name, "currency": currency})
        assert reply.status == 201, reply.body
        partner = dict(reply.body)
        partner["token"] = self.partner_token(partner["client_id"], partner["client_secret"])
        return partner

    def new_account(self, shard: int | None = None, currency: str = "CNY") -> str:
        for _ in range(200):
            reply = self.admin("POST", "/admin/v1/accounts", {"currency": currency})
            assert reply.status == 201, reply.body
            account = str(reply.body["account_id"])
            if shard is None or shard_of(account, self.shards) == shard:
                return account
        raise AssertionError(f"could not open an account on shard {shard}")

    def fund(self, account: str, amount: str, currency: str = "CNY") -> Reply:
        reply = self.admin(
            "POST",
            f"/admin/v1/accounts/{account}/fundings",
            {"amount": amount, "currency": currency, "reference": "test funding"},
            headers={"x-idempotency-key": "fund-" + uuid.uuid4().hex},
        )
        assert reply.status == 201, reply.body
        return reply

    def new_customer(
        self,
        partner: dict[str, Any],
        shard: int | None = None,
        funding: str = "1000.00",
        currency: str = "CNY",
        per_payment: str = "500.00",
        daily: str = "100000.00",
        authorise: bool = True,
        **agreement: Any,
    ) -> dict[str, str]:
        """A funded account on `shard` with an agreement for `partner`, authorised by the
        customer (through the admin API, the bank's channel) unless `authorise` is False."""
        account = self.new_account(shard, currency)
        if funding:
            self.fund(account, funding, currency)
        body = {
            "debtor_account": account,
            "currency": currency,
            "per_payment_limit": per_payment,
            "daily_limit": daily,
            **agreement,
        }
        if daily is None:
            del body["daily_limit"]
        reply = self.call("POST", "/v1/agreements", body, token=partner["token"])
        assert reply.status == 201, reply.body
        assert reply.body["status"] == "AwaitingAuthorisation", reply.body
        agreement_id = reply.body["agreement_id"]
        if authorise:
            self.agreement_action(agreement_id, "authorise")
        return {"account": account, "agreement_id": agreement_id}

    def agreement_action(self, agreement_id: str, action: str) -> Reply:
        """The customer's decision through the bank (authorise, reject, suspend, resume, revoke)."""
        reply = self.admin("POST", f"/admin/v1/agreements/{agreement_id}/{action}")
        assert reply.status == 200, reply.body
        return reply

    def balance(self, account: str) -> str:
        reply = self.admin("GET", f"/admin/v1/accounts/{account}/balance")
        assert reply.status == 200, reply.body
        return str(reply.body["balance"])

    def pay(
        self,
        partner: dict[str, Any],
        agreement_id: str,
        creditor: str,
        amount: str,
        key: str | None = None,
        currency: str = "CNY",
        reference: str = "test",
    ) -> Reply:
        return self.call(
            "POST",
            "/v1/quick-payments",
            {
                "agreement_id": agreement_id,
                "amount": amount,
                "currency": currency,
                "creditor_account": creditor,
                "reference": reference,
            },
            token=partner["token"],
            headers={"x-idempotency-key": key or uuid.uuid4().hex},
        )

    # -- processes
    def shard_worker_pids(self, shard: int) -> list[int]:
        import psutil

        socket_path = self.shard_socket(shard)
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if "shard-worker" in cmd and "--shard" in cmd and socket_path in cmd:
                index = cmd.index("--shard")
                if index + 1 < len(cmd) and cmd[index + 1] == str(shard):
                    found.append(int(proc.info["pid"]))
        return found

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every gateway process ready: 200s in a row on new connections (ready_consecutive)."""
        from quickpay.httpclient import ready_consecutive

        deadline = time.monotonic() + timeout_s
        in_a_row, needed = 0, ready_consecutive(2)
        while time.monotonic() < deadline:
            try:
                if http("GET", self.url("/readyz"), timeout=2).status == 200:
                    in_a_row += 1
                    if in_a_row >= needed:
                        return
                    continue
            except OSError:
                pass
            in_a_row = 0
            time.sleep(0.1)
        raise AssertionError(f"stack not ready again within {timeout_s}s\n{self.log()[-4000:]}")


def start_stack(
    base: Path,
    *,
    shards: int = 2,
    workers: int = 2,
    demo: bool = True,
    extra: tuple[str, ...] = (),
    flags: tuple[str, ...] | None = None,
) -> Stack:
    """Start `quickpay up`; `flags` replaces STACK_FLAGS (e.g. to run with fraud rules)."""
    base.mkdir(parents=True, exist_ok=True)
    state_dir = base / "state"
    log_path = base / "quickpay-up.log"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "quickpay.cli",
        "up",
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
        "--shards",
        str(shards),
        "--workers",
        str(workers),
        *(STACK_FLAGS if flags is None else flags),
        *extra,
    ]
    if demo:
        argv.append("--demo")
    # Every test stack's shard workers at another group-commit pipeline depth, e.g. the
    # fault tests at 4: QUICKPAY_TEST_PIPELINE_DEPTH=4 pytest tests/test_faults.py
    if os.environ.get("QUICKPAY_TEST_PIPELINE_DEPTH"):
        argv += ["--pipeline-depth", os.environ["QUICKPAY_TEST_PIPELINE_DEPTH"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("QUICKPAY_TOKEN_KEY", None)
    env.pop("QUICKPAY_ADMIN_TOKEN", None)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    stack = Stack(proc, f"http://127.0.0.1:{port}", port, state_dir, log_path, shards)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "quickpay ready" not in stack.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            log = stack.log()
            stop_stack(stack)
            pytest.fail(f"`quickpay up` did not become ready (exit {proc.poll()}):\n{log[-8000:]}")
        time.sleep(0.1)
    stack.admin_token = (state_dir / "admin.token").read_text().strip()
    if demo:
        stack.demo = json.loads((state_dir / "demo.json").read_text())
    return stack


def stop_stack(stack: Stack) -> None:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(30)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            stack.proc.wait(10)
    # Children of a SIGKILLed supervisor may linger: end them by pid.
    try:
        import psutil

        run_dir = stack.shard_socket(0).rsplit("/", 1)[0].removeprefix("unix:")
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if "quickpay.cli" in cmd and (run_dir in cmd or f"--port {stack.port}" in cmd):
                proc.kill()
    except Exception:
        pass
    from quickpay.embedded_pg import EmbeddedPostgres

    try:
        EmbeddedPostgres(stack.state_dir).stop()
    except Exception:
        pass


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared stack. Tests must not kill its processes."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="session")
def partner(stack: Stack) -> dict[str, Any]:
    """A fresh partner of the shared stack, with a token."""
    return stack.new_partner("Shared Test Partner")


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, however deeply nested."""
    found: list[dict[str, Any]] = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "Node Type" in node:
                found.append(node)
            stack.extend(node.values())
    return found
