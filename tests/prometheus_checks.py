"""What a Prometheus server scraping a quickpay stack must show, asked through its HTTP API
(/api/v1/targets, /api/v1/query, /api/v1/rules, /api/v1/alerts). One set of checks for both
places a real Prometheus runs against a real stack: tests/test_prometheus.py (Debian's
Prometheus against `quickpay up`) and scripts/compose_smoke.py (the compose stack's
`prometheus` profile, deploy/prometheus/). Standard library only (plus the stdlib-only
`quickpay.prometheus` for the job names), so the compose smoke runs it on the host with no venv.

A check returns what it saw when the condition holds, raises Waiting when it does not hold
yet (no scrape or rule evaluation has seen it: poll it with wait_for), and raises CheckFailed
when it can no longer hold (an API error, a rule in error, a missing alert rule).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from quickpay.prometheus import GATEWAY_JOB, POSTGRES_JOB

__all__ = [
    "ALERT_GROUP",
    "HEALTH_ALERTS",
    "ISSUE_ALERTS",
    "RECORDING_GROUP",
    "CheckFailed",
    "PrometheusApi",
    "Waiting",
    "gateway_workers",
    "none_firing",
    "payments_counted",
    "postgres_up",
    "recorded",
    "rules_healthy",
    "shards_up",
    "targets_up",
    "wait_for",
]

API_TIMEOUT_S = 10.0  # one HTTP request to Prometheus
POLL_S = 0.5  # between two tries of a check that is not true yet
RESULT_SHOWN_CHARS_MAX = 2_000  # of an unexpected answer, in a failure message
WORKER_AGE_S_MAX = 3_600  # a gateway worker's start time is within this of now

RECORDING_GROUP = "quickpay-recording"
ALERT_GROUP = "quickpay-alerts"
# The alert rules issue 20 asks for: shard not ready, p99 over budget, webhook backlog,
# notifier restarts, quarantined rows.
ISSUE_ALERTS = (
    "QuickpayShardNotReady",
    "QuickpayPaymentP99OverBudget",
    "QuickpayWebhookBacklog",
    "QuickpayNotifierRestarting",
    "QuickpayQuarantinedRows",
)
# Alerts that must not fire on a healthy stack: something it is made of is down.
HEALTH_ALERTS = ("QuickpayGatewayDown", "QuickpayShardNotReady", "QuickpayPostgresDown")

PAYMENTS_ROUTE = "/v1/quick-payments"

T = TypeVar("T")


class CheckFailed(AssertionError):
    """The condition cannot hold: fail now (pytest shows it as an assertion)."""


class Waiting(Exception):
    """The condition does not hold yet; the message says what was seen."""


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= RESULT_SHOWN_CHARS_MAX else text[:RESULT_SHOWN_CHARS_MAX] + "..."


class PrometheusApi:
    """Prometheus' HTTP API at url (http://host:port)."""

    def __init__(self, url: str, timeout_s: float = API_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, path: str, **params: str) -> Any:
        """GET /api/v1/{path}: its `data`, or CheckFailed unless it answered 200 "success"."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw[:RESULT_SHOWN_CHARS_MAX].decode(errors="replace")
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise CheckFailed(f"GET {url}: HTTP {status} {_shown(body)}")
        return body["data"]

    def ready(self) -> bool:
        """GET /-/ready answers 200 (False while it does not listen or is still starting)."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=self.timeout_s) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("query", query=expr)
        if data.get("resultType") != "vector":
            raise CheckFailed(f"{expr}: not an instant vector: {_shown(data)}")
        return list(data["result"])

    def values(self, expr: str, label: str) -> dict[str, float]:
        """{the label's value: the sample's value} of an instant query."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def value(self, expr: str) -> float | None:
        """The single sample's value, or None when the query has no result yet."""
        result = self.query(expr)
        if len(result) > 1:
            raise CheckFailed(f"{expr}: {len(result)} series where one was expected: {_shown(result)}")
        return float(result[0]["value"][1]) if result else None


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout_s: float,
    describe: Callable[[], str] = lambda: "",
    *,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """check()'s first result, tried every poll_s until timeout_s while it raises Waiting or
    returns None or False ("not yet"); then CheckFailed with the last reason (or value) and
    describe() (e.g. the servers' logs). CheckFailed and other errors from check() pass through."""
    deadline = clock() + timeout_s
    while True:
        try:
            result = check()
        except Waiting as exc:
            last = str(exc)
        else:
            if result is not None and result is not False:
                return result
            last = repr(result)
        if clock() >= deadline:
            raise CheckFailed(f"{what}: not within {timeout_s} s (last: {last})\n{describe()}")
        sleep(poll_s)


# ---- the checks ----------------------------------------------------------------------------
def targets_up(prom: PrometheusApi, instances: dict[str, int]) -> dict[tuple[str, str], float]:
    """Exactly `instances[job]` active targets per job, none other, each scraped healthy
    (/api/v1/targets) and `up == 1` for each (job, instance) (/api/v1/query)."""
    active = prom.get("targets", state="active")["activeTargets"]
    seen = [(t["labels"]["job"], t["labels"]["instance"], t["health"], t.get("lastError")) for t in active]
    per_job: dict[str, int] = {}
    for job, _instance, _health, _error in seen:
        per_job[job] = per_job.get(job, 0) + 1
    if per_job != instances:
        raise Waiting(f"targets per job {per_job}, expected {instances}: {seen}")
    if any(health != "up" for _job, _instance, health, _error in seen):
        raise Waiting(f"not every target is up: {seen}")
    up = {(r["metric"]["job"], r["metric"]["instance"]): float(r["value"][1]) for r in prom.query("up")}
    wanted = {(job, instance) for job, instance, _health, _error in seen}
    if set(up) != wanted or set(up.values()) != {1.0}:
        raise Waiting(f"up: {up}, targets {sorted(wanted)}")
    return up


def shards_up(prom: PrometheusApi, shards: int, committed_min: int = 1) -> dict[str, float]:
    """quickpay_shard_up is 1 for every shard 0..shards-1 (and no other), and each shard's
    quickpay_shard_committed_transfers_total is at least committed_min (journal rows: the
    fundings and payments made on it). Returns the committed counts by shard."""
    job = f'{{job="{GATEWAY_JOB}"}}'
    up = prom.values("quickpay_shard_up" + job, "shard")
    wanted = {str(s) for s in range(shards)}
    if up != dict.fromkeys(wanted, 1.0):
        raise Waiting(f"quickpay_shard_up by shard {up}, expected 1 for shards {sorted(wanted)}")
    committed = prom.values("quickpay_shard_committed_transfers_total" + job, "shard")
    if set(committed) != wanted or min(committed.values()) < committed_min:
        raise Waiting(f"quickpay_shard_committed_transfers_total by shard {committed}, expected >= {committed_min}")
    return committed


def payments_counted(prom: PrometheusApi, at_least: int) -> float:
    """The gateway counted at least `at_least` single payments answered 201 (over every worker)."""
    expr = (
        f'sum(quickpay_http_requests_total{{job="{GATEWAY_JOB}",route="{PAYMENTS_ROUTE}",method="POST",status="201"}})'
    )
    value = prom.value(expr)
    if value is None or value < at_least:
        raise Waiting(f"{expr} = {value}, expected >= {at_least}")
    return value


def gateway_workers(prom: PrometheusApi, count: int, now_s: float | None = None) -> list[dict[str, Any]]:
    """One quickpay_gateway_worker_start_time_seconds series per live gateway worker (count),
    with distinct pids where there are several, each started within the hour."""
    now_s = time.time() if now_s is None else now_s
    workers = prom.query(f'quickpay_gateway_worker_start_time_seconds{{job="{GATEWAY_JOB}"}}')
    if len(workers) != count:
        raise Waiting(f"{len(workers)} gateway worker series, expected {count}: {_shown(workers)}")
    if count > 1:
        pids = {r["metric"].get("pid") for r in workers}
        if len(pids) != count or None in pids:
            raise CheckFailed(f"gateway workers without distinct pids: {_shown(workers)}")
    for r in workers:
        started_s = float(r["value"][1])
        if not now_s - WORKER_AGE_S_MAX < started_s <= now_s:
            raise CheckFailed(f"a gateway worker started at {started_s}, now is {now_s}: {_shown(r)}")
    return workers


def postgres_up(prom: PrometheusApi, servers: int) -> dict[str, float]:
    """One exporter per PostgreSQL server, each with pg_up 1 and a shard database that has
    committed transactions (pg_stat_database). Returns the commits by exporter instance."""
    up = prom.values(f'pg_up{{job="{POSTGRES_JOB}"}}', "instance")
    if len(up) != servers or set(up.values()) != {1.0}:
        raise Waiting(f"pg_up by instance {up}, expected 1 for {servers} servers")
    commits = prom.values(
        f'sum by (instance) (pg_stat_database_xact_commit{{job="{POSTGRES_JOB}",datname=~"quickpay_shard_.*"}})',
        "instance",
    )
    if set(commits) != set(up) or min(commits.values()) <= 0:
        raise Waiting(f"shard databases' xact_commit by instance {commits}, expected > 0 on {sorted(up)}")
    return commits


def rules_healthy(prom: PrometheusApi) -> dict[str, list[dict[str, Any]]]:
    """Both rule groups (deploy/prometheus/rules.yml) loaded, with every alert issue 20 asks
    for, and every rule evaluated with health "ok" (one in "err" fails at once)."""
    groups = {g["name"]: g["rules"] for g in prom.get("rules")["groups"]}
    if set(groups) != {RECORDING_GROUP, ALERT_GROUP}:
        raise Waiting(f"rule groups {sorted(groups)}")
    every = [r for rules in groups.values() for r in rules]
    bad = [(r["name"], r.get("lastError")) for r in every if r["health"] == "err"]
    if bad:
        raise CheckFailed(f"rules in error: {bad}")
    missing = set(ISSUE_ALERTS) - {r["name"] for r in groups[ALERT_GROUP]}
    if missing:
        raise CheckFailed(f"alert rules missing: {sorted(missing)}")
    if any(r["type"] != "recording" for r in groups[RECORDING_GROUP]):
        raise CheckFailed(f"{RECORDING_GROUP} holds a rule that does not record: {_shown(groups[RECORDING_GROUP])}")
    waiting = [(r["name"], r["health"]) for r in every if r["health"] != "ok"]
    if waiting:
        raise Waiting(f"rules not evaluated yet: {waiting}")
    return groups


def recorded(prom: PrometheusApi, expr: str) -> float:
    """The value of a recording rule's single series: it has produced a sample."""
    value = prom.value(expr)
    if value is None:
        raise Waiting(f"{expr}: no sample yet")
    return value


def none_firing(prom: PrometheusApi, names: Iterable[str] = HEALTH_ALERTS) -> set[str]:
    """None of these alerts is firing; returns the alerts that are."""
    firing = {a["labels"]["alertname"] for a in prom.get("alerts")["alerts"] if a["state"] == "firing"}
    if firing & set(names):
        raise Waiting(f"firing: {sorted(firing)}")
    return firing
