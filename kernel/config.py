"""The processes' configuration types: plain values, validated without I/O.

`WorkerConfig` is a shard worker's (ledger/worker.py), `GatewayConfig` a gateway process's
(gateway/app.py). The CLI builds them from flags and the environment; tests build them
directly. Their bounds come from kernel.limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from kernel.limits import (
    BATCH_ITEMS_MAX,
    PENDING_EXPIRY_S,
    PENDING_EXPIRY_S_MAX,
    PENDING_MAX_LIMIT,
    PENDING_PER_ACCOUNT_MAX,
    PENDING_PER_PARTNER_MAX,
    PIPELINE_DEPTH_DEFAULT,
    PIPELINE_DEPTH_MAX,
    RATE_LIMIT_BURST_DEFAULT,
    RATE_LIMIT_RPS_DEFAULT,
    REFUND_WINDOW_DAYS,
)

__all__ = ["GatewayConfig", "WorkerConfig"]


@dataclass(slots=True)
class WorkerConfig:
    shard: int
    shard_count: int
    dsn: str
    listen: str
    peers: dict[int, str]
    batch_size_max: int = 4_000
    batch_wait_ms: float = 3.0
    # Batches decided and not yet committed, at most (ledger/worker_base.py pipeline_slots).
    pipeline_depth: int = PIPELINE_DEPTH_DEFAULT
    queue_max: int = 100_000
    transfer_cache_max: int = 1_000_000
    rules_path: str | None = None
    no_rules: bool = False
    ledger_mode: str = "batched"  # "naive": one transaction per payment (benchmark baseline)
    # Authenticates every shard-protocol connection, both ways; default QUICKPAY_CLUSTER_SECRET.
    cluster_secret: bytes | None = None
    refund_window_days: int = REFUND_WINDOW_DAYS
    # Agreements awaiting the customer: how long they wait, how many a partner may have.
    pending_expiry_s: int = PENDING_EXPIRY_S
    pending_per_account_max: int = PENDING_PER_ACCOUNT_MAX
    pending_per_partner_max: int = PENDING_PER_PARTNER_MAX
    # Tests only: the transfer id filter's build (ledger/worker.py) starts this much later,
    # so that payments are surely decided while it is being built.
    id_filter_build_delay_s: float = 0.0

    def validate(self) -> None:
        problems = []
        if not 0 <= self.id_filter_build_delay_s <= 60:
            problems.append("id_filter_build_delay_s must be between 0 and 60")
        if not 1 <= self.batch_size_max <= 50_000:
            problems.append("--batch-size-max must be between 1 and 50000")
        if not 0 <= self.batch_wait_ms <= 100:
            problems.append("--batch-wait-ms must be between 0 and 100")
        if not 1 <= self.pipeline_depth <= PIPELINE_DEPTH_MAX:
            problems.append(f"--pipeline-depth must be between 1 and {PIPELINE_DEPTH_MAX}")
        # At least the largest batch call (one pay_many): a smaller bound refuses it on every try.
        if not BATCH_ITEMS_MAX <= self.queue_max <= 10_000_000:
            problems.append(f"--queue-max must be between {BATCH_ITEMS_MAX} and 10000000")
        if self.ledger_mode not in ("batched", "naive"):
            problems.append("--ledger-mode must be batched or naive")
        if not 1 <= self.refund_window_days <= 3650:
            problems.append("--refund-window-days must be between 1 and 3650")
        if not 1 <= self.pending_expiry_s <= PENDING_EXPIRY_S_MAX:
            problems.append(f"--pending-expiry-s must be between 1 and {PENDING_EXPIRY_S_MAX}")
        if not 1 <= self.pending_per_account_max <= PENDING_MAX_LIMIT:
            problems.append(f"--pending-per-account-max must be between 1 and {PENDING_MAX_LIMIT}")
        if not 1 <= self.pending_per_partner_max <= PENDING_MAX_LIMIT:
            problems.append(f"--pending-per-partner-max must be between 1 and {PENDING_MAX_LIMIT}")
        if not 0 <= self.shard < self.shard_count:
            problems.append("--shard must be in [0, --shards)")
        if problems:
            raise SystemExit("bad shard worker configuration: " + "; ".join(problems))


class GatewayConfig(msgspec.Struct):
    shard_addresses: list[str]
    token_key: bytes
    admin_token: str
    call_timeout_s: float = 10.0
    # The supervisor's status file (quickpay.supervisor): /readyz is 503 while a needed child
    # (PostgreSQL, a shard worker) is down, "degraded" while a background one crash-loops
    # (gateway/health.py); /admin/v1/health names them.
    supervisor_status: str | None = None
    # Each shard's Patroni members (name, REST host, REST port) for GET /admin/v1/ha, when
    # `quickpay up` does not run them (QUICKPAY_PATRONI_MEMBERS, gateway/patroni.py
    # parse_members); None: the HA layout next to supervisor_status, if any.
    patroni_members: dict[int, list[tuple[str, str, int]]] | None = None
    # Items per POST /v1/quick-payments/batch (more is a 400); the document states the
    # default, BATCH_ITEMS_MAX. The body stays bounded by BATCH_BODY_MAX_BYTES either way.
    batch_items_max: int = BATCH_ITEMS_MAX
    # The node topology (quickpay.node): clients of the shards this process owns, by shard
    # number, called in-process instead of over the shard protocol.
    local_clients: dict[int, Any] | None = None
    # Per-partner rate limit (the default; PUT /admin/v1/partners/{id}/rate-limit overrides it)
    # and this process's part of it (part I of W for W gateway processes): gateway/ratelimit.py.
    rate_limit_rps: float = RATE_LIMIT_RPS_DEFAULT
    rate_limit_burst: float = RATE_LIMIT_BURST_DEFAULT
    rate_limit_worker: int = 0
    rate_limit_workers: int = 1
    # Webhook endpoints on loopback/private/link-local addresses (notify/ssrf.py): refused unless set.
    webhooks_allow_private: bool = False
