"""Per-partner rate limits: the token bucket (pure, injected time) refills at its rate up to
its burst, refuses with a Retry-After that is exact, splits the limit over W gateway
processes, stays bounded in partners; on a live stack a partner over its limit gets 429
QP.RateLimit.Exceeded with Retry-After and the IETF RateLimit fields (every partner answer
carries them), other partners are untouched, and an admin override raises the limit."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from conftest import Stack, http, start_stack, stop_stack
from test_api import assert_error

from gateway.ratelimit import RateLimit, RateLimiter


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    limiter = RateLimiter(RateLimit(requests_per_s=2, burst=3))
    verdicts = [limiter.check("p", 100.0) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[3].retry_after_s == 1 and limiter.refused == 1
    assert not limiter.check("p", 100.4).allowed  # 0.8 of a token back: still no
    assert limiter.check("p", 100.5).allowed  # one whole token after 0.5 s at 2/s
    # Refill stops at the burst.
    later = [limiter.check("p", 200.0) for _ in range(4)]
    assert [v.allowed for v in later] == [True, True, True, False]


def test_partners_have_their_own_buckets_and_overrides() -> None:
    limiter = RateLimiter(RateLimit(1, 1))
    assert limiter.check("a", 0.0).allowed and not limiter.check("a", 0.0).allowed
    assert limiter.check("b", 0.0).allowed
    big = RateLimit(100, 50)
    assert limiter.check("c", 0.0, big).remaining == 49
    # A lowered limit caps tokens saved under the higher one.
    assert limiter.check("c", 0.0, RateLimit(1, 5)).remaining == 4


def test_parts_split_rate_and_burst_over_processes() -> None:
    parts = [RateLimiter(RateLimit(requests_per_s=10, burst=10), worker=i, workers=2) for i in range(2)]
    assert [sum(p.check("p", 0.0).allowed for _ in range(10)) for p in parts] == [5, 5]
    assert [sum(p.check("p", 1.0).allowed for _ in range(10)) for p in parts] == [5, 5]  # 5/s each
    verdict = parts[0].check("p", 1.0)
    assert verdict.headers() == {"RateLimit-Policy": '"partner";q=5;w=1', "RateLimit": '"partner";r=0;t=1'}


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("burst", [1, 2, 3, 5, 10, 11, 1000])
def test_w_processes_never_let_more_than_the_burst_through(workers: int, burst: int) -> None:
    """The parts add up to exactly the burst and the rate, whatever W and B (the old share
    rounded each process's part up to 1, so W processes let W tokens through for B = 1)."""
    for partner in (f"ptn_{i}" for i in range(20)):
        limit = RateLimit(requests_per_s=8, burst=burst)
        parts = [limit.part(i, workers, partner) for i in range(workers)]
        assert sum(p.burst for p in parts) == burst
        assert sum(p.requests_per_s for p in parts) == pytest.approx(8)
        limiters = [RateLimiter(limit, worker=i, workers=workers) for i in range(workers)]
        # Everything the partner sends at once, over every process: exactly the burst passes.
        assert sum(lim.check(partner, 0.0).allowed for lim in limiters for _ in range(burst + 5)) == burst
        # And one second later, the rate (whole tokens only: at most burst more).
        assert sum(lim.check(partner, 1.0).allowed for lim in limiters for _ in range(burst + 20)) <= min(burst, 8)


def test_odd_tokens_land_on_different_processes_for_different_partners() -> None:
    holders = {next(i for i in range(2) if RateLimit(1, 1).part(i, 2, f"ptn_{n}").burst == 1) for n in range(40)}
    assert holders == {0, 1}


def test_a_process_without_a_part_refuses_with_a_retry_after() -> None:
    limit = RateLimit(requests_per_s=1, burst=1)
    empty = next(RateLimiter(limit, worker=i, workers=2) for i in range(2) if limit.part(i, 2, "p").burst == 0)
    verdict = empty.check("p", 0.0)
    assert not verdict.allowed and verdict.retry_after_s == 1
    assert verdict.headers() == {"RateLimit-Policy": '"partner";q=0;w=1', "RateLimit": '"partner";r=0;t=0'}


def test_a_batch_takes_one_token_per_item_partially() -> None:
    limiter = RateLimiter(RateLimit(requests_per_s=1, burst=10))
    assert limiter.check("p", 0.0).granted == 1  # the batch request itself
    first = limiter.check("p", 0.0, cost=99, partial=True)
    assert first.granted == 9 and first.allowed and limiter.refused == 90
    assert limiter.check("p", 0.0, cost=5, partial=True).granted == 0  # none left
    assert not limiter.check("p", 0.5).allowed
    # Without `partial` a cost is all or nothing.
    assert limiter.check("p", 4.0, cost=5).granted == 0
    assert limiter.check("p", 5.0, cost=5).granted == 5


def test_retry_after_is_when_a_token_is_back() -> None:
    limiter = RateLimiter(RateLimit(requests_per_s=0.25, burst=1))
    assert limiter.check("p", 0.0).allowed
    refused = limiter.check("p", 1.0)
    assert not refused.allowed and refused.retry_after_s == 3  # 0.25 tokens after 1 s; 0.75 / 0.25
    assert not limiter.check("p", 3.9).allowed and limiter.check("p", 4.0).allowed


def test_buckets_are_bounded() -> None:
    limiter = RateLimiter(RateLimit(1, 1), partners_max=3)
    for partner in "abcd":
        limiter.check(partner, 0.0)
    assert list(limiter.buckets) == ["b", "c", "d"]


@pytest.mark.parametrize("bad", [RateLimit(0, 1), RateLimit(1, 0)])
def test_bad_limits_are_refused(bad: RateLimit) -> None:
    with pytest.raises(ValueError):
        RateLimiter(bad)


def test_every_partner_answer_carries_the_rate_limit_fields(stack: Stack, partner: dict[str, Any]) -> None:
    reply = stack.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"])
    assert reply.status == 200
    assert re.fullmatch(r'"partner";q=[0-9]+;w=[0-9]+', reply.headers["ratelimit-policy"])
    assert re.fullmatch(r'"partner";r=[0-9]+;t=[0-9]+', reply.headers["ratelimit"])
    missing = stack.call("GET", "/v1/agreements/agr_nosuchagreement", token=partner["token"])
    assert missing.status == 404 and "ratelimit" in missing.headers
    assert "ratelimit" not in stack.call("GET", "/healthz").headers  # no partner, no limit


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(
        tmp_path_factory.mktemp("ratelimit"),
        workers=1,
        demo=False,
        extra=("--rate-limit-rps", "2", "--rate-limit-burst", "4"),
    )
    try:
        yield s
    finally:
        stop_stack(s)


def test_over_the_limit_is_429_with_retry_after_and_others_are_untouched(limited: Stack) -> None:
    busy, quiet = limited.new_partner("Busy"), limited.new_partner("Quiet")
    path = f"/v1/accounts/{busy['settlement_account']}/balance"
    replies = [limited.call("GET", path, token=busy["token"]) for _ in range(5)]
    assert [r.status for r in replies[:4]] == [200, 200, 200, 200]
    refused = replies[4]
    assert_error(refused, 429, "QP.RateLimit.Exceeded")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == '"partner";q=4;w=2'
    assert refused.headers["ratelimit"].startswith('"partner";r=0;')
    # A payment refused for the rate moves nothing and is not recorded. (The refusal was held
    # for its Retry-After, so that bucket has refilled meanwhile: a fresh partner's, emptied.)
    busy = limited.new_partner("Busy again")
    path = f"/v1/accounts/{busy['settlement_account']}/balance"
    assert [limited.call("GET", path, token=busy["token"]).status for _ in range(4)] == [200] * 4
    key = uuid.uuid4().hex
    body = {
        "agreement_id": "agr_" + "0" * 20,
        "amount": "1.00",
        "currency": "CNY",
        "creditor_account": busy["settlement_account"],
        "reference": "r",
    }
    assert (
        limited.call("POST", "/v1/quick-payments", body, token=busy["token"], headers={"x-idempotency-key": key}).status
        == 429
    )
    assert (
        limited.call("GET", f"/v1/accounts/{quiet['settlement_account']}/balance", token=quiet["token"]).status == 200
    )
    time.sleep(int(refused.headers["retry-after"]))
    assert limited.call("GET", path, token=busy["token"]).status == 200


def test_an_admin_override_raises_one_partners_limit(limited: Stack) -> None:
    vip = limited.new_partner("VIP")
    reply = limited.admin(
        "PUT", f"/admin/v1/partners/{vip['partner_id']}/rate-limit", {"requests_per_s": 1000, "burst": 50}
    )
    assert reply.status == 200 and reply.body["requests_per_s"] == 1000, reply.body
    path = f"/v1/accounts/{vip['settlement_account']}/balance"
    statuses = [limited.call("GET", path, token=vip["token"]).status for _ in range(20)]
    assert statuses == [200] * 20
    last = limited.call("GET", path, token=vip["token"])
    assert last.headers["ratelimit-policy"] == '"partner";q=50;w=1'
    assert_error(
        limited.admin("PUT", "/admin/v1/partners/ptn_nosuch/rate-limit", {"requests_per_s": 1, "burst": 1}),
        404,
        "QP.Partner.NotFound",
    )
    assert_error(
        limited.admin("PUT", f"/admin/v1/partners/{vip['partner_id']}/rate-limit", {"requests_per_s": 0, "burst": 1}),
        400,
        "QP.Field.Invalid",
    )
    assert_error(
        limited.admin("PUT", f"/admin/v1/partners/{vip['partner_id']}/rate-limit", {"requests_per_s": 5, "burst": 2.5}),
        400,
        "QP.Field.Invalid",
        path="$.burst",
    )
    assert (
        limited.admin(
            "PUT", f"/admin/v1/partners/{vip['partner_id']}/rate-limit", {"requests_per_s": 1000.0, "burst": 50.0}
        ).body["burst"]
        == 50
    )
    assert_error(
        http(
            "PUT",
            limited.url(f"/admin/v1/partners/{vip['partner_id']}/rate-limit"),
            {"requests_per_s": 5, "burst": 5},
            token=vip["token"],
        ),
        401,
        "QP.Auth.Admin",
    )


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # A rate so slow that nothing refills during a test: what passes is the burst alone.
    s = start_stack(
        tmp_path_factory.mktemp("ratelimit2"),
        workers=2,
        demo=False,
        extra=("--rate-limit-rps", "0.05", "--rate-limit-burst", "5"),
    )
    try:
        yield s
    finally:
        stop_stack(s)


def test_batches_take_a_token_per_payment_across_gateway_workers(two_workers: Stack) -> None:
    """Batches over fresh connections (the kernel spreads them over both gateway workers):
    in total the partner's burst of payments is placed, never more; the rest are item 429s
    in the error shape, with nothing moved; once no token is left a batch is a whole 429."""
    partner = two_workers.new_partner("Batcher")
    customer = two_workers.new_customer(partner, funding="100.00")
    creditor = two_workers.new_account()
    placed, refused, batches_refused = 0, 0, 0
    for n in range(10):
        items = [
            {
                "agreement_id": customer["agreement_id"],
                "amount": "1.00",
                "currency": "CNY",
                "creditor_account": creditor,
                "reference": f"b{n}",
                "idempotency_key": uuid.uuid4().hex,
            }
            for _ in range(4)
        ]
        reply = two_workers.call(
            "POST",
            "/v1/quick-payments/batch",
            {"payments": items},
            token=partner["token"],
            headers={"x-idempotency-key": uuid.uuid4().hex},
        )
        if reply.status == 429:
            assert_error(reply, 429, "QP.RateLimit.Exceeded")
            batches_refused += 1
            continue
        assert reply.status == 200, reply.body
        statuses = [r["status"] for r in reply.body["results"]]
        assert statuses == sorted(statuses, key=lambda st: st != 201), statuses  # granted items come first
        for index, result in enumerate(reply.body["results"]):
            if result["status"] == 201:
                placed += 1
            else:
                assert result["status"] == 429, result
                assert result["error"]["code"] == "QP.RateLimit.Exceeded"
                assert result["error"]["errors"][0]["path"] == f"$.payments[{index}]"
                refused += 1
        if refused:
            assert int(reply.headers["retry-after"]) >= 1
    assert 1 <= placed <= 5, (placed, refused, batches_refused)
    assert placed + refused + 4 * batches_refused == 40
    assert batches_refused >= 1
    # Only the placed payments moved money.
    answer = two_workers.admin("GET", f"/admin/v1/accounts/{creditor}/balance")
    assert answer.status == 200, answer.body
    assert answer.body["balance"] == f"{placed}.00", answer.body


def test_single_requests_across_workers_never_exceed_the_burst(two_workers: Stack) -> None:
    partner = two_workers.new_partner("Single")
    path = f"/v1/accounts/{partner['settlement_account']}/balance"
    statuses = [two_workers.call("GET", path, token=partner["token"]).status for _ in range(30)]
    assert statuses.count(200) <= 5 and set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2  # both workers hold part of it (3 + 2)


def test_refusals_are_held_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 for the rate is answered after min(Retry-After, REFUSAL_HOLD_S), so a client
    looping on refusals costs one per hold; past REFUSALS_HELD_MAX held at once, at once."""
    import asyncio

    from gateway import app as gateway_app

    monkeypatch.setattr(gateway_app, "REFUSAL_HOLD_S", 0.3)
    monkeypatch.setattr(gateway_app, "REFUSALS_HELD_MAX", 2)

    async def timed() -> float:
        started = time.monotonic()
        await gateway_app._hold_refusal(5)
        return time.monotonic() - started

    async def three() -> list[float]:
        return list(await asyncio.gather(timed(), timed(), timed()))

    waits = sorted(asyncio.run(three()))
    assert waits[0] < 0.1 and 0.25 <= waits[1] and 0.25 <= waits[2] < 1.0, waits
    assert gateway_app._refusals_held == 0


def test_a_refused_request_is_answered_after_the_hold(limited: Stack) -> None:
    busy = limited.new_partner("Looping")
    path = f"/v1/accounts/{busy['settlement_account']}/balance"
    for _ in range(4):
        limited.call("GET", path, token=busy["token"])
    started = time.monotonic()
    refused = limited.call("GET", path, token=busy["token"])
    assert_error(refused, 429, "QP.RateLimit.Exceeded")
    assert time.monotonic() - started >= 0.9


def test_a_charge_after_the_fact_is_debt_at_most_one_burst_deep() -> None:
    limiter = RateLimiter(RateLimit(requests_per_s=10, burst=20))
    assert limiter.check("p", 0.0).allowed  # 19 left
    limiter.charge("p", 0.0, 25)  # a big recon file: 6 in debt
    refused = limiter.check("p", 0.0)
    assert not refused.allowed and refused.retry_after_s == 1  # (1 + 6) / 10 s, rounded up
    assert not limiter.check("p", 0.6).allowed and limiter.check("p", 0.8).allowed
    limiter.charge("p", 1.0, 10_000)  # never deeper than one burst
    assert limiter.buckets["p"].tokens == -20
    assert limiter.check("p", 4.1).allowed
    limiter.charge("nobody", 0.0, 5)  # no bucket yet: nothing to charge
    assert "nobody" not in limiter.buckets
