"""The limits partners meet and the ones several layers must agree on, in one place.

Each is a plain constant named with its unit. The layer that enforces a limit imports it from
here (and may re-export it under its old name); a limit that only one module knows about
stays next to its code. README's "Limits" section is the partner-facing list of these.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BATCH_BODY_MAX_BYTES",
    "BATCH_ITEMS_MAX",
    "BODY_MAX_BYTES",
    "CURSOR_MAX_CHARS",
    "FEED_RETENTION_MS",
    "IDEMPOTENCY_KEY_MAX",
    "ID_MAX",
    "INTERACTION_ID_MAX",
    "LIST_CHANGE_VALUES_MAX",
    "MS_PER_DAY",
    "PAGE_LIMIT_MAX",
    "PENDING_EXPIRY_S",
    "PENDING_EXPIRY_S_MAX",
    "PENDING_MAX_LIMIT",
    "PENDING_PER_ACCOUNT_MAX",
    "PENDING_PER_PARTNER_MAX",
    "PIPELINE_DEPTH_DEFAULT",
    "PIPELINE_DEPTH_HA_DEFAULT",
    "PIPELINE_DEPTH_MAX",
    "RATE_LIMIT_BURST_DEFAULT",
    "RATE_LIMIT_MAX",
    "RATE_LIMIT_RPS_DEFAULT",
    "RECON_PAGE_ROWS_MAX",
    "REFERENCE_MAX",
    "REFUND_WINDOW_DAYS",
    "SECRET_OVERLAP_MAX_MS",
    "TOKEN_MAX",
    "TOKEN_TTL_S",
]

MS_PER_DAY: Final = 86_400_000

# ---- one request ------------------------------------------------------------------------------
# A request body, read up to this bound (413 beyond it).
BODY_MAX_BYTES: Final = 64 * 1024
# POST /v1/quick-payments/batch reads its body up to this bound instead (1,000 items of
# about 200 bytes each are ~200 KB; the largest legal items do not all fit, see README).
BATCH_BODY_MAX_BYTES: Final = 1024 * 1024
# Items per batch request (a stack's --batch-items-max may lower it, never raise it).
BATCH_ITEMS_MAX: Final = 1_000
IDEMPOTENCY_KEY_MAX: Final = 64  # characters of x-idempotency-key
INTERACTION_ID_MAX: Final = 128  # characters of x-fapi-interaction-id
TOKEN_MAX: Final = 4096  # characters of a bearer token
TOKEN_TTL_S: Final = 3600  # an access token's lifetime
# ---- reads ------------------------------------------------------------------------------------
PAGE_LIMIT_MAX: Final = 200  # ?limit= of every list
CURSOR_MAX_CHARS: Final = 4096  # ?cursor= of every list
FEED_RETENTION_MS: Final = 30 * MS_PER_DAY  # how far back the events feed reaches
# Values per fraud-list change. Small enough that one value too many still fits in a 64 KiB
# body (so it is a 400 that says why, not a 413); bigger changes are several calls.
LIST_CHANGE_VALUES_MAX: Final = 100
# ---- what the ledger stores -------------------------------------------------------------------
ID_MAX: Final = 64  # characters of any id the ledger stores
REFERENCE_MAX: Final = 140  # characters of a payment's reference
# ---- ledger rules -----------------------------------------------------------------------------
# How long after a payment it may be refunded (quickpay up --refund-window-days).
REFUND_WINDOW_DAYS: Final = 365
# How long a rotated-out client secret may keep working (the partner's chosen overlap).
SECRET_OVERLAP_MAX_MS: Final = 30 * MS_PER_DAY
# How long an agreement may wait for the customer (AwaitingAuthorisation) before it reads
# Expired (quickpay up --pending-expiry-s). Stored per agreement as authorise_by_ms at its
# creation, so a later change of the setting does not move existing deadlines.
PENDING_EXPIRY_S: Final = 86_400
# Agreements a partner may have AwaitingAuthorisation (and not expired) at once: over one
# customer account, and in total (quickpay up --pending-per-account-max / --pending-per-partner-max).
PENDING_PER_ACCOUNT_MAX: Final = 10
PENDING_PER_PARTNER_MAX: Final = 10_000
# Bounds of those settings: a wait of at most 30 days, caps of at most 10 million.
PENDING_EXPIRY_S_MAX: Final = 30 * 86_400
PENDING_MAX_LIMIT: Final = 10_000_000
# A shard worker's group-commit batches decided but not yet committed (quickpay up
# --pipeline-depth): one committing while the next is decided, and at most this many.
PIPELINE_DEPTH_DEFAULT: Final = 2
# The same under `quickpay up --ha`, where each commit also waits for the synchronous
# standby (BENCHMARKS.md, "What synchronous replication costs": the depths measured).
PIPELINE_DEPTH_HA_DEFAULT: Final = 2
PIPELINE_DEPTH_MAX: Final = 16
# ---- rate limits ------------------------------------------------------------------------------
RATE_LIMIT_RPS_DEFAULT: Final = 10_000.0  # a new partner's requests per second
RATE_LIMIT_BURST_DEFAULT: Final = 20_000.0  # and its bucket
RATE_LIMIT_MAX: Final = 10_000_000  # the most either may be set to

# Rows of one reconciliation-file page, read from one shard in one command. Small, because
# a page is decoded and encoded in one go on the shard's event loop and then on the
# gateway's: at 5,000 rows a page held both for tens of milliseconds, and a partner pulling
# its provisional file stalled everyone's payments on that shard (tests/test_fairness.py
# saw 200-320 ms). The file's size is bounded by RECON_ROWS_MAX (ledger/recon.py).
RECON_PAGE_ROWS_MAX: Final = 500

# ---- customer consent (gateway/web/) --------------------------------------------------------
# Exact redirect URIs a partner may register, and each one's length (https, or http to
# 127.0.0.1/localhost for local use and tests; no IPv6 literal: a CSP cannot name one).
REDIRECT_URIS_MAX: Final = 10
REDIRECT_URI_MAX_CHARS: Final = 512
# The partner's opaque `state`, handed back unchanged on the redirect (printable ASCII).
CONSENT_STATE_MAX_CHARS: Final = 256
# How long an authorisation link works (single use); QUICKPAY_CONSENT_LINK_TTL_S overrides it.
CONSENT_LINK_TTL_S: Final = 15 * 60
CONSENT_LINK_TTL_S_MAX: Final = 86_400
