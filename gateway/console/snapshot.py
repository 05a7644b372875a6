"""What the console page shows, gathered from the sources that already exist.

One snapshot is a handful of GETs, over loopback to this gateway's own listening address
with the admin token, of the endpoints an operator's scripts read too: /metrics,
/admin/v1/health, /admin/v1/fraud/rules, /admin/v1/fraud/decisions, /admin/v1/fraud/alerts,
/admin/v1/partners (the list), /admin/v1/partners/{id} (the watched ones) and
/admin/v1/reconciliation (the last days' status; that route reads each day's rows seldom, never
per refresh: gateway/recon_status.py) and /admin/v1/ha (the shards' PostgreSQL members as
Patroni sees them, gateway/patroni.py). Nothing here keeps figures of its own (no second source of
truth), and nothing runs per payment: a snapshot is taken only when a logged-in page asks,
at most once per SNAPSHOT_REUSE_S per gateway process (several open pages share it). Rates
(payments/s) are the browser's work, from successive counter readings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "PARTNERS_LISTED_MAX",
    "PARTNERS_WATCHED_MAX",
    "SNAPSHOT_REUSE_S",
    "SnapshotSource",
    "parse_metrics",
    "rule_hits",
]

UPSTREAM_TIMEOUT_S = 3.0  # each GET of a snapshot
UPSTREAM_BODY_MAX_BYTES = 4 * 1024 * 1024  # the largest answer we read (/metrics is ~100 kB)
SNAPSHOT_REUSE_S = 0.5  # pages refresh every 2 s; two pages within this share a snapshot
PARTNERS_WATCHED_MAX = 20  # partner ids one page may ask about
PARTNERS_LISTED_MAX = 200  # the first page of /admin/v1/partners (its PAGE_LIMIT_MAX) the table shows
DECISIONS_SHOWN_MAX = 20  # per kind (review, block)
ALERTS_SHOWN_MAX = 20
HITS_DECISIONS_MAX = 200  # the latest decisions the rule-hit counts are made from
PAYMENT_ROUTES = ("/v1/quick-payments", "/v1/quick-payments/batch")


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def parse_metrics(text: str) -> dict[str, Any]:
    """The console's part of a /metrics exposition: per-shard figures, the webhook figures,
    the HTTP answers by route and status (errors, and the payment routes' successes)."""
    shards: dict[str, dict[str, Any]] = {}
    requests: list[dict[str, Any]] = []
    webhooks: dict[str, Any] = {}
    services: dict[str, dict[str, Any]] = {}

    def shard(label: str) -> dict[str, Any]:
        return shards.setdefault(label, {"shard": int(label) if label.isdigit() else label})

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, _num(sample.value)
            if name == "quickpay_shard_up":
                shard(labels["shard"])["up"] = value == 1
            elif name == "quickpay_shard_intake_queue":
                shard(labels["shard"])["queue"] = value
            elif name == "quickpay_shard_committed_transfers_total":
                shard(labels["shard"])["committed_transfers"] = value
            elif name in ("quickpay_shard_commit_seconds", "quickpay_shard_batch_cycle_seconds"):
                kind = "commit" if name == "quickpay_shard_commit_seconds" else "cycle"
                q = {"0.5": "p50", "0.99": "p99"}.get(labels.get("quantile", ""))
                if q is not None:
                    shard(labels["shard"])[f"{kind}_{q}_ms"] = round(float(value) * 1000, 3)
            elif name == "quickpay_relay_backlog":
                shard(labels["shard"])["relay_backlog"] = value
            elif name == "quickpay_relay_lag_seconds":
                shard(labels["shard"])["relay_lag_s"] = value
            elif name == "quickpay_webhook_backlog":
                webhooks["backlog"] = value
            elif name == "quickpay_webhook_failed":
                webhooks["failed"] = value
            elif name == "quickpay_events_produced_total":
                webhooks["events_produced"] = value
            elif name == "quickpay_http_requests_total":
                status = labels.get("status", "")
                route = labels.get("route", "")
                if not status.startswith(("2", "3")) or route in PAYMENT_ROUTES:
                    requests.append(
                        {"route": route, "method": labels.get("method", ""), "status": status, "count": value}
                    )
            elif name == "quickpay_service_restarts_total":
                services.setdefault(labels["service"], {})["restarts"] = value
            elif name == "quickpay_service_crash_looping":
                services.setdefault(labels["service"], {})["crash_looping"] = value == 1
    # Several gateway processes may report the same labels (multiprocess mode sums them already;
    # merging here keeps one row per label set in any case).
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in requests:
        key = (row["route"], row["method"], row["status"])
        if key in merged:
            merged[key]["count"] += row["count"]
        else:
            merged[key] = dict(row)
    payments_ok = sum(
        r["count"]
        for r in merged.values()
        if r["route"] == "/v1/quick-payments" and r["method"] == "POST" and r["status"].startswith("2")
    )
    return {
        "shards": sorted(shards.values(), key=lambda s: str(s["shard"]).zfill(6)),
        "webhooks": webhooks,
        "errors": sorted(
            (r for r in merged.values() if not r["status"].startswith(("2", "3"))),
            key=lambda r: (-r["count"], r["route"], r["status"]),
        ),
        "payments_answered_2xx": payments_ok,
        "services": services,
    }


def rule_hits(payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How often each rule fired in these payments' fraud decisions, shadow rules apart (a
    shadow rule's hits are what it would do if enforced): the rule-set's shadow results."""
    counts: dict[tuple[str, str, bool], int] = {}
    for payment in payments:
        fraud = payment.get("fraud") or {}
        for hit in fraud.get("reasons") or []:
            if isinstance(hit, dict) and "rule_id" in hit:
                key = (str(hit["rule_id"]), str(hit.get("action", "")), bool(hit.get("shadow")))
                counts[key] = counts.get(key, 0) + 1
    return [
        {"rule_id": rule, "action": action, "shadow": shadow, "hits": n}
        for (rule, action, shadow), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


class SnapshotSource:
    """Takes snapshots over loopback with the admin token; shares one taken within
    SNAPSHOT_REUSE_S (per set of watched partners)."""

    def __init__(self, admin_token: str) -> None:
        self._auth = {"Authorization": f"Bearer {admin_token}"}
        self._last: tuple[float, tuple[str, ...], dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self, base_url: str, partners: tuple[str, ...], now_s: float | None = None) -> dict[str, Any]:
        async with self._lock:  # one snapshot at a time per process, whatever the number of pages
            now = time.monotonic() if now_s is None else now_s
            if self._last is not None and self._last[1] == partners and now - self._last[0] < SNAPSHOT_REUSE_S:
                return self._last[2]
            taken = await self._take(base_url, partners)
            self._last = (now, partners, taken)
            return taken

    async def _take(self, base_url: str, partners: tuple[str, ...]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S)
        problems: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(base_url, headers=self._auth, timeout=timeout) as http:

            async def get(path: str, text: bool = False) -> Any:
                try:
                    async with http.get(path) as response:
                        body = await response.content.read(UPSTREAM_BODY_MAX_BYTES)
                        if response.status != 200:
                            problems.append(
                                {"source": path, "status": response.status, "body": body[:300].decode(errors="replace")}
                            )
                            return None
                        return body.decode() if text else _json_loads(body)
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    problems.append({"source": path, "status": None, "body": str(exc) or type(exc).__name__})
                    return None

            (
                metrics_text,
                health,
                rules,
                review,
                block,
                latest,
                alerts,
                listed,
                reconciliation,
                ha,
                *found,
            ) = await asyncio.gather(
                get("/metrics", text=True),
                get("/admin/v1/health"),
                get("/admin/v1/fraud/rules"),
                get(f"/admin/v1/fraud/decisions?decision=review&limit={DECISIONS_SHOWN_MAX}"),
                get(f"/admin/v1/fraud/decisions?decision=block&limit={DECISIONS_SHOWN_MAX}"),
                get(f"/admin/v1/fraud/decisions?limit={HITS_DECISIONS_MAX}"),
                get("/admin/v1/fraud/alerts"),
                get(f"/admin/v1/partners?limit={PARTNERS_LISTED_MAX}"),
                get("/admin/v1/reconciliation"),
                get("/admin/v1/ha"),
                *(get(f"/admin/v1/partners/{quote(p, safe='')}") for p in partners),
            )
        metrics = parse_metrics(metrics_text) if metrics_text is not None else None
        # A stack started without the fraud filter (--no-rules) answers its fraud routes 409
        # QP.Fraud.Disabled: said once, not as sources that failed.
        fraud_sources = ("/admin/v1/fraud/",)
        fraud_disabled = any(
            p["source"].startswith(fraud_sources) and p["status"] == 409 and "QP.Fraud.Disabled" in p["body"]
            for p in problems
        )
        if fraud_disabled:
            problems = [p for p in problems if not p["source"].startswith(fraud_sources)]
        decisions = [*(review or {}).get("payments", []), *(block or {}).get("payments", [])]
        decisions.sort(key=lambda d: str(d.get("created_at", "")), reverse=True)
        return {
            "at_ms": int(time.time() * 1000),
            "metrics": metrics,
            "health": health,
            "fraud": {
                "enabled": not fraud_disabled,
                "rules": rules,
                "decisions": decisions[:DECISIONS_SHOWN_MAX],
                "rule_hits": rule_hits((latest or {}).get("payments", [])),
                "alerts": (alerts or {}).get("alerts", [])[:ALERTS_SHOWN_MAX],
            },
            "partners": [
                p if p is not None else {"partner_id": partner_id, "missing": True}
                for partner_id, p in zip(partners, found, strict=True)
            ],
            # Every partner (the first PARTNERS_LISTED_MAX by id; more_partners says there are more).
            "partner_list": (listed or {}).get("partners", []),
            "more_partners": bool((listed or {}).get("next_cursor")),
            "reconciliation": reconciliation,
            "ha": ha,
            "problems": problems,
        }


def _json_loads(body: bytes) -> Any:
    import msgspec

    return msgspec.json.decode(body)
