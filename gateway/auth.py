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

import jwt

__all__ = ["TokenService", "hash_secret", "new_secret", "secret_matches", "admin_token_matches", "TOKEN_TTL_S"]

TOKEN_TTL_S = 3600
_ISSUER = "quickpay"
_VERIFIED_CACHE_MAX = 10_000


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    """Constant time in the stored digest: compares two digests with hmac.compare_digest."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_sha256.encode())


def admin_token_matches(presented: str, admin_token: str) -> bool:
    """Constant-time comparison of a presented admin bearer token with the configured one
    (SHA-256 first, so neither length nor content leaks through timing)."""
    return hmac.compare_digest(hashlib.sha256(presented.encode(errors="surrogatepass")).digest(),
                               hashlib.sha256(admin_token.encode()).digest())


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
        self._verified: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._cache_key = hashlib.blake2b(b"quickpay token cache|" + key, digest_size=32).digest()

    def _cache_id(self, token: str) -> bytes:
        return hashlib.blake2b(token.encode(errors="surrogatepass"), key=self._cache_key, digest_size=16).digest()

    def issue(self, partner_id: str, now_s: int) -> str:
        return jwt.encode({"sub": partner_id, "iss": _ISSUER, "iat": now_s, "exp": now_s + self.ttl_s,
                           "scope": "payments"}, self.key, algorithm="HS256")

    def verify(self, token: str, now_s: int) -> str | None:
        """The partner id of a valid, unexpired token, else None."""
        cache_id = self._cache_id(token)
        cached = self._verified.get(cache_id)
        if cached is not None:
            partner_id, exp = cached
            return partner_id if now_s < exp else None
        try:
            claims = jwt.decode(token, self.key, algorithms=["HS256"], issuer=_ISSUER,
                                options={"require": ["exp", "sub", "iss"], "verify_exp": False})
        except jwt.PyJWTError:
            return None
        exp = int(claims["exp"])
        if now_s >= exp:
            return None
        self._verified[cache_id] = (claims["sub"], exp)
        if len(self._verified) > _VERIFIED_CACHE_MAX:
            self._verified.popitem(last=False)
        return str(claims["sub"])
