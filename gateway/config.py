"""The gateway's configuration: where the shards are, its keys, its bounds."""

from __future__ import annotations

from typing import Any

import msgspec

from .schemas import BATCH_ITEMS_MAX

__all__ = ["GatewayConfig"]


class GatewayConfig(msgspec.Struct):
    shard_addresses: list[str]
    token_key: bytes
    admin_token: str
    call_timeout_s: float = 10.0
    # The supervisor's status file (quickpay.supervisor): /readyz is 503 while a needed child
    # (PostgreSQL, a shard worker) is down, "degraded" while a background one crash-loops
    # (gateway/health.py); /admin/v1/health names them.
    supervisor_status: str | None = None
    # Items per POST /v1/quick-payments/batch (more is a 400); the document states the
    # default, BATCH_ITEMS_MAX. The body stays bounded by BATCH_BODY_MAX_BYTES either way.
    batch_items_max: int = BATCH_ITEMS_MAX
    # The node topology (quickpay.node): clients of the shards this process owns, by shard
    # number, called in-process instead of over the shard protocol.
    local_clients: dict[int, Any] | None = None
    # Per-partner rate limit (the default; PUT /admin/v1/partners/{id}/rate-limit overrides it)
    # and this process's part of it (part I of W for W gateway processes): gateway/ratelimit.py.
    rate_limit_rps: float = 10_000.0
    rate_limit_burst: float = 20_000.0
    rate_limit_worker: int = 0
    rate_limit_workers: int = 1
    # Webhook endpoints on loopback/private/link-local addresses (notify/ssrf.py): refused unless set.
    webhooks_allow_private: bool = False
