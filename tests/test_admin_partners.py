"""GET /admin/v1/partners: every partner, paged by id, with its cut-off state, rate limit and the
agreements pending for it summed over the shards (against the shared stack)."""

from __future__ import annotations

from typing import Any

from conftest import Stack

from kernel.limits import PAGE_LIMIT_MAX


def all_partners(stack: Stack, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(10_000):
        reply = stack.admin("GET", f"/admin/v1/partners?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.body
        assert len(reply.body["partners"]) <= limit
        seen.extend(reply.body["partners"])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the pages never ended")


def test_partner_list_needs_the_admin_token(stack: Stack) -> None:
    assert stack.call("GET", "/admin/v1/partners").status == 401
    partner = stack.new_partner("List Auth Partner")
    refused = stack.call("GET", "/admin/v1/partners", token=partner["token"])
    assert refused.status in (401, 403), refused.body
    assert "code" in refused.body


def test_partner_list_is_bounded_and_validated(stack: Stack) -> None:
    for query, field in (
        ("limit=0", "query.limit"),
        (f"limit={PAGE_LIMIT_MAX + 1}", "query.limit"),
        ("limit=x", "query.limit"),
        ("cursor=no%20spaces", "query.cursor"),
        ("cursor=", "query.cursor"),  # Schemathesis: the document says 1-64 characters
        ("cursor=" + "a" * 65, "query.cursor"),
    ):
        reply = stack.admin("GET", f"/admin/v1/partners?{query}")
        assert reply.status == 400, (query, reply.body)
        assert reply.body["code"] == "QP.Query.Invalid", reply.body
        assert field in str(reply.body), reply.body  # the error names the parameter


def test_partner_list_shows_state_rate_limit_and_pending_over_shards(stack: Stack) -> None:
    busy = stack.new_partner("List Busy Partner")
    quiet = stack.new_partner("List Quiet Partner")
    # two pending agreements on different shards (the debtors'), one authorised (not pending)
    for shard in (0, stack.shards - 1):
        stack.new_customer(busy, shard=shard, funding="", authorise=False)
    stack.new_customer(busy, shard=0, funding="")
    assert stack.admin("POST", f"/admin/v1/partners/{quiet['partner_id']}/disable", {"actor": "test"}).status == 200
    limited = stack.admin(
        "PUT", f"/admin/v1/partners/{quiet['partner_id']}/rate-limit", {"requests_per_s": 7, "burst": 9}
    )
    assert limited.status == 200, limited.body

    everyone = stack.admin("GET", f"/admin/v1/partners?limit={PAGE_LIMIT_MAX}")
    assert everyone.status == 200, everyone.body
    by_id = {p["partner_id"]: p for p in everyone.body["partners"]}
    assert by_id[busy["partner_id"]]["pending_agreements"] == 2
    assert by_id[busy["partner_id"]]["disabled"] is False
    assert by_id[busy["partner_id"]]["rate_limit"]["override"] is False
    assert by_id[busy["partner_id"]]["rate_limit"]["requests_per_s"] >= 1
    assert by_id[busy["partner_id"]]["name"] == "List Busy Partner"
    assert by_id[quiet["partner_id"]]["disabled"] is True
    assert by_id[quiet["partner_id"]]["pending_agreements"] == 0
    assert by_id[quiet["partner_id"]]["rate_limit"] == {"requests_per_s": 7, "burst": 9, "override": True}
    assert stack.admin("POST", f"/admin/v1/partners/{quiet['partner_id']}/enable", {"actor": "test"}).status == 200


def test_partner_list_pages_cover_everyone_once_in_order(stack: Stack) -> None:
    for n in range(3):
        stack.new_partner(f"List Page Partner {n}")
    whole = all_partners(stack, PAGE_LIMIT_MAX)
    paged = all_partners(stack, 2)
    ids = [p["partner_id"] for p in paged]
    assert len(ids) >= 4  # the demo partner and the three above at least
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids == [p["partner_id"] for p in whole]
    assert {p["partner_id"]: p["pending_agreements"] for p in paged} == {
        p["partner_id"]: p["pending_agreements"] for p in whole
    }
