"""The gateway process's state: its shard router, token service and rate limiter, the
partners' rate-limit overrides and cut-off markers it keeps fresh in the background, and
the reconciliation files it made lately; plus the per-request checks that use them
(partner_of, require_admin, the idempotency key, amounts and currencies)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple

from aiohttp import web

from kernel.config import GatewayConfig
from kernel.limits import IDEMPOTENCY_KEY_MAX, TOKEN_MAX
from kernel.money import CURRENCY_EXPONENTS, AmountError, parse_amount

from . import metrics
from .auth import TokenService, admin_token_matches, token_cut_off
from .errors import ApiError, field_error
from .ratelimit import RateLimit, RateLimiter, Verdict
from .requests import is_printable_ascii
from .shards import ShardRouter

log = logging.getLogger("quickpay.gateway")
# A partner's rate-limit override is re-read this often (per gateway process, in the background).
RATE_LIMIT_OVERRIDE_TTL_S = 5.0
RATE_OVERRIDES_MAX = 100_000
# Partners' cut-off markers (disabled, tokens issued before T refused) are re-read from every
# shard this often, in the background: a disable or a revocation holds on every gateway
# process within CUTOFF_APPLIES_WITHIN_S (the poll, plus one answer's time). Never on a request's path.
CUTOFF_REFRESH_S = 0.5
CUTOFF_APPLIES_WITHIN_S = 1.0
# How long the gateway's start waits for the first markers before it serves anyway (it says
# "not ready" on /readyz until it has them).
CUTOFF_FIRST_READ_S = 3.0
RATE_VERDICT: web.RequestKey[Verdict] = web.RequestKey("rate_verdict", Verdict)

# Reconciliation files: the rows a token pays for (measured: a file costs ~50 µs a row end to
# end, a payment ~5.5 ms, so ~100 rows cost what a payment costs), how long a provisional
# file is reused, and the cache's bounds.
# A reconciliation file's rows cost about 45 µs each end to end (shard read, encode, gateway
# CSV: a 7,200-row provisional file took 335 ms on the 2-core VM, tests/test_fairness.py),
# about a payment's cost per 13 rows: one token per 10 rows, as debt after the file is made.
RECON_ROWS_PER_TOKEN = 10
RECON_PROVISIONAL_REUSE_S = 5.0
RECON_FILES_MAX = 256
RECON_FILE_CACHE_MAX_BYTES = 4 * 1024 * 1024


class ReconFile(NamedTuple):
    body: bytes
    sha256: str
    closed: bool
    rows: int
    made_s: float  # monotonic


def _now_s() -> int:
    return int(time.time())


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.router = ShardRouter(
            config.shard_addresses, call_timeout_s=config.call_timeout_s, local_clients=config.local_clients
        )
        self.tokens = TokenService(config.token_key)
        self.limiter = RateLimiter(
            RateLimit(config.rate_limit_rps, config.rate_limit_burst),
            worker=config.rate_limit_worker,
            workers=config.rate_limit_workers,
        )
        # partner -> (its override or None, monotonic time it was read); re-read in the
        # background once older than RATE_LIMIT_OVERRIDE_TTL_S, never on a request's path.
        self.rate_overrides: OrderedDict[str, tuple[RateLimit | None, float]] = OrderedDict()
        self._override_reads: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Reconciliation files made lately, per (partner, day): a closed day's file never
        # changes; a provisional one is reused for RECON_PROVISIONAL_REUSE_S. One making per
        # key at a time (others wait for it). Bounded: RECON_FILES_MAX files, none above
        # RECON_FILE_CACHE_MAX_BYTES.
        self.recon_files: OrderedDict[tuple[str, str], ReconFile] = OrderedDict()
        self.recon_running: dict[tuple[str, str], asyncio.Future[ReconFile]] = {}
        # Cut-off markers, partner id -> [disabled_at_ms, tokens_valid_after_ms], per shard (the
        # partner's own shard holds its record) and merged; the version each shard last gave.
        self.cutoffs: dict[str, list[int | None]] = {}
        self._cutoffs_by_shard: dict[int, dict[str, list[int | None]]] = {}
        self._cutoff_versions: dict[int, Any] = {}
        self.cutoffs_loaded: set[int] = set()

    async def _refresh_shard_cutoffs(self, shard: int) -> bool:
        answer = await self.router.clients[shard].call("partner_cutoffs", {"since": self._cutoff_versions.get(shard)})
        if "cutoffs" in answer:
            self._cutoffs_by_shard[shard] = {k: list(v) for k, v in answer["cutoffs"].items()}
        self._cutoff_versions[shard] = answer["version"]
        self.cutoffs_loaded.add(shard)
        return "cutoffs" in answer

    async def refresh_cutoffs(self) -> None:
        """Read every shard's markers once (only what changed since the last read)."""
        results = await asyncio.gather(
            *(self._refresh_shard_cutoffs(s) for s in range(self.router.count)), return_exceptions=True
        )
        for shard, result in enumerate(results):
            if isinstance(result, BaseException):
                # Keep what we had (markers only ever come from a shard that answered).
                log.warning("could not read the partner cut-off markers of shard %s: %r", shard, result)
        if any(result is True for result in results):
            merged: dict[str, list[int | None]] = {}
            for markers in self._cutoffs_by_shard.values():
                merged.update(markers)
            self.cutoffs = merged

    async def run_cutoff_refresh(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.refresh_cutoffs(), CUTOFF_APPLIES_WITHIN_S)
            except TimeoutError:
                log.warning("reading the partner cut-off markers took more than %s s", CUTOFF_APPLIES_WITHIN_S)
            await asyncio.sleep(max(0.0, CUTOFF_REFRESH_S - (time.monotonic() - started)))

    def apply_cutoff(self, partner_id: str, status: dict[str, Any]) -> None:
        """This process applies an admin action's outcome at once (the others within the poll)."""
        marker = [status.get("disabled_at_ms"), status.get("tokens_valid_after_ms")]
        if marker == [None, None]:
            self.cutoffs.pop(partner_id, None)
        else:
            self.cutoffs[partner_id] = marker

    def rate_override(self, partner_id: str, now_s: float) -> RateLimit | None:
        cached = self.rate_overrides.get(partner_id)
        if (cached is None or now_s - cached[1] > RATE_LIMIT_OVERRIDE_TTL_S) and partner_id not in self._override_reads:
            self._override_reads.add(partner_id)
            task = asyncio.get_running_loop().create_task(self._read_override(partner_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return cached[0] if cached is not None else None

    async def _read_override(self, partner_id: str) -> None:
        try:
            row = await self.router.client_for(partner_id).call("partner", {"id": partner_id})
            override = None
            if row is not None and row.get("rate_limit_rps") is not None:
                override = RateLimit(float(row["rate_limit_rps"]), float(row["rate_limit_burst"]))
            self.rate_overrides[partner_id] = (override, time.monotonic())
            self.rate_overrides.move_to_end(partner_id)
            while len(self.rate_overrides) > RATE_OVERRIDES_MAX:
                self.rate_overrides.popitem(last=False)
        except Exception as exc:  # the shard is down: keep what we had, try again later
            log.warning("could not read the rate limit of %s: %r", partner_id, exc)
        finally:
            self._override_reads.discard(partner_id)

    def remember_recon(self, key: tuple[str, str], made: ReconFile) -> None:
        if len(made.body) > RECON_FILE_CACHE_MAX_BYTES:
            return
        self.recon_files[key] = made
        self.recon_files.move_to_end(key)
        while len(self.recon_files) > RECON_FILES_MAX:
            self.recon_files.popitem(last=False)

    def partner_of(self, request: web.Request, cost_tokens: int = 1) -> str:
        """The partner the bearer token names, after it paid `cost_tokens` of its rate limit
        (a request pays 1; a batch pays 1 here and 1 per further item in `take_items`)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "QP.Auth.Missing",
                "a bearer access token is required",
                headers={"WWW-Authenticate": 'Bearer realm="quickpay"'},
            )
        token = token.strip()
        claims = self.tokens.verify_claims(token, _now_s()) if is_printable_ascii(token, TOKEN_MAX) else None
        if claims is None:
            raise ApiError(
                401,
                "QP.Auth.InvalidToken",
                "the access token is invalid or expired",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        partner_id, issued_at_ms = claims
        refused = token_cut_off(self.cutoffs.get(partner_id), issued_at_ms)
        if refused == "disabled":
            raise ApiError(403, "QP.Partner.Disabled", "this partner is disabled; its tokens are refused")
        if refused == "revoked":
            raise ApiError(
                401,
                "QP.Auth.InvalidToken",
                "the access token was revoked; get a new one",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        now_s = time.monotonic()
        verdict = self.limiter.check(partner_id, now_s, self.rate_override(partner_id, now_s), cost_tokens)
        request[RATE_VERDICT] = verdict
        if not verdict.allowed:
            metrics.RATE_LIMITED.inc()
            raise ApiError(
                429,
                "QP.RateLimit.Exceeded",
                f"over this partner's rate limit; retry after {verdict.retry_after_s} s",
                headers={"Retry-After": str(verdict.retry_after_s)},
            )
        return partner_id

    def take_items(self, request: web.Request, partner_id: str, wanted: int) -> int:
        """Tokens for `wanted` more items of a batch, as many as the partner has: the count granted."""
        if wanted <= 0:
            return 0
        now_s = time.monotonic()
        verdict = self.limiter.check(partner_id, now_s, self.rate_override(partner_id, now_s), wanted, partial=True)
        request[RATE_VERDICT] = verdict
        if verdict.granted < wanted:
            metrics.RATE_LIMITED.inc(wanted - verdict.granted)
        return verdict.granted

    def require_admin(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not admin_token_matches(token.strip(), self.config.admin_token):
            raise ApiError(
                401,
                "QP.Auth.Admin",
                "an admin bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="quickpay-admin"'},
            )

    @staticmethod
    def idempotency_key(request: web.Request) -> str:
        key = request.headers.get("x-idempotency-key")
        if key is None:
            raise field_error(
                400, "QP.Header.Missing", "the x-idempotency-key header is required", "header.x-idempotency-key"
            )
        if not is_printable_ascii(key, IDEMPOTENCY_KEY_MAX):
            raise field_error(
                400,
                "QP.Header.Invalid",
                f"x-idempotency-key must be 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters",
                "header.x-idempotency-key",
            )
        return key

    @staticmethod
    def amount(text: str, currency: str, path: str) -> int:
        try:
            return parse_amount(text, currency)
        except AmountError as error:
            raise field_error(400, error.code, error.message, path) from None

    @staticmethod
    def currency(code: str, path: str = "$.currency") -> str:
        if code not in CURRENCY_EXPONENTS:
            raise field_error(400, "QP.Currency.Unsupported", f"currency {code} is not supported", path)
        return code


GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
