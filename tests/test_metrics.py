"""GET /metrics (Prometheus text format, admin token): request counts by route and status
and latency histograms of every gateway process (multiprocess mode under `quickpay up`),
rate-limit refusals, and what the shards and the notifier report at scrape time (intake
queue, group-commit sizes and latency, relay backlog and lag, webhook backlog and
failures, events produced). Logs are one JSON object per line carrying the request's
interaction id."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

from conftest import Stack, http
from prometheus_client.parser import text_string_to_metric_families
from test_api import assert_error

from quickpay.logs import INTERACTION_ID, JsonFormatter


def _scrape(stack: Stack) -> dict[str, list[Any]]:
    reply = http("GET", stack.url("/metrics"), token=stack.admin_token)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f.samples for f in text_string_to_metric_families(reply.raw.decode())}
    return families


def _value(samples: list[Any], **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_and_report_the_shards(stack: Stack, partner: dict[str, Any]) -> None:
    assert_error(http("GET", stack.url("/metrics")), 401, "QP.Auth.Admin")
    assert_error(http("GET", stack.url("/metrics"), token=partner["token"]), 401, "QP.Auth.Admin")
    before = _scrape(stack)
    route = "/v1/accounts/{account_id}/balance"
    for _ in range(5):
        assert (
            stack.call("GET", f"/v1/accounts/{partner['settlement_account']}/balance", token=partner["token"]).status
            == 200
        )
    customer = stack.new_customer(partner, shard=1, funding="10.00")
    assert stack.pay(partner, customer["agreement_id"], stack.new_account(shard=0), "1.00").status == 201
    after = _scrape(stack)
    counted = _value(after["quickpay_http_requests"], route=route, method="GET", status="200") - _value(
        before.get("quickpay_http_requests", []), route=route, method="GET", status="200"
    )
    assert counted == 5  # counted once each, whichever worker answered
    buckets = [
        s
        for s in after["quickpay_http_request_duration_seconds"]
        if s.name.endswith("_count") and s.labels.get("route") == route
    ]
    assert sum(s.value for s in buckets) >= 5
    assert {s.labels["shard"] for s in after["quickpay_shard_up"]} == {"0", "1"}
    assert all(s.value == 1 for s in after["quickpay_shard_up"])
    for name in (
        "quickpay_shard_intake_queue",
        "quickpay_relay_backlog",
        "quickpay_relay_lag_seconds",
        "quickpay_shard_batch_commands",
        "quickpay_shard_commit_seconds",
        "quickpay_webhook_backlog",
        "quickpay_webhook_failed",
        "quickpay_events_produced",
        "quickpay_rate_limit_refusals",
    ):
        assert name in after, name
    assert _value(after["quickpay_shard_committed_transfers"]) > _value(before["quickpay_shard_committed_transfers"])
    commits = [s for s in after["quickpay_shard_commit_seconds"] if s.labels["quantile"] == "0.99"]
    assert commits and all(0 < s.value < 10 for s in commits)


def test_log_lines_are_json_with_the_interaction_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("quickpay.test")
    log.addHandler(handler)
    try:
        token = INTERACTION_ID.set("abc-123")
        try:
            log.warning("something about %s", "payments")
        finally:
            INTERACTION_ID.reset(token)
        log.warning("outside a request")
    finally:
        log.removeHandler(handler)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["msg"] == "something about payments" and first["interaction_id"] == "abc-123"
    assert first["level"] == "warning" and first["logger"] == "quickpay.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert "interaction_id" not in second


def test_the_stacks_own_log_lines_are_json(stack: Stack) -> None:
    lines = [line for line in stack.log().splitlines() if line.startswith("{")]
    assert lines, "no structured log lines"
    for line in lines[:50]:
        record = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(record)
