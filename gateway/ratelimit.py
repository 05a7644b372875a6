"""Per-partner rate limits: a token bucket per partner in each gateway process. Pure (no I/O;
the clock is passed in), so the decision costs no round trip to any shared state.

How the limit is split: a deployment runs W gateway processes (workers, or nodes) behind one
port (SO_REUSEPORT), and the kernel spreads *connections* over them. Each process enforces
`share` = 1/W of the partner's rate and of its burst, so the partner can never exceed its
limit in total. Accuracy: a partner whose requests spread evenly over the W processes (many
connections, or new connections) gets its whole limit; one that sends everything over a
single keep-alive connection reaches one process and gets 1/W of it. The headers report what
the process that answered sees.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimit", "TokenBucket", "RateLimiter", "Verdict", "PARTNERS_MAX"]

# Buckets kept per process (least recently used dropped first; a dropped partner starts
# again with a full bucket, which only ever errs towards letting a request through).
PARTNERS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_s: float
    burst: float

    def scaled(self, share: float) -> "RateLimit":
        return RateLimit(self.requests_per_s * share, max(1.0, self.burst * share))


class Verdict:
    """One request's answer from the bucket; the figures for the headers are derived only
    when asked (a refused request, and the headers of the response)."""
    __slots__ = ("allowed", "limit", "tokens")

    def __init__(self, allowed: bool, limit: RateLimit, tokens: float) -> None:
        self.allowed = allowed
        self.limit = limit          # what this process enforces (its share)
        self.tokens = tokens        # left after this request

    @property
    def remaining(self) -> int:
        return int(self.tokens)

    @property
    def retry_after_s(self) -> int:
        """When refused: whole seconds until one token is back (at least 1); else 0."""
        if self.allowed:
            return 0
        return max(1, math.ceil((1.0 - self.tokens) / self.limit.requests_per_s))

    @property
    def reset_s(self) -> int:
        """Seconds until the bucket is full again."""
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
            window_s = max(1, math.ceil(limit.burst / limit.requests_per_s))
            policy = _POLICIES[limit] = f'"partner";q={int(limit.burst)};w={window_s}'
        reset_s = math.ceil((limit.burst - self.tokens) / limit.requests_per_s)
        return {"RateLimit-Policy": policy, "RateLimit": f'"partner";r={int(self.tokens)};t={reset_s}'}


# The RateLimit-Policy value of each limit in use (it never changes for a limit).
_POLICIES: dict[RateLimit, str] = {}


class TokenBucket:
    __slots__ = ("tokens", "at_s")

    def __init__(self, tokens: float, at_s: float) -> None:
        self.tokens = tokens
        self.at_s = at_s

    def take(self, limit: RateLimit, now_s: float) -> Verdict:
        tokens = self.tokens
        if now_s > self.at_s:
            tokens += (now_s - self.at_s) * limit.requests_per_s
            self.at_s = now_s
        if tokens > limit.burst:               # full (or the limit was lowered)
            tokens = limit.burst
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self.tokens = tokens
        return Verdict(allowed, limit, tokens)


class RateLimiter:
    """Buckets per partner, bounded. `limit_for` is the partner's limit (the default, or an
    override the gateway cached); `share` is this process's part of it (1/W)."""

    def __init__(self, default: RateLimit, share: float = 1.0, partners_max: int = PARTNERS_MAX) -> None:
        if default.requests_per_s <= 0 or default.burst < 1:
            raise ValueError("a rate limit needs requests_per_s > 0 and burst >= 1")
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.default = default
        self.share = share
        self.partners_max = partners_max
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0
        # This process's share of each limit, computed once per limit (a frozen dataclass
        # costs more to build than the rest of a check).
        self._scaled: dict[RateLimit, RateLimit] = {}

    def check(self, partner_id: str, now_s: float, override: RateLimit | None = None) -> Verdict:
        wanted = override or self.default
        limit = self._scaled.get(wanted)
        if limit is None:
            if len(self._scaled) >= self.partners_max:
                self._scaled.clear()
            limit = self._scaled[wanted] = wanted.scaled(self.share)
        bucket = self.buckets.get(partner_id)
        if bucket is None:
            bucket = self.buckets[partner_id] = TokenBucket(limit.burst, now_s)
            if len(self.buckets) > self.partners_max:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(partner_id)
        verdict = bucket.take(limit, now_s)
        if not verdict.allowed:
            self.refused += 1
        return verdict
