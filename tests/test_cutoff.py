"""Cutting a partner off (issue 17, point 7): disable and enable, client secret rotation with
an overlap window, token revocation, and the audit trail and feed events of each action.

The stack runs two gateway processes behind one port (SO_REUSEPORT). Every partner request
here goes over a fresh connection (urllib), and the answer's generated x-fapi-interaction-id
starts with a prefix unique to the process that answered, so the tests check that *both*
workers refused (or accepted), not just whichever one the admin call happened to reach."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import ROOT, Reply, Stack, http, start_stack, stop_stack

from gateway.auth import TokenService, client_secret_valid, hash_secret, token_cut_off
from ledger.model import Code
from ledger.state import ShardState, WriteSet
from ledger.storable import NotStorable, check_command

WORKERS = 2
ROUNDS = 24  # fresh connections per check: P(all on one of two workers) = 2**-23
APPLIES_WITHIN_S = 1.0


# ---- helpers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stack of our own (2 shards, 2 gateway workers): these tests disable partners."""
    s = start_stack(tmp_path_factory.mktemp("cutoff"), workers=WORKERS, demo=False)
    try:
        # `up` is ready when one worker answers /readyz; wait until every worker does.
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while len(seen) < WORKERS and time.monotonic() < deadline:
            reply = s.call("GET", "/readyz")
            if reply.status == 200:
                seen.add(worker_of(reply))
            else:
                time.sleep(0.1)
        assert len(seen) == WORKERS, f"only {len(seen)} gateway worker(s) became ready"
        yield s
    finally:
        stop_stack(s)


def token_for(stack: Stack, client_id: str, secret: str) -> Reply:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return http(
        "POST",
        stack.url("/oauth2/token"),
        raw=b"grant_type=client_credentials",
        headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
    )


def new_token(stack: Stack, client_id: str, secret: str) -> str:
    reply = token_for(stack, client_id, secret)
    assert reply.status == 200, reply.body
    return str(reply.body["access_token"])


def worker_of(reply: Reply) -> str:
    # gateway.app._new_interaction_id: a per-process random UUID prefix, then a counter.
    return reply.headers["x-fapi-interaction-id"][:24]


def answers(stack: Stack, partner: dict[str, Any], token: str) -> dict[str, set[int]]:
    """ROUNDS partner requests over fresh connections: worker prefix -> statuses it answered."""
    seen: dict[str, set[int]] = {}
    for _ in range(ROUNDS):
        reply = stack.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=token)
        seen.setdefault(worker_of(reply), set()).add(reply.status)
        if reply.status >= 400:
            assert set(reply.body) == {"code", "message", "errors"}, reply.body  # the one error shape
    return seen


def assert_every_worker(seen: dict[str, set[int]], status: int) -> None:
    assert len(seen) == WORKERS, f"only {len(seen)} gateway worker(s) answered: {seen}"
    assert all(statuses == {status} for statuses in seen.values()), seen


def admin_action(stack: Stack, partner_id: str, action: str, body: Any = None) -> Reply:
    reply = stack.admin("POST", f"/admin/v1/partners/{partner_id}/{action}", body)
    assert reply.status == 200, reply.body
    return reply


# ---- pure parts ----------------------------------------------------------------------------
def partner_record(secret: str = "s1") -> dict[str, Any]:
    return {
        "id": "ptn_x",
        "name": "X",
        "secret_sha256": hash_secret(secret),
        "settlement_account": "set_ptn_x",
        "created_at_ms": 0,
        "rate_limit_rps": None,
        "rate_limit_burst": None,
        "previous_secret_sha256": None,
        "previous_secret_until_ms": None,
        "disabled_at_ms": None,
        "tokens_valid_after_ms": None,
    }


def test_token_carries_its_issue_time_in_ms() -> None:
    tokens = TokenService(b"k" * 32)
    token = tokens.issue("ptn_x", 1_000, 1_000_250)
    assert tokens.verify_claims(token, 1_001) == ("ptn_x", 1_000_250)
    assert tokens.verify_claims(token, 1_001) == ("ptn_x", 1_000_250)  # from the verified cache
    assert tokens.verify(token, 1_001) == "ptn_x"


def test_cut_off_marker_decides_disabled_and_revoked() -> None:
    assert token_cut_off(None, 5) is None
    assert token_cut_off([None, None], 5) is None
    assert token_cut_off([1, None], 5) == "disabled"
    assert token_cut_off([None, 10], 10) == "revoked"  # at or before T
    assert token_cut_off([None, 10], 11) is None  # issued after T


def test_secret_overlap_with_injected_time() -> None:
    state, ws = ShardState(0, 1), WriteSet()
    state.partners_cache["ptn_x"] = partner_record("old")
    state.begin(ws)
    code, status = state.partner_action(
        "ptn_x", "rotate_secret", "ops", 1_000, ws, secret_sha256=hash_secret("new"), overlap_ms=5_000
    )
    state.commit()
    assert code == Code.OK and status is not None and status["previous_secret_until_ms"] == 6_000
    record = state.partners_cache["ptn_x"]
    assert client_secret_valid(record, "new", 1_000) and client_secret_valid(record, "old", 5_999)
    assert not client_secret_valid(record, "old", 6_000)  # the window expired
    assert client_secret_valid(record, "new", 10**12)
    assert not client_secret_valid(record, "other", 2_000)
    state.begin(ws)
    assert state.partner_action("ptn_x", "retire_secret", "ops", 2_000, ws)[0] == Code.OK
    state.commit()
    assert not client_secret_valid(record, "old", 2_001)  # retired explicitly
    assert client_secret_valid(record, "new", 2_001)
    state.begin(ws)
    assert state.partner_action("ptn_x", "retire_secret", "ops", 2_000, ws)[0] == Code.SAME
    state.commit()
    assert [e[1] for e in ws.partner_events] == ["rotate_secret", "retire_secret"]  # SAME records nothing


def test_partner_action_is_atomic_and_checked() -> None:
    """A cut-off decision rolled back leaves memory and the WriteSet as they were; one whose
    values cannot be stored is refused by check_command."""
    state, ws = ShardState(0, 1), WriteSet()
    state.partners_cache["ptn_x"] = partner_record()
    before = (repr(state.partners_cache), repr(ws), state.cutoff_version)
    for action in ("disable", "revoke_tokens", "rotate_secret"):
        mark = state.begin(ws)
        code, _ = state.partner_action("ptn_x", action, "ops", 1_000, ws, secret_sha256="h" * 64, overlap_ms=10)
        assert code == Code.OK
        check_command(ws, mark, {"code": code}, 1_000, state.undo)
        state.rollback(ws)
        assert (repr(state.partners_cache), repr(ws), state.cutoff_version) == before, action
    mark = state.begin(ws)
    state.partner_action("ptn_x", "disable", "ops\x00", 1_000, ws)
    with pytest.raises(NotStorable):
        check_command(ws, mark, None, 1_000, state.undo)
    state.rollback(ws)
    assert (repr(state.partners_cache), repr(ws), state.cutoff_version) == before
    state.begin(ws)
    assert state.partner_action("ptn_missing", "disable", "ops", 1_000, ws) == (Code.PARTNER_NOT_FOUND, None)
    state.commit()
    assert ws.is_empty()


# ---- the stack -----------------------------------------------------------------------------
def test_disable_refuses_tokens_on_every_worker_and_enable_lets_it_back(cut: Stack) -> None:
    partner = cut.new_partner("To Disable")
    token = partner["token"]
    assert_every_worker(answers(cut, partner, token), 200)

    reply = admin_action(cut, partner["partner_id"], "disable", {"actor": "alice", "reason": "fraud report"})
    assert reply.body["disabled"] is True and reply.body["changed"] is True
    disabled_at = time.monotonic()
    # The worker that took the admin call refuses at once; the other one within the poll.
    time.sleep(APPLIES_WITHIN_S)
    seen = answers(cut, partner, token)
    assert_every_worker(seen, 403)
    refused = cut.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=token)
    assert refused.body["code"] == "QP.Partner.Disabled"
    assert time.monotonic() - disabled_at < APPLIES_WITHIN_S + 10  # sanity: the check ran promptly
    # No new token, with the right secret.
    fresh = token_for(cut, partner["client_id"], partner["client_secret"])
    assert fresh.status == 401 and fresh.body["code"] == "invalid_client", fresh.body
    # Disabling again changes nothing and is not audited twice.
    assert admin_action(cut, partner["partner_id"], "disable").body["changed"] is False
    # The admin API still sees the partner's money (its settlement account's balance).
    assert cut.admin("GET", f"/admin/v1/accounts/{partner['settlement_account']}/balance").status == 200

    reply = admin_action(cut, partner["partner_id"], "enable", {"actor": "bob"})
    assert reply.body["disabled"] is False and reply.body["changed"] is True
    time.sleep(APPLIES_WITHIN_S)
    assert_every_worker(answers(cut, partner, token), 200)  # its old token works again
    assert_every_worker(answers(cut, partner, new_token(cut, partner["client_id"], partner["client_secret"])), 200)


def test_a_payment_accepted_before_the_disable_settles(cut: Stack) -> None:
    partner = cut.new_partner("In Flight")
    customer = cut.new_customer(partner, shard=0)
    creditor = cut.new_account(shard=1)  # cross-shard: settles through the relay
    paid = cut.pay(partner, customer["agreement_id"], creditor, "12.34")
    assert paid.status == 201, paid.body
    admin_action(cut, partner["partner_id"], "disable")
    deadline = time.monotonic() + 20
    while cut.balance(creditor) != "12.34" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cut.balance(creditor) == "12.34"
    admin_action(cut, partner["partner_id"], "enable")


def test_rotation_overlap_then_retire(cut: Stack) -> None:
    partner = cut.new_partner("Rotating")
    old = partner["client_secret"]
    reply = admin_action(cut, partner["partner_id"], "rotate-secret", {"overlap_s": 3600, "actor": "carol"})
    new = reply.body["client_secret"]
    assert new != old and reply.body["previous_secret_valid_until"] is not None
    assert reply.headers.get("cache-control") == "no-store"
    for _ in range(4):  # both secrets, whichever worker answers
        assert token_for(cut, partner["client_id"], old).status == 200
        assert token_for(cut, partner["client_id"], new).status == 200
    shown = cut.admin("GET", f"/admin/v1/partners/{partner['partner_id']}").body
    assert shown["previous_secret_valid_until"] == reply.body["previous_secret_valid_until"]

    assert admin_action(cut, partner["partner_id"], "retire-secret").body["changed"] is True
    for _ in range(4):
        refused = token_for(cut, partner["client_id"], old)
        assert refused.status == 401 and refused.body["code"] == "invalid_client"
        assert token_for(cut, partner["client_id"], new).status == 200
    assert admin_action(cut, partner["partner_id"], "retire-secret").body["changed"] is False
    # Tokens issued under the old secret stay valid: rotating is not revoking.
    assert (
        cut.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"]).status == 200
    )


def test_rotation_overlap_expires(cut: Stack) -> None:
    partner = cut.new_partner("Expiring")
    old = partner["client_secret"]
    new = admin_action(cut, partner["partner_id"], "rotate-secret", {"overlap_s": 2}).body["client_secret"]
    rotated_at = time.monotonic()
    assert token_for(cut, partner["client_id"], old).status == 200
    time.sleep(max(0.0, 2.3 - (time.monotonic() - rotated_at)))
    assert token_for(cut, partner["client_id"], old).status == 401
    assert token_for(cut, partner["client_id"], new).status == 200
    # overlap 0: the old secret is retired at once.
    newer = admin_action(cut, partner["partner_id"], "rotate-secret", {"overlap_s": 0}).body["client_secret"]
    assert token_for(cut, partner["client_id"], new).status == 401
    assert token_for(cut, partner["client_id"], newer).status == 200
    bad = cut.admin("POST", f"/admin/v1/partners/{partner['partner_id']}/rotate-secret", {"overlap_s": 1.5})
    assert bad.status == 400 and bad.body["code"] == "QP.Field.Invalid"


def test_revocation_holds_within_a_second_on_every_worker(cut: Stack) -> None:
    partner = cut.new_partner("Revoked")
    old = partner["token"]
    other = cut.new_partner("Bystander")
    assert_every_worker(answers(cut, partner, old), 200)
    reply = admin_action(cut, partner["partner_id"], "revoke-tokens", {"actor": "dave"})
    assert reply.body["tokens_valid_after"] is not None
    time.sleep(APPLIES_WITHIN_S)
    seen = answers(cut, partner, old)
    assert_every_worker(seen, 401)
    refused = cut.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=old)
    assert refused.body["code"] == "QP.Auth.InvalidToken" and "revoked" in refused.body["message"]
    # A token issued after the revocation works everywhere; other partners were not touched.
    assert_every_worker(answers(cut, partner, new_token(cut, partner["client_id"], partner["client_secret"])), 200)
    assert_every_worker(answers(cut, other, other["token"]), 200)


def test_every_action_is_audited_and_in_the_partner_feed(cut: Stack) -> None:
    partner = cut.new_partner("Audited")
    pid = partner["partner_id"]
    admin_action(cut, pid, "disable", {"actor": "erin", "reason": "chargebacks"})
    admin_action(cut, pid, "disable", {"actor": "erin"})  # no change: not audited
    admin_action(cut, pid, "enable", {"actor": "frank"})
    secret = admin_action(cut, pid, "rotate-secret", {"overlap_s": 60, "actor": "grace"}).body["client_secret"]
    admin_action(cut, pid, "retire-secret", {"actor": "grace"})
    admin_action(cut, pid, "revoke-tokens", {"actor": "heidi"})
    audit = cut.admin("GET", f"/admin/v1/partners/{pid}/audit").body
    entries = audit["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("disable", "erin"),
        ("enable", "frank"),
        ("rotate_secret", "grace"),
        ("retire_secret", "grace"),
        ("revoke_tokens", "heidi"),
    ]
    assert entries[0]["details"] == {"reason": "chargebacks"} and all(e["at"].endswith("Z") for e in entries)
    assert "previous_secret_valid_until_ms" in entries[2]["details"]
    assert cut.admin("GET", "/admin/v1/partners/nobody_here/audit").status == 404
    assert cut.call("GET", f"/admin/v1/partners/{pid}/audit").status == 401  # admin only

    token = new_token(cut, partner["client_id"], secret)
    wanted = [
        "partner.disabled",
        "partner.enabled",
        "partner.secret_rotated",
        "partner.secret_retired",
        "partner.tokens_revoked",
    ]
    deadline = time.monotonic() + 30
    types: list[str] = []
    while time.monotonic() < deadline:
        feed = cut.call("GET", "/v1/events?limit=200", token=token)
        if feed.status == 403 and feed.body.get("code") == "QP.Partner.Disabled":
            # The enable reaches the other gateway process at its next cut-off refresh (within
            # CUTOFF_APPLIES_WITHIN_S; on a loaded machine a refresh that times out is retried).
            time.sleep(0.3)
            continue
        assert feed.status == 200, feed.body
        events = [e for e in feed.body["events"] if e["type"].startswith("partner.")]
        types = [e["type"] for e in events]
        if types == wanted:
            break
        time.sleep(0.3)
    assert types == wanted
    first = events[0]["data"]["object"]
    assert first["actor"] == "erin" and first["partner_id"] == pid and first["details"] == {"reason": "chargebacks"}
    only = cut.call("GET", "/v1/events?type=partner.tokens_revoked", token=token).body["events"]
    assert [e["type"] for e in only] == ["partner.tokens_revoked"]
    # Another partner's feed shows none of it.
    other = cut.new_partner("Unrelated")
    assert [
        e
        for e in cut.call("GET", "/v1/events", token=other["token"]).body["events"]
        if e["type"].startswith("partner.")
    ] == []


def test_unknown_partner_and_bad_bodies(cut: Stack) -> None:
    assert cut.admin("POST", "/admin/v1/partners/ptn_nobody/disable").status == 404
    assert cut.admin("GET", "/admin/v1/partners/ptn_nobody").status == 404
    assert cut.call("POST", "/admin/v1/partners/ptn_nobody/disable").status == 401
    partner = cut.new_partner("Bodies")
    bad = cut.admin("POST", f"/admin/v1/partners/{partner['partner_id']}/disable", {"actor": "x", "extra": 1})
    assert bad.status == 400 and set(bad.body) == {"code", "message", "errors"}


def test_cli_cuts_a_partner_off(cut: Stack) -> None:
    partner = cut.new_partner("Via CLI")
    pid = partner["partner_id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "quickpay.cli",
                "partners",
                *args,
                pid,
                "--url",
                cut.base_url,
                "--state-dir",
                str(cut.state_dir),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = cli("disable", "--actor", "ivan", "--reason", "test")
    assert result.returncode == 0, result.stderr
    assert '"disabled": true' in result.stdout
    assert token_for(cut, partner["client_id"], partner["client_secret"]).status == 401
    assert cli("enable").returncode == 0
    rotated = cli("rotate-secret", "--overlap-s", "0")
    assert rotated.returncode == 0 and "client_secret" in rotated.stdout
    assert token_for(cut, partner["client_id"], partner["client_secret"]).status == 401
    assert cli("revoke-tokens").returncode == 0
    assert cli("retire-secret").returncode == 0
    shown = cli("show")
    assert shown.returncode == 0 and '"disabled": false' in shown.stdout
    audit = cli("audit")
    assert audit.returncode == 0 and '"actor": "ivan"' in audit.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "quickpay.cli",
            "partners",
            "disable",
            "ptn_nobody",
            "--url",
            cut.base_url,
            "--state-dir",
            str(cut.state_dir),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "QP.Partner.NotFound" in missing.stderr


def test_the_sdk_renews_a_revoked_token_and_reports_a_disable(cut: Stack) -> None:
    """A revocation costs an SDK user one token renewal (401 QP.Auth.InvalidToken is renewed
    once); a disabled partner gets ForbiddenError with the code."""
    from quickpay_sdk import Client
    from quickpay_sdk.errors import ForbiddenError

    partner = cut.new_partner("SDK User")
    with Client(cut.base_url, partner["client_id"], partner["client_secret"]) as qp:
        assert qp.get_balance(partner["settlement_account"])["balance"] == "0.00"
        admin_action(cut, partner["partner_id"], "revoke-tokens")
        time.sleep(APPLIES_WITHIN_S)
        for _ in range(6):
            assert qp.get_balance(partner["settlement_account"])["balance"] == "0.00"
        admin_action(cut, partner["partner_id"], "disable")
        time.sleep(APPLIES_WITHIN_S)
        with pytest.raises(ForbiddenError) as refused:
            qp.get_balance(partner["settlement_account"])
        assert refused.value.code == "QP.Partner.Disabled"
