"""Per-partner rate limits: a token bucket per partner in each gateway process. Pure (no I/O;
the clock is passed in), so the decision costs no round trip to any shared state.

What a token buys: one request, and one *payment* — a batch of N payments costs N tokens
(`RateLimiter.check(..., cost=N, partial=True)` grants as many items as there are tokens;
the rest are refused one by one with 429 item errors, the granted ones proceed). Every other
request costs one token: measured, no read costs much more than a payment (~1-7 ms against ~5.5
ms; BENCHMARKS.md), so a partner's limit in tokens bounds the work it can ask for.

How the limit is split: a deployment runs W gateway processes (workers, or nodes) behind one
port (SO_REUSEPORT), and the kernel spreads *connections* over them. A partner's integer
burst B is dealt out like cards: process i holds B // W tokens, plus one more for B mod W of
the processes, chosen by the partner's hash (so partners' odd tokens land on different
processes). Its refill rate is the same fraction of the partner's rate (r * b_i / B). The
parts add up to exactly B and r: W processes never let more than the configured burst
through, however small B is (a process whose part is 0 refuses that partner; with B < W a
partner is served by B processes). Accuracy: a partner whose requests spread over the
processes (many connections) gets its whole limit; one that sends everything over a single
keep-alive connection reaches one process and gets that process's part. The headers report
what the answering process sees.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PARTNERS_MAX", "RateLimit", "RateLimiter", "TokenBucket", "Verdict"]

# Buckets kept per process (least recently used dropped first; a dropped partner starts
# again with a full bucket, which only ever errs towards letting a request through).
PARTNERS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_s: float  # tokens per second (a token is a request or a payment)
    burst: float  # tokens at once (whole tokens: the fraction is dropped)

    def part(self, worker: int, workers: int, partner_id: str) -> RateLimit:
        """Process `worker`'s part of this limit for `partner_id` (module docstring)."""
        burst = int(self.burst)
        if workers == 1 or burst == 0:
            return RateLimit(self.requests_per_s, float(burst))
        extra = 1 if (worker - partner_offset(partner_id, workers)) % workers < burst % workers else 0
        mine = burst // workers + extra
        return RateLimit(self.requests_per_s * mine / burst, float(mine))


def partner_offset(partner_id: str, workers: int) -> int:
    """Which process holds a partner's first odd token (stable across processes)."""
    return zlib.crc32(partner_id.encode()) % workers


class Verdict:
    """One request's answer from the bucket; the figures for the headers are derived only
    when asked (a refused request, and the headers of the response)."""

    __slots__ = ("allowed", "granted", "limit", "short", "tokens")

    def __init__(self, granted: int, short: int, limit: RateLimit, tokens: float) -> None:
        self.granted = granted  # tokens taken: the cost, or fewer when partial
        self.short = short  # tokens asked for and not granted
        self.allowed = granted > 0
        self.limit = limit  # what this process enforces (its part)
        self.tokens = tokens  # left after this request

    @property
    def remaining(self) -> int:
        return int(self.tokens)

    @property
    def retry_after_s(self) -> int:
        """When refused (or granted only in part): whole seconds until one token is back
        (at least 1); else 0."""
        if not self.short:
            return 0
        if self.limit.requests_per_s <= 0:  # this process holds no part of the limit
            return 1
        return max(1, math.ceil((1.0 - self.tokens) / self.limit.requests_per_s))

    @property
    def reset_s(self) -> int:
        """Seconds until the bucket is full again."""
        if self.limit.requests_per_s <= 0:
            return 0
        return max(0, math.ceil((self.limit.burst - self.tokens) / self.limit.requests_per_s))

    def headers(self) -> dict[str, str]:
        """The IETF httpapi RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10):
        the policy (quota q requests per window w seconds: the burst, refilled in w) and the
        current state (r remaining, t seconds until the quota is restored)."""
        limit = self.limit
        policy = _POLICIES.get(limit)
        if policy is None:
            if len(_POLICIES) >= PARTNERS_MAX:
                _POLICIES.clear()
            window_s = max(1, math.ceil(limit.burst / limit.requests_per_s)) if limit.requests_per_s > 0 else 1
            policy = _POLICIES[limit] = f'"partner";q={int(limit.burst)};w={window_s}'
        return {"RateLimit-Policy": policy, "RateLimit": f'"partner";r={int(self.tokens)};t={self.reset_s}'}


# The RateLimit-Policy value of each limit in use (it never changes for a limit).
_POLICIES: dict[RateLimit, str] = {}


class TokenBucket:
    # `wanted` is the partner's limit this bucket last saw and `limit` this process's part
    # of it, kept here so that a check computes neither again.
    __slots__ = ("at_s", "limit", "tokens", "wanted")

    def __init__(self, tokens: float, at_s: float, wanted: RateLimit, limit: RateLimit) -> None:
        self.tokens = tokens
        self.at_s = at_s
        self.wanted = wanted
        self.limit = limit

    def take(self, limit: RateLimit, now_s: float, cost: int = 1, partial: bool = False) -> Verdict:
        """Take `cost` whole tokens, or none; with `partial`, as many as there are (<= cost)."""
        tokens = self.tokens
        if now_s > self.at_s:
            tokens += (now_s - self.at_s) * limit.requests_per_s
            self.at_s = now_s
        if tokens > limit.burst:  # full (or the limit was lowered)
            tokens = limit.burst
        if tokens >= cost:
            granted = cost
        elif partial:
            granted = int(tokens)
        else:
            granted = 0
        tokens -= granted
        self.tokens = tokens
        return Verdict(granted, cost - granted, limit, tokens)


class RateLimiter:
    """Buckets per partner, bounded. `override` is the partner's own limit when it has one
    (the gateway caches it); this process enforces part `worker` of `workers` of it."""

    def __init__(self, default: RateLimit, worker: int = 0, workers: int = 1, partners_max: int = PARTNERS_MAX) -> None:
        if default.requests_per_s <= 0 or default.burst < 1:
            raise ValueError("a rate limit needs requests_per_s > 0 and burst >= 1")
        if not 0 <= worker < workers:
            raise ValueError("worker must be in [0, workers)")
        self.default = default
        self.worker = worker
        self.workers = workers
        self.partners_max = partners_max
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0
        # This process's part of each limit, per partner offset, computed once (a frozen
        # dataclass costs more to build than the rest of a check).
        self._parts: dict[tuple[RateLimit, int], RateLimit] = {}

    def _part(self, wanted: RateLimit, partner_id: str) -> RateLimit:
        offset = partner_offset(partner_id, self.workers) if self.workers > 1 else 0
        limit = self._parts.get((wanted, offset))
        if limit is None:
            if len(self._parts) >= self.partners_max:
                self._parts.clear()
            limit = self._parts[(wanted, offset)] = wanted.part(self.worker, self.workers, partner_id)
        return limit

    def check(
        self, partner_id: str, now_s: float, override: RateLimit | None = None, cost: int = 1, partial: bool = False
    ) -> Verdict:
        wanted = override or self.default
        bucket = self.buckets.get(partner_id)
        if bucket is None:
            limit = self._part(wanted, partner_id)
            bucket = self.buckets[partner_id] = TokenBucket(limit.burst, now_s, wanted, limit)
            if len(self.buckets) > self.partners_max:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(partner_id)
            if bucket.wanted is not wanted:
                bucket.wanted, bucket.limit = wanted, self._part(wanted, partner_id)
        limit = bucket.limit
        verdict = bucket.take(limit, now_s, cost, partial)
        if verdict.granted < cost:
            self.refused += cost - verdict.granted
        return verdict

    def charge(self, partner_id: str, now_s: float, tokens: int) -> None:
        """Take `tokens` more after the fact, for work whose size was known only once done
        (a reconciliation file's rows). The bucket may go into debt, at most one burst deep:
        the partner's next requests are refused until the rate has paid it back."""
        bucket = self.buckets.get(partner_id)
        if bucket is None or tokens <= 0:
            return
        bucket.take(bucket.limit, now_s, 0)  # refill up to now first
        bucket.tokens = max(bucket.tokens - tokens, -bucket.limit.burst)
