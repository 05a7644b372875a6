"""Partner tokens (OAuth2 client credentials) and the admin token.

Access tokens are HS256 JWTs signed with a key every gateway worker reads from
the state directory, so any worker verifies any token with no shared state.
Client secrets are 256-bit random strings stored as SHA-256 digests: with that
much entropy a slow password hash adds cost and no safety.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Any

import jwt

from kernel.limits import TOKEN_TTL_S

__all__ = [
    "TOKEN_TTL_S",
    "TokenService",
    "admin_token_matches",
    "client_secret_valid",
    "hash_secret",
    "new_secret",
    "secret_matches",
    "token_cut_off",
]

_ISSUER = "quickpay"
_VERIFIED_CACHE_MAX = 10_000


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    """Constant time in the stored digest: compares two digests with hmac.compare_digest."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_sha256.encode())


def client_secret_valid(partner: dict[str, Any], secret: str, now_ms: int) -> bool:
    """The partner's current secret, or (after a rotation) its previous one until its overlap
    window ends (previous_secret_until_ms, exclusive) or it is retired. Both are compared,
    whatever the first gives, so the time taken does not say which one matched."""
    current = secret_matches(secret, partner["secret_sha256"])
    previous_hash = partner.get("previous_secret_sha256")
    until = partner.get("previous_secret_until_ms")
    previous = previous_hash is not None and secret_matches(secret, previous_hash)
    return current or (previous and until is not None and now_ms < until)


def token_cut_off(marker: tuple[int | None, int | None] | list[int | None] | None, issued_at_ms: int) -> str | None:
    """Why a token issued at issued_at_ms is refused under a partner's cut-off marker
    ([disabled_at_ms, tokens_valid_after_ms], as the ledger's partner record holds it):
    "disabled", "revoked" (issued at or before tokens_valid_after_ms), or None."""
    if marker is None:
        return None
    disabled_at_ms, valid_after_ms = marker
    if disabled_at_ms is not None:
        return "disabled"
    if valid_after_ms is not None and issued_at_ms <= valid_after_ms:
        return "revoked"
    return None


def admin_token_matches(presented: str, admin_token: str) -> bool:
    """Constant-time comparison of a presented admin bearer token with the configured one
    (SHA-256 first, so neither length nor content leaks through timing)."""
    return hmac.compare_digest(
        hashlib.sha256(presented.encode(errors="surrogatepass")).digest(), hashlib.sha256(admin_token.encode()).digest()
    )


class TokenService:
    def __init__(self, key: bytes, *, ttl_s: int = TOKEN_TTL_S) -> None:
        if len(key) < 32:
            raise ValueError("token signing key must be at least 32 bytes")
        self.key = key
        self.ttl_s = ttl_s
        # Verified tokens, so a partner's steady stream of requests costs one dict
        # lookup instead of an HMAC and a JSON parse each; expiry is still checked.
        # Keyed by a keyed BLAKE2b digest of the token, not the token: a lookup compares
        # digests an attacker cannot steer (no timing signal about a real token's
        # bytes), and the cache holds no usable bearer tokens.
        self._verified: OrderedDict[bytes, tuple[str, int, int]] = OrderedDict()
        self._cache_key = hashlib.blake2b(b"quickpay token cache|" + key, digest_size=32).digest()

    def _cache_id(self, token: str) -> bytes:
        return hashlib.blake2b(token.encode(errors="surrogatepass"), key=self._cache_key, digest_size=16).digest()

    def issue(self, partner_id: str, now_s: int, now_ms: int | None = None) -> str:
        """A token; `iat_ms` (the issue time in ms, now_s * 1000 unless given) is what a
        revocation ("tokens issued at or before T") compares with: `iat` has whole seconds only."""
        return jwt.encode(
            {
                "sub": partner_id,
                "iss": _ISSUER,
                "iat": now_s,
                "exp": now_s + self.ttl_s,
                "iat_ms": now_ms if now_ms is not None else now_s * 1000,
                "scope": "payments",
            },
            self.key,
            algorithm="HS256",
        )

    def verify(self, token: str, now_s: int) -> str | None:
        """The partner id of a valid, unexpired token, else None."""
        claims = self.verify_claims(token, now_s)
        return claims[0] if claims is not None else None

    def verify_claims(self, token: str, now_s: int) -> tuple[str, int] | None:
        """(partner id, issued at in ms) of a valid, unexpired token, else None. A token
        without iat_ms (issued before it existed) counts as issued at the first ms of its iat
        second: a revocation within that second refuses it (when unsure, refuse)."""
        cache_id = self._cache_id(token)
        cached = self._verified.get(cache_id)
        if cached is not None:
            partner_id, exp, iat_ms = cached
            return (partner_id, iat_ms) if now_s < exp else None
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["exp", "sub", "iss"], "verify_exp": False},
            )
        except jwt.PyJWTError:
            return None
        exp = int(claims["exp"])
        if now_s >= exp:
            return None
        stated, iat = claims.get("iat_ms"), claims.get("iat")
        if isinstance(stated, int):
            iat_ms = stated
        elif isinstance(iat, (int, float)):
            iat_ms = int(iat) * 1000
        else:
            iat_ms = 0
        partner_id = str(claims["sub"])
        self._verified[cache_id] = (partner_id, exp, iat_ms)
        if len(self._verified) > _VERIFIED_CACHE_MAX:
            self._verified.popitem(last=False)
        return partner_id, iat_ms
