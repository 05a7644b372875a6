"""Deciders are atomic by construction (ledger/undo.py, ShardWorker._decide_one): a command
that fails at any step of its decision or of the round-trip checks (ledger/storable.py)
leaves memory and the batch's WriteSet exactly as they were, and the shard goes on
deciding; a command that succeeds is decided exactly as if no failure had happened before.

The model test drives an unstarted ShardWorker (no sockets, no database) with random
command sequences, fails each command at every one of its steps in turn (UndoLog.fault_at),
checks a fingerprint of the whole state and WriteSet after each failure, then lets the
command through, and finally compares the state with a twin that never saw a failure.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fraud
from kernel.ids import CLEARING_ACCOUNT, FUNDING_ACCOUNT
from kernel.timestamps import TIME_MAX_MS, OutOfRange, utc_ms
from ledger.fraud_port import FraudAdapter, facts_of_payment, make_facts
from ledger.model import Account
from ledger.state import WriteSet
from ledger.storable import NotStorable, check_agreement, check_transfer, check_value
from ledger.undo import UndoLog
from ledger.worker import ShardWorker, WorkerConfig

NOW_MS = 1_780_000_000_000
PARTNER = "ptn_a"
SETTLEMENT = "set_ptn_a"
CUSTOMERS = [f"acc_{i}" for i in range(3)]


def make_worker() -> ShardWorker:
    worker = ShardWorker(
        WorkerConfig(
            shard=0, shard_count=2, dsn="unused", listen="unix:/nonexistent", peers={}, cluster_secret=b"t" * 32
        ),
        clock_ms=lambda: NOW_MS,
    )
    state = worker.state
    state.load_account(Account(FUNDING_ACCOUNT, "funding", "CNY", 0, True))
    state.load_account(Account(CLEARING_ACCOUNT, "clearing", "CNY", 0, True))
    state.load_account(Account(SETTLEMENT, "settlement", "CNY", 0, False, PARTNER))
    for account_id in CUSTOMERS:
        state.load_account(Account(account_id, "customer", "CNY", 0, False))
    adapter = FraudAdapter(worker)
    adapter.load(fraud.RuleRegistry(), None, NOW_MS)
    adapter.filter = fraud.FraudFilter(adapter._enforced_ruleset(), lists=fraud.NamedLists())
    worker.fraud_admin = adapter
    state.fraud = adapter.filter
    state.make_facts = make_facts
    state.payment_facts = facts_of_payment
    return worker


def fingerprint(worker: ShardWorker, ws: WriteSet) -> str:
    state = worker.state
    adapter = worker.fraud_admin
    return repr(
        (
            sorted(
                (a.id, a.kind, a.balance_minor, a.committed_balance_minor, a.partner_id)
                for a in state.accounts.values()
            ),
            sorted(
                (
                    g.id,
                    g.status,
                    g.status_updated_at_ms,
                    g.valid_from_ms,
                    g.valid_to_ms,
                    g.authorise_by_ms,
                    [
                        (x.period, x.alignment, x.amount_minor, x.window_start_ms, x.window_end_ms, x.spent_minor)
                        for x in g.periodic_limits
                    ],
                )
                for g in state.agreements.values()
            ),
            sorted((k, list(v)) for k, v in state.agreements_by_partner.items()),
            sorted((k, list(v)) for k, v in state.agreements_by_debtor.items()),
            sorted((k, sorted(v)) for k, v in state.visibility.items()),
            sorted((k, repr(v)) for k, v in state.visible_ends.items()),
            sorted((k, repr(v)) for k, v in state.pending_ends.items()),
            sorted((k, list(v)) for k, v in state.pending_ends_by_partner.items()),
            sorted((k, sorted(v.items())) for k, v in state.partners_cache.items()),
            [(t.id, t.seq, t.status, t.refunded_minor) for t in state.transfers.values()],
            state.next_seq,
            state.cutoff_version,
            adapter.filter.lists.snapshot(),
            adapter.registry.to_dict(),
            adapter.filter.stats(),
            adapter.fallback,
            repr(ws),
        )
    )


# ---- commands: a small universe of ids, so that commands meet each other -------------------
ids = st.integers(0, 3)
amounts = st.sampled_from([1, 50, 999, 5_000, 2**62, 2**63 - 1])
# Around now, across the whole representable range and its edges.
times = st.one_of(
    st.none(),
    st.sampled_from([0, NOW_MS - 86_400_000, NOW_MS + 86_400_000, TIME_MAX_MS - 1, TIME_MAX_MS]),
    st.integers(0, TIME_MAX_MS),
)
limits = st.lists(
    st.tuples(st.sampled_from(["Day", "Week", "Month", "Year"]), st.sampled_from(["Calendar", "Consent"]), amounts),
    max_size=3,
    unique_by=lambda x: (x[0], x[1]),
).map(lambda xs: [list(x) for x in xs])


@st.composite
def commands(draw: Any) -> tuple[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "fund",
                "open_accounts",
                "create_agreement",
                "agreement_action",
                "pay",
                "pay",
                "pay_cross",
                "refund",
                "credit",
                "delivered",
                "create_partner",
                "partner_rate_limit",
                "partner_action",
                "settings",
                "fraud_list",
                "fraud_stage",
            ]
        )
    )
    n = draw(ids)
    if kind == "fund":
        return "fund", {
            "transfer_id": f"fund_{n}_{draw(ids)}",
            "account_id": CUSTOMERS[n % 3],
            "amount_minor": draw(amounts),
            "currency": "CNY",
            "reference": "f",
            "body_hash": "h",
        }
    if kind == "open_accounts":
        return "open_accounts", [
            {"id": f"acc_new_{n}", "currency": "CNY"},
            {"id": f"set_ptn_{n}", "kind": "settlement", "currency": "CNY", "partner_id": f"ptn_{n}"},
        ]
    if kind == "create_agreement":
        valid = sorted([x for x in (draw(times), draw(times)) if x is not None])
        args = {
            "id": f"agr_{n}",
            "partner_id": PARTNER,
            "debtor_account": CUSTOMERS[n % 3],
            "currency": "CNY",
            "per_payment_limit_minor": draw(amounts),
            "periodic_limits": draw(limits),
        }
        if len(valid) == 2:
            args.update(valid_from_ms=valid[0], valid_to_ms=valid[1])
        elif valid:
            args["valid_to_ms" if draw(st.booleans()) else "valid_from_ms"] = valid[0]
        return "create_agreement", args
    if kind == "agreement_action":
        return "agreement_action", {
            "id": f"agr_{n}",
            "action": draw(st.sampled_from(["authorise", "authorise", "suspend", "resume", "revoke", "reject"])),
            "actor": "customer",
        }
    if kind in ("pay", "pay_cross"):
        cross = kind == "pay_cross"
        return "pay", {
            "payment_id": f"pay_{n}_{draw(ids)}",
            "partner_id": PARTNER,
            "agreement_id": f"agr_{n}",
            "amount_minor": draw(amounts),
            "currency": "CNY",
            "creditor_account": "acc_far" if cross else SETTLEMENT,
            "creditor_shard": 1 if cross else 0,
            "reference": "r",
            "body_hash": "h",
            "device_id": f"dev_{n}",
        }
    if kind == "refund":
        return "refund", {
            "refund_id": f"ref_{n}",
            "partner_id": PARTNER,
            "payment_id": f"pay_{n}_{draw(ids)}",
            "amount_minor": draw(st.one_of(st.none(), amounts)),
            "body_hash": "h",
        }
    if kind == "credit":
        return "credit", [[f"leg_{n}", 1, CUSTOMERS[n % 3], draw(amounts), "CNY", NOW_MS]]
    if kind == "delivered":
        return "delivered", [f"pay_{n}_{draw(ids)}"]
    if kind == "create_partner":
        return "create_partner", {
            "id": f"ptn_{n}",
            "name": "P",
            "secret_sha256": "s",
            "settlement_account": f"set_ptn_{n}",
        }
    if kind == "partner_rate_limit":
        return "partner_rate_limit", {"id": PARTNER, "requests_per_s": n + 1, "burst": 2 * n + 1}
    if kind == "partner_action":
        action = draw(st.sampled_from(["disable", "enable", "rotate_secret", "retire_secret", "revoke_tokens"]))
        args = {"id": f"ptn_{n}", "action": action, "actor": "ops"}
        if action == "rotate_secret":
            args.update(secret_sha256=f"s{draw(ids)}", overlap_ms=draw(st.sampled_from([0, 1_000, 86_400_000])))
        return "partner_action", args
    if kind == "settings":
        return "settings", {f"key_{n}": "value"}
    if kind == "fraud_list":
        return "fraud", {
            "action": draw(st.sampled_from(["list_add", "list_remove"])),
            "list": "blocked_devices",
            "values": [f"dev_{n}", f"dev_{draw(ids)}"],
        }
    return "fraud", {"action": "stage", "text": "threshold block 100\n" if n % 2 else "threshold review 40\n"}


def decide(worker: ShardWorker, ws: WriteSet, op: str, args: Any) -> tuple[bool, Any]:
    """As the batcher does: the intake check, then the atomic decision."""
    from ledger import validate as v
    from ledger.worker import _CHECKS

    try:
        _CHECKS[op](worker, args)
    except v.BadCommand as exc:
        return False, {"code": "BAD_REQUEST", "message": str(exc)}
    return worker._decide_one(op, args, ws, NOW_MS)


def commit(worker: ShardWorker, ws: WriteSet) -> None:
    """What the writer does once a batch has committed."""
    for transfer in ws.transfers:
        transfer.committed = True
    for account_id, delta in ws.deltas.items():
        worker.state.accounts[account_id].committed_balance_minor += delta


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(commands(), min_size=1, max_size=6), min_size=1, max_size=4))
def test_a_failure_at_any_step_changes_nothing_and_the_shard_goes_on(batches: list[list[tuple[str, Any]]]) -> None:
    worker, twin = make_worker(), make_worker()
    undo = worker.state.undo
    injected = 0
    for batch in batches:
        ws, twin_ws = WriteSet(), WriteSet()
        for op, args in batch:
            step = 0
            while True:
                before = fingerprint(worker, ws)
                undo.fault_at = step
                try:
                    ok, result = decide(worker, ws, op, args)
                finally:
                    hit = undo.steps > step
                    undo.fault_at = None
                if not hit:
                    break
                injected += 1
                assert not ok and result["code"] == "INTERNAL", (op, step, result)
                assert fingerprint(worker, ws) == before, f"{op} failed at step {step} and left a change"
                step += 1
            twin_ok, twin_result = decide(twin, twin_ws, op, args)
            assert (ok, result) == (twin_ok, twin_result), op
            assert fingerprint(worker, ws) == fingerprint(twin, twin_ws)
            if not ok:  # an error answer stores nothing either
                assert result["code"] != "INTERNAL", result
        ws.check_balanced()
        commit(worker, ws)
        commit(twin, twin_ws)
    assert injected > 0
    assert worker.decide_failures == injected


def test_every_kind_of_command_is_failed_at_each_of_its_steps() -> None:
    """Not vacuous: each decider has steps the model test fails (a decider that changed
    state without the undo log would show in the fingerprint)."""
    worker = make_worker()
    ws = WriteSet()
    script: list[tuple[str, Any]] = [
        (
            "fund",
            {
                "transfer_id": "f1",
                "account_id": "acc_0",
                "amount_minor": 10_000,
                "currency": "CNY",
                "reference": "f",
                "body_hash": "h",
            },
        ),
        (
            "create_agreement",
            {
                "id": "agr_0",
                "partner_id": PARTNER,
                "debtor_account": "acc_0",
                "currency": "CNY",
                "per_payment_limit_minor": 5_000,
                "periodic_limits": [["Day", "Calendar", 8_000]],
            },
        ),
        ("agreement_action", {"id": "agr_0", "action": "authorise", "actor": "customer"}),
        (
            "pay",
            {
                "payment_id": "p1",
                "partner_id": PARTNER,
                "agreement_id": "agr_0",
                "amount_minor": 100,
                "currency": "CNY",
                "creditor_account": SETTLEMENT,
                "creditor_shard": 0,
                "reference": "r",
                "body_hash": "h",
            },
        ),
        (
            "pay",
            {
                "payment_id": "p2",
                "partner_id": PARTNER,
                "agreement_id": "agr_0",
                "amount_minor": 100,
                "currency": "CNY",
                "creditor_account": "acc_far",
                "creditor_shard": 1,
                "reference": "r",
                "body_hash": "h",
            },
        ),
        ("credit", [["leg_1", 1, "acc_1", 100, "CNY", NOW_MS]]),
        ("open_accounts", [{"id": "acc_9", "currency": "CNY"}]),
        ("create_partner", {"id": "ptn_b", "name": "B", "secret_sha256": "s", "settlement_account": "set_ptn_b"}),
        ("settings", {"k": "v"}),
        ("fraud", {"action": "list_add", "list": "blocked_devices", "values": ["d1"]}),
    ]
    for op, args in script:
        steps = 0
        while True:
            before = fingerprint(worker, ws)
            worker.state.undo.fault_at = steps
            ok, result = decide(worker, ws, op, args)
            hit = worker.state.undo.steps > steps
            worker.state.undo.fault_at = None
            if not hit:
                break
            assert fingerprint(worker, ws) == before
            steps += 1
        assert ok, (op, result)
        assert steps >= 2, f"{op} has {steps} steps"
        if op == "pay" and args["payment_id"] == "p1":
            commit(worker, ws)
            ws = WriteSet()
            refund = {
                "refund_id": "r1",
                "partner_id": PARTNER,
                "payment_id": "p1",
                "amount_minor": 50,
                "body_hash": "h",
            }
            script.append(("refund", refund))


# ---- round trips ---------------------------------------------------------------------------
def test_a_decider_that_raises_after_changing_memory_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism, not the example: whatever raises after the first change."""
    worker = make_worker()
    ws = WriteSet()
    original = worker.state.create_agreement

    def create_then_raise(agreement: Any, ws: WriteSet) -> str:
        original(agreement, ws)
        raise OverflowError("date value out of range")

    monkeypatch.setattr(worker.state, "create_agreement", create_then_raise)
    before = fingerprint(worker, ws)
    ok, result = decide(
        worker,
        ws,
        "create_agreement",
        {
            "id": "agr_0",
            "partner_id": PARTNER,
            "debtor_account": "acc_0",
            "currency": "CNY",
            "per_payment_limit_minor": 5_000,
            "periodic_limits": [],
        },
    )
    assert (ok, result["code"]) == (False, "BAD_REQUEST")
    assert fingerprint(worker, ws) == before and not ws.agreements and "agr_0" not in worker.state.agreements


def test_an_answer_that_cannot_cross_the_protocol_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker()
    ws = WriteSet()
    import ledger.worker as worker_module

    original = worker_module._DECIDERS["settings"]

    def unencodable(w: Any, args: Any, ws: WriteSet, now_ms: int) -> tuple[bool, Any]:
        original(w, args, ws, now_ms)
        return True, {"value": 2**70}  # msgpack holds 64-bit integers only

    monkeypatch.setitem(worker_module._DECIDERS, "settings", unencodable)
    before = fingerprint(worker, ws)
    ok, result = worker._decide_one("settings", {"k": "v"}, ws, NOW_MS)
    assert (ok, result["code"]) == (False, "BAD_REQUEST")
    assert fingerprint(worker, ws) == before and ws.settings == {}


@pytest.mark.parametrize("value", ["a\x00b", "\ud800", 2**63, float("nan"), {1: "x"}, object()])
def test_values_the_database_refuses_are_not_storable(value: Any) -> None:
    with pytest.raises(NotStorable):
        check_value({"x": [value]}, "t")


def test_an_agreement_whose_times_readers_cannot_render_is_not_storable() -> None:
    from ledger.agreements import PeriodicLimit
    from ledger.model import Agreement

    good = Agreement(
        "agr_x",
        PARTNER,
        "acc_0",
        "CNY",
        100,
        [PeriodicLimit("Year", "Consent", 100)],
        "AwaitingAuthorisation",
        NOW_MS,
        TIME_MAX_MS - 1,
        TIME_MAX_MS,
        NOW_MS,
    )
    check_agreement(good, NOW_MS)  # the last representable instant, with a Year window after it
    beyond = Agreement(
        "agr_y", PARTNER, "acc_0", "CNY", 100, [], "AwaitingAuthorisation", NOW_MS, None, TIME_MAX_MS + 1, NOW_MS
    )
    with pytest.raises(NotStorable):
        check_agreement(beyond, NOW_MS)


def test_a_transfer_round_trips_through_both_write_paths() -> None:
    from ledger.model import Transfer

    transfer = Transfer(
        "p1",
        1,
        "payment",
        "acc_0",
        SETTLEMENT,
        100,
        "CNY",
        "AcceptedSettlementCompleted",
        NOW_MS,
        PARTNER,
        "agr_0",
        "ref ü",
        SETTLEMENT,
        ("A",),
        {"score": 0.5, "hits": []},
        "h",
        None,
        None,
        0,
        {"reason_details": {"limit_minor": 5}},
    )
    check_transfer(transfer)
    with pytest.raises(NotStorable):
        check_transfer(Transfer("p2", 1, "payment", "a", "b", 1, "CNY", "s", NOW_MS, fraud={"x": "\x00"}))


# ---- normalise, then validate ----------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["9999-12-31T23:00:00-05:00", "9998-12-31T00:00:00Z", "1969-12-31T23:59:59Z", "1970-01-01T07:59:59+08:00"]
)
def test_times_out_of_range_once_in_utc_are_refused(text: str) -> None:
    with pytest.raises(OutOfRange):
        utc_ms(datetime.datetime.fromisoformat(text))


def test_times_in_range_normalise_to_utc() -> None:
    assert utc_ms(datetime.datetime.fromisoformat("1970-01-01T08:00:00+08:00")) == 0
    assert utc_ms(datetime.datetime.fromisoformat("9998-12-30T23:59:59.999+00:00")) == TIME_MAX_MS


def test_text_is_stored_in_nfc_and_its_limit_holds_after_normalising() -> None:
    import msgspec

    from gateway.schemas import QuickPaymentRequest, decode_body

    body = {
        "agreement_id": "agr_x",
        "amount": "1.00",
        "currency": "CNY",
        "creditor_account": "acc_x",
        "reference": "cafe\u0301",
    }
    decoded: Any = decode_body(msgspec.json.encode(body), QuickPaymentRequest)
    assert decoded.reference == "caf\u00e9"
    # U+0958 is one character that NFC turns into two: 140 of them pass the raw length check.
    from gateway.errors import ApiError

    with pytest.raises(ApiError) as refused:
        decode_body(msgspec.json.encode({**body, "reference": "\u0958" * 140}), QuickPaymentRequest)
    assert refused.value.status == 400


def test_the_shard_refuses_text_that_is_not_nfc() -> None:
    from ledger import validate as v

    assert v.is_safe_text("caf\u00e9", 10) and not v.is_safe_text("cafe\u0301", 10)


def test_undo_log_restores_absent_keys_and_runs_compensations_newest_first() -> None:
    log = UndoLog()
    log.begin()
    mapping: dict[str, int] = {"a": 1}
    order: list[int] = []
    log.setitem(mapping, "a", 2)
    log.setitem(mapping, "b", 3)
    log.on_undo(lambda: order.append(1))
    log.on_undo(lambda: order.append(2))
    log.defer(order.append, 99)
    log.rollback()
    assert mapping == {"a": 1} and order == [2, 1]
    assert log.commit() == []


def test_outside_a_decision_the_log_keeps_nothing_and_effects_run_at_once() -> None:
    log = UndoLog()
    mapping: dict[str, int] = {}
    ran: list[int] = []
    log.setitem(mapping, "a", 1)
    log.on_undo(lambda: ran.append(0))
    log.defer(ran.append, 7)
    assert mapping == {"a": 1} and ran == [7] and log.written_items() == []
