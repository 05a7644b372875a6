"""Fraud rule changes are all-or-nothing across shards and idempotent by content hash.

Two layers:
* the gateway's coordinator (`gateway.fraud_rollout.FraudRollout`) against in-process
  shards that run the real shard-side code (`ledger.fraud_port.FraudAdapter`), with
  failures injected between and inside the phases;
* a live stack (with rules): a retried propose is the same version, a shard that does
  not answer in the middle of a change leaves every shard on the old version and a retry
  converges, a restarted worker does not undo an operator's change on its shard, and a
  stored rule set that no longer builds does not crash-loop the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, Stack, free_port, start_stack, stop_stack

import fraud
from fraud.registry import version_of
from gateway.errors import ApiError
from gateway.fraud_rollout import FraudRollout
from ledger.client import ShardError, ShardUnavailable
from ledger.fraud_port import FraudAdapter
from ledger.state import WriteSet

V1 = 'rule marker_v1 { action review shadow description "v1" when amount > 0 }\n'
V2 = 'rule marker_v2 { action review shadow description "v2" when amount > 0 }\n'
V3 = 'rule marker_v3 { action review shadow description "v3" when amount > 0 }\n'
H1, H2, H3 = version_of(V1), version_of(V2), version_of(V3)


# ---- in-process shards ------------------------------------------------------------------
class FakeShard:
    """The shard side of `fraud` / `fraud_read` with the real adapter, a committed copy of
    the registry (what `meta` would hold) and injectable faults."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.adapter = FraudAdapter(None)
        self.adapter.load(fraud.RuleRegistry(), None, 0)
        self.adapter.filter = fraud.FraudFilter(self.adapter._enforced_ruleset())
        self.down = False
        # (action, "before" | "after"): fail that action once, before applying it
        # (the shard never saw it) or after (applied, the answer was lost).
        self.faults: list[tuple[str, str]] = []
        self.calls: list[str] = []
        self.clock = 1_000

    async def call(self, op: str, args: Any = None) -> Any:
        action = args.get("action", args.get("what")) if isinstance(args, dict) else None
        self.calls.append(f"{op}:{action}")
        if self.down:
            raise ShardUnavailable(f"shard {self.index} unreachable")
        fault = next((f for f in self.faults if f[0] == action), None)
        if fault is not None and fault[1] == "before":
            self.faults.remove(fault)
            raise ShardUnavailable(f"no answer from shard {self.index}")
        if op == "fraud_read":
            return self.adapter.read(args)
        assert op == "fraud"
        self.clock += 1
        ok, result = self.adapter.decide(args, WriteSet(), self.clock)
        if fault is not None:
            self.faults.remove(fault)
            raise ShardUnavailable(f"connection to shard {self.index} lost")
        if not ok:
            raise ShardError(result)
        return result

    @property
    def active(self) -> str | None:
        return self.adapter.registry.active_version  # type: ignore[no-any-return]

    @property
    def enforcing(self) -> str:
        return version_of(self.adapter.filter.ruleset.text)

    def versions(self) -> list[str]:
        return [v["version"] for v in self.adapter.registry.versions()]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def cluster(n: int = 3) -> tuple[list[FakeShard], FraudRollout]:
    shards = [FakeShard(i) for i in range(n)]
    return shards, FraudRollout(shards)


def api_error(coro: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(coro)
    return caught.value


def test_propose_activates_everywhere_and_a_retry_is_the_same_version() -> None:
    shards, rollout = cluster()
    first = run(rollout.propose(V1, "alice", "v1.rules", True))
    assert first["version"] == first["active_version"] == H1 and first["consistent"] is True
    assert all(s.active == s.enforcing == H1 for s in shards)
    audit_len = [len(s.adapter.registry.audit()) for s in shards]
    again = run(rollout.propose(V1.replace("\n", "\r\n"), "alice", "v1.rules", True))
    assert again["version"] == H1
    assert all(s.versions().count(H1) == 1 for s in shards)
    assert [len(s.adapter.registry.audit()) for s in shards] == audit_len  # nothing new happened


def test_a_rule_error_stages_nothing_anywhere() -> None:
    shards, rollout = cluster()
    before = [s.versions() for s in shards]
    error = api_error(rollout.propose("rule x { action block when amount >> 3 }", "a", "x.rules", True))
    assert error.status == 422 and error.message.startswith("x.rules:1:")
    assert [s.versions() for s in shards] == before


def test_a_shard_down_while_staging_changes_nothing_enforced_and_a_retry_converges() -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    shards[1].down = True
    error = api_error(rollout.propose(V2, "bob", "v2.rules", True))
    assert error.status == 503 and "no shard enforces it" in error.message
    assert all(s.enforcing == H1 for s in shards)
    assert not any("activate" in c for s in shards for c in s.calls[-1:])
    shards[1].down = False
    done = run(rollout.propose(V2, "bob", "v2.rules", True))
    assert done["active_version"] == H2 and done["consistent"]
    assert all(s.active == s.enforcing == H2 for s in shards)
    assert all(s.versions() == shards[0].versions() for s in shards)  # same ids, no drift


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_activation_is_undone_everywhere(when: str) -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    stacks = [s.adapter.registry.to_dict()["activation_stack"] for s in shards]
    shards[2].faults.append(("activate", when))
    error = api_error(rollout.propose(V2, "bob", "v2.rules", True))
    assert error.status == 503 and "undone" in error.message
    # Shards 0 and 1 switched and were switched back; shard 2 too if it had applied it.
    assert all(s.active == s.enforcing == H1 for s in shards)
    assert [s.adapter.registry.to_dict()["activation_stack"] for s in shards] == stacks  # history as before
    done = run(rollout.propose(V2, "bob", "v2.rules", True))
    assert done["consistent"] and all(s.enforcing == H2 for s in shards)


def test_an_undo_that_cannot_reach_a_shard_is_reported_and_a_retry_converges() -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    shards[2].faults.append(("activate", "after"))
    shards[2].faults.append(("rollback", "before"))
    error = api_error(rollout.propose(V2, "bob", "v2.rules", True))
    assert error.status == 503 and "may disagree" in error.message
    assert [s.active for s in shards] == [H1, H1, H2]
    shown = run(rollout.read_rules())
    assert shown["consistent"] is False and shown["active_version"] is None
    done = run(rollout.propose(V2, "bob", "v2.rules", True))
    assert done["consistent"] and all(s.active == s.enforcing == H2 for s in shards)


def test_a_concurrent_change_is_a_conflict_and_changes_nothing() -> None:
    shards, rollout = cluster(2)
    run(rollout.propose(V1, "alice", "v1.rules", True))
    run(rollout.propose(V3, "carol", "v3.rules", False))
    real_call = shards[1].call

    async def racing_call(op: str, args: Any = None) -> Any:
        if isinstance(args, dict) and args.get("action") == "activate" and args.get("version") == H2:
            # Someone else's change lands on shard 1 between our stage and activate.
            await real_call("fraud", {"action": "activate", "version": H3, "author": "carol"})
        return await real_call(op, args)

    shards[1].call = racing_call  # type: ignore[method-assign]
    error = api_error(rollout.propose(V2, "bob", "v2.rules", True))
    assert error.status == 409 and error.code == "QP.Rules.Conflict"
    assert [s.active for s in shards] == [H1, H3]


def test_stage_only_then_activate_by_prefix_stages_where_missing() -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    shards[2].down = True
    api_error(rollout.propose(V2, "bob", "v2.rules", False))
    shards[2].down = False
    assert H2 not in shards[2].versions() and all(s.enforcing == H1 for s in shards)
    done = run(rollout.activate(H2[:10], "bob"))
    assert done["version"] == H2 and done["consistent"]
    assert all(s.active == s.enforcing == H2 for s in shards)
    assert api_error(rollout.activate("ffffffffff", "bob")).status == 404


def test_rollback_is_all_or_nothing() -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    run(rollout.propose(V2, "bob", "v2.rules", True))
    shards[1].faults.append(("rollback", "after"))
    error = api_error(rollout.rollback("carol"))
    assert error.status == 503 and "undone" in error.message
    assert all(s.active == s.enforcing == H2 and s.adapter.registry.previous_version == H1 for s in shards)
    back = run(rollout.rollback("carol"))
    assert back["active_version"] == H1 and back["consistent"]
    assert all(s.enforcing == H1 for s in shards)


def test_a_half_done_rollback_is_finished_by_the_next_rollback() -> None:
    shards, rollout = cluster()
    run(rollout.propose(V1, "alice", "v1.rules", True))
    run(rollout.propose(V2, "bob", "v2.rules", True))
    shards[0].faults.append(("rollback", "before"))  # shard 0 never rolls back...
    shards[0].faults.append(("activate", "before"))  # ...and the others' undo is lost on shard 0 only
    shards[1].faults.append(("activate", "before"))  # and on shard 1: it stays rolled back
    error = api_error(rollout.rollback("carol"))
    assert error.status == 503 and "may disagree" in error.message
    assert [s.active for s in shards] == [H2, H1, H2]
    back = run(rollout.rollback("carol"))
    assert back["active_version"] == H1 and back["consistent"]
    assert all(s.active == s.enforcing == H1 for s in shards)


def test_a_stack_without_rules_answers_409_disabled() -> None:
    shards, rollout = cluster(2)
    for shard in shards:
        shard.adapter.filter = None  # as with --no-rules
    for call in (
        rollout.propose(V1, "a", "v1.rules", True),
        rollout.activate(H1[:8], "a"),
        rollout.rollback("a"),
        rollout.read_rules(),
        rollout.read_lists(),
        rollout.change_list("list_add", "blocked_accounts", ["acc_x"]),
    ):
        error = api_error(call)
        assert (error.status, error.code) == (409, "QP.Fraud.Disabled")


def _loaded(registry: Any, rules_path: str | None) -> FraudAdapter:
    adapter = FraudAdapter(None)
    adapter.load(registry, rules_path, 5_000)
    adapter.filter = fraud.FraudFilter(adapter._enforced_ruleset())
    return adapter


def test_start_up_with_a_rules_file_that_does_not_build_keeps_the_stored_rules(tmp_path: Any) -> None:
    bad = tmp_path / "bad.rules"
    bad.write_text("rule x { action block when amount >> 3 }\n")
    registry = fraud.RuleRegistry()
    registry.activate(registry.propose(V1, "alice", 1), "alice", 2)
    adapter = _loaded(registry, str(bad))
    status = adapter.status()
    assert status is not None and status["enforced_version"] == status["active_version"] == H1
    assert status["degraded"] is True and str(bad) in status["problems"][0]["source"]
    assert adapter.filter.ruleset.rule_ids == ("marker_v1",)
    # Nothing stored at all: the shipped default rules, in memory only, reported.
    fresh = _loaded(fraud.RuleRegistry(), str(bad))
    assert fresh.registry.active_version is None
    status = fresh.status()
    assert status is not None and status["fallback"]["source"].endswith("default.rules")
    assert status["enforced_version"] == version_of(fraud.default_rules_path().read_text())
    assert fresh.filter.ruleset.rule_ids == fraud.load_rules_file(fraud.default_rules_path()).rule_ids
    # An operator's activation ends the fallback.
    ok, result = fresh.decide({"action": "stage", "text": V2, "author": "bob"}, WriteSet(), 6_000)
    assert ok
    ok, result = fresh.decide({"action": "activate", "version": H2, "author": "bob"}, WriteSet(), 6_001)
    assert ok and result["enforced_version"] == H2 and result["fallback"] is None
    assert fresh.filter.ruleset.rule_ids == ("marker_v2",)


def test_start_up_activates_a_new_rules_file_but_not_a_known_one(tmp_path: Any) -> None:
    v1 = tmp_path / "v1.rules"
    v1.write_text(V1)
    registry = fraud.RuleRegistry()
    adapter = _loaded(registry, str(v1))
    assert registry.active_version == H1
    registry.activate(registry.propose(V2, "operator", 6_000), "operator", 6_001)
    # The same file again (a restarted worker): the operator's version stays.
    assert _loaded(registry, str(v1)).registry.active_version == H2
    v3 = tmp_path / "v3.rules"
    v3.write_text(V3)
    assert _loaded(registry, str(v3)).registry.active_version == H3
    assert adapter.status() is not None


# ---- a live stack ------------------------------------------------------------------------
LIVE_V1 = """
rule marker_v1 {
    action review
    shadow
    description "Fires on every payment judged by version 1"
    when amount > 0
}
"""
LIVE_V2 = LIVE_V1.replace("marker_v1", "marker_v2").replace("version 1", "version 2")
LIVE_V3 = LIVE_V1.replace("marker_v1", "marker_v3").replace("version 1", "version 3")


@pytest.fixture(scope="module")
def rules_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("fraud-rollout")
    rules = base / "v1.rules"
    rules.write_text(LIVE_V1)
    s = start_stack(base, flags=("--no-monitor",), extra=("--rules", str(rules)))
    try:
        yield s
    finally:
        stop_stack(s)


def _customers(stack: Stack) -> tuple[dict[str, Any], list[dict[str, str]]]:
    partner = stack.new_partner("Rollout Partner")
    return partner, [stack.new_customer(partner, shard=i, funding="100.00") for i in range(stack.shards)]


def _markers(stack: Stack, partner: dict[str, Any], customers: list[dict[str, str]]) -> list[str]:
    """Which version judged a payment, on each shard."""
    found = []
    for customer in customers:
        reply = stack.pay(
            partner, customer["agreement_id"], partner["settlement_account"], "0.01", key=uuid.uuid4().hex
        )
        assert reply.status == 201, reply.body
        names = {h["rule_id"] for h in reply.body["fraud"]["reasons"]} & {"marker_v1", "marker_v2", "marker_v3"}
        assert len(names) == 1, reply.body["fraud"]
        found.append(names.pop())
    return found


def _versions(stack: Stack) -> list[list[str]]:
    shown = stack.admin("GET", "/admin/v1/fraud/rules")
    assert shown.status == 200, shown.body
    return [[v["version"] for v in s["versions"]] for s in shown.body["shards"]]


def _rules(stack: Stack) -> dict[str, Any]:
    shown = stack.admin("GET", "/admin/v1/fraud/rules")
    assert shown.status == 200, shown.body
    return dict(shown.body)


def _restart_worker(stack: Stack, shard: int) -> None:
    pids = stack.shard_worker_pids(shard)
    assert pids, f"shard {shard} worker not found"
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = stack.shard_worker_pids(shard)
        if current and current != pids:
            break
        time.sleep(0.1)
    stack.wait_ready()


def test_live_retried_propose_is_the_same_version(rules_stack: Stack) -> None:
    """Regression: a retry of the same propose stored a new version number on every shard."""
    before = _versions(rules_stack)
    first = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V2, "author": "tester"})
    assert first.status == 201, first.body
    after_first = _versions(rules_stack)
    retry = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V2, "author": "tester"})
    assert retry.status == 201, retry.body
    assert retry.body["active_version"] == first.body["active_version"]
    assert _versions(rules_stack) == after_first
    assert all(len(v) == len(before[0]) + 1 for v in after_first)
    assert after_first[0] == after_first[1]  # the same ids on every shard
    rolled = rules_stack.admin("POST", "/admin/v1/fraud/rules/rollback?author=tester")
    assert rolled.status == 200, rolled.body


def test_live_shard_that_does_not_answer_leaves_every_shard_on_the_old_version(rules_stack: Stack) -> None:
    """Regression: the change was applied shard by shard, so shard 0 enforced the new rules
    while shard 1 did not answer; now nothing is enforced until every shard staged it."""
    partner, customers = _customers(rules_stack)
    old = _markers(rules_stack, partner, customers)
    assert old[0] == old[1]
    pid = rules_stack.shard_worker_pids(1)[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        # The gateway gives up on shard 1 after its call deadline (10 s).
        reply = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V3, "author": "tester"}, timeout=60)
        assert reply.status == 503, reply.body
        assert reply.body["code"] == "QP.Service.Unavailable"
        assert "x-fapi-interaction-id" in reply.headers
        # Shard 0 staged the text but enforces what it did.
        assert _markers(rules_stack, partner, customers[:1]) == old[:1]
    finally:
        os.kill(pid, signal.SIGCONT)
    rules_stack.wait_ready()
    assert _markers(rules_stack, partner, customers) == old
    shown = _rules(rules_stack)
    assert shown["consistent"] is True
    assert all(s["enforced_version"] != version_of(LIVE_V3) for s in shown["shards"])
    # The same request again finishes the change everywhere, under one version id.
    retry = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V3, "author": "tester"})
    assert retry.status == 201, retry.body
    assert retry.body["active_version"] == version_of(LIVE_V3) and retry.body["consistent"] is True
    assert _markers(rules_stack, partner, customers) == ["marker_v3", "marker_v3"]
    versions = _versions(rules_stack)
    assert versions[0] == versions[1] and versions[0].count(version_of(LIVE_V3)) == 1


def test_live_restarted_worker_keeps_the_operators_version(rules_stack: Stack) -> None:
    """Regression: a worker restarted with the same --rules re-activated that file on its
    shard alone, undoing the operator's change there."""
    proposed = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V2, "author": "tester"})
    assert proposed.status == 201, proposed.body
    partner, customers = _customers(rules_stack)
    assert _markers(rules_stack, partner, customers) == ["marker_v2", "marker_v2"]
    _restart_worker(rules_stack, 0)
    assert _markers(rules_stack, partner, customers) == ["marker_v2", "marker_v2"]
    assert _rules(rules_stack)["consistent"] is True


def _cli(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "quickpay.cli",
            "fraud",
            *argv,
            "--url",
            stack.base_url,
            "--state-dir",
            str(stack.state_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_live_cli_propose_activate_rollback_with_hash_versions(rules_stack: Stack, tmp_path: Any) -> None:
    rules = tmp_path / "v2.rules"
    rules.write_text(LIVE_V2)
    proposed = _cli(rules_stack, "propose", str(rules), "--author", "alice")
    assert proposed.returncode == 0, proposed.stderr
    body = json.loads(proposed.stdout)
    assert body["version"] == body["active_version"] == version_of(LIVE_V2) and body["consistent"] is True
    assert "active version: " + version_of(LIVE_V2) in proposed.stderr
    again = _cli(rules_stack, "propose", str(rules), "--author", "alice")
    assert again.returncode == 0 and json.loads(again.stdout)["version"] == body["version"]
    previous = body["shards"][0]["previous_version"]
    rolled = _cli(rules_stack, "rollback", "--author", "alice")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["active_version"] == previous
    activated = _cli(rules_stack, "activate", version_of(LIVE_V2)[:10].upper(), "--author", "alice")
    assert activated.returncode == 0, activated.stderr
    assert json.loads(activated.stdout)["active_version"] == version_of(LIVE_V2)
    shown = _cli(rules_stack, "show")
    assert shown.returncode == 0 and json.loads(shown.stdout)["active_version"] == version_of(LIVE_V2)
    wrong = _cli(rules_stack, "activate", "1")
    assert wrong.returncode != 0 and "not a rule-set version" in wrong.stderr and "Traceback" not in wrong.stderr
    unknown = _cli(rules_stack, "activate", "ffffffffff")
    assert unknown.returncode == 1 and json.loads(unknown.stderr)["code"] == "QP.Rules.NotFound"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/v1/fraud/rules/1/activate",
        "/admin/v1/fraud/rules/%00/activate",
        "/admin/v1/fraud/rules/%C2%B2%C2%B2%C2%B2%C2%B2%C2%B2%C2%B2%C2%B2%C2%B2/activate",
        "/admin/v1/fraud/rules/" + "a" * 65 + "/activate",
        "/admin/v1/fraud/rules/ffffffffffffffff/activate",
        "/admin/v1/fraud/rules/rollback?author=",
        "/admin/v1/fraud/rules/rollback?author=%00",
        "/admin/v1/fraud/rules/rollback?author=" + "a" * 101,
    ],
)
def test_live_bad_rule_admin_requests_fail_alone_with_the_error_shape(rules_stack: Stack, path: str) -> None:
    before = _rules(rules_stack)["active_version"]
    reply = rules_stack.admin("POST", path)
    assert reply.status in (400, 404), reply.body
    assert set(reply.body) == {"code", "message", "errors"} and "x-fapi-interaction-id" in reply.headers
    assert _rules(rules_stack)["active_version"] == before


def test_up_refuses_a_rules_file_that_does_not_build(tmp_path: Any) -> None:
    """Regression: the workers were started with it and failed at every start."""
    bad = tmp_path / "bad.rules"
    bad.write_text("rule x {\n  action block\n  when amount >> 3\n}\n")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "quickpay.cli",
                "up",
                "--state-dir",
                str(tmp_path / "s"),
                "--port",
                str(free_port()),
                "--rules",
                str(bad),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("quickpay up started with a rule file that does not build") from exc
    finally:
        from quickpay.embedded_pg import EmbeddedPostgres

        try:
            EmbeddedPostgres(tmp_path / "s").stop()
        except Exception:
            pass
    assert result.returncode != 0
    assert f"--rules: {bad}:3:" in result.stderr and "Traceback" not in result.stderr


def _inject_broken_active(dsn: str) -> str:
    """Store a rule text that does not build as the active version, as a library upgrade
    that changed the language would leave it; returns the text's version id."""
    broken = 'rule from_the_future { action block description "x" when velocity_score > 3 }\n'

    async def go() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            registry = json.loads(await conn.fetchval("SELECT value FROM meta WHERE key = 'fraud_registry'"))
            if registry["format"] == 1:  # the registry before content-hash versions
                version: Any = max(v["version"] for v in registry["versions"]) + 1
            else:
                version = hashlib.sha256(broken.encode()).hexdigest()
            registry["versions"].append(
                {"version": version, "text": broken, "author": "future", "created_at_ms": int(time.time() * 1000)}
            )
            registry["activation_stack"].append(version)
            await conn.execute("UPDATE meta SET value = $1 WHERE key = 'fraud_registry'", json.dumps(registry))
            return str(version)
        finally:
            await conn.close()

    return str(asyncio.run(go()))


def test_live_stored_rules_that_do_not_build_do_not_crash_loop_the_worker(rules_stack: Stack) -> None:
    """Regression: a stored rule text that fails to build stopped the worker at every start."""
    proposed = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V2, "author": "tester"})
    assert proposed.status == 201, proposed.body
    partner, customers = _customers(rules_stack)
    broken = _inject_broken_active(rules_stack.dsn(0))
    _restart_worker(rules_stack, 0)  # fails (60 s) if the worker never becomes ready again
    pid = rules_stack.shard_worker_pids(0)
    time.sleep(1.0)
    assert rules_stack.shard_worker_pids(0) == pid, "the worker is restarting over and over"
    # It enforces the last version that builds, and says so.
    assert _markers(rules_stack, partner, customers) == ["marker_v2", "marker_v2"]
    shard0 = _rules(rules_stack)["shards"][0]
    assert shard0["active_version"] == broken and shard0["enforced_version"] == version_of(LIVE_V2)
    assert shard0["degraded"] is True
    assert "velocity_score" in shard0["problems"][0]["error"]
    shown = _rules(rules_stack)
    assert shown["degraded_shards"] == [0] and shown["consistent"] is False
    ready = rules_stack.call("GET", "/readyz")
    assert ready.status == 200 and ready.body == {"status": "degraded"}
    health = rules_stack.admin("GET", "/admin/v1/health")
    assert health.body["shards"][0]["fraud"]["degraded"] is True
    assert health.body["shards"][1]["fraud"]["degraded"] is False
    assert any("fraud rule set is degraded" in r for r in health.body["reasons"]), health.body
    # An operator's change heals it everywhere.
    healed = rules_stack.admin("POST", "/admin/v1/fraud/rules", {"text": LIVE_V3, "author": "tester"})
    assert healed.status == 201, healed.body
    assert healed.body["consistent"] is True and healed.body["degraded_shards"] == []
    assert _markers(rules_stack, partner, customers) == ["marker_v3", "marker_v3"]
