"""What counts as a usable secret, and how to make one.

Every process refuses to start with a secret that a reader of a sample config could
guess. The rules are concrete so they can be tested and explained:

* long enough: keys (the token-signing key, the cluster secret) at least 64 characters
  (32 random bytes as hex); tokens and passwords (admin token, database password) at
  least 40 characters;
* no placeholder words (change-me, placeholder, example, secret, password, default, ...);
* at least 8 distinct characters, and not a repetition of a shorter pattern
  ("abcabc...") or mostly a run of neighbouring characters ("0123456789abcdef...");
* estimated entropy (length x the Shannon entropy of its characters) of at least
  192 bits for keys and 110 bits for tokens and passwords. Random hex of the minimum
  length scores about 245 and 150 bits.

`generate()` makes secrets that pass (32 random bytes, hex): `quickpay secrets` writes
a full set to a .env file.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "HOW_TO_GENERATE",
    "KEY",
    "TOKEN",
    "SecretKind",
    "estimated_bits",
    "generate",
    "require_strong",
    "secret_problem",
]

HOW_TO_GENERATE = (
    "generate proper ones with `quickpay secrets --out .env` (a .env for docker compose), "
    "or one at a time with `python3 -c 'import secrets; print(secrets.token_hex(32))'`"
)

PLACEHOLDER_WORDS = (
    "change",
    "placeholder",
    "example",
    "secret",
    "password",
    "passwd",
    "default",
    "dummy",
    "sample",
    "insecure",
    "replace",
    "quickpay",
    "qwerty",
    "letmein",
    "admin",
)
DISTINCT_MIN = 8


@dataclass(frozen=True, slots=True)
class SecretKind:
    label: str
    min_length: int
    min_bits: float


KEY = SecretKind("key", 64, 192.0)
TOKEN = SecretKind("token", 40, 110.0)


def estimated_bits(value: str) -> float:
    """Length times the Shannon entropy of the string's own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    per_char = -sum(c / n * math.log2(c / n) for c in Counter(value).values())
    return n * per_char


def _smallest_period(value: str) -> int:
    # Knuth-Morris-Pratt failure function: the string is a repetition of its first
    # n - border characters.
    border = [0] * len(value)
    k = 0
    for i in range(1, len(value)):
        while k and value[i] != value[k]:
            k = border[k - 1]
        if value[i] == value[k]:
            k += 1
        border[i] = k
    return len(value) - (border[-1] if value else 0)


def secret_problem(value: str | None, kind: SecretKind) -> str | None:
    """Why `value` is not a usable secret of this kind, or None if it is."""
    if not value:
        return "it is empty"
    if len(value) < kind.min_length:
        return f"it is {len(value)} characters long; at least {kind.min_length} are required"
    lowered = value.lower()
    for word in PLACEHOLDER_WORDS:
        if word in lowered:
            return f"it contains the placeholder word {word!r}"
    distinct = len(set(value))
    if distinct < DISTINCT_MIN:
        return f"it uses only {distinct} distinct characters"
    if _smallest_period(value) <= len(value) // 2:
        return "it repeats a shorter pattern"
    neighbours = sum(1 for a, b in itertools.pairwise(value) if abs(ord(a) - ord(b)) <= 1)
    if neighbours * 3 > (len(value) - 1) * 2:
        return "it is mostly a run of neighbouring characters"
    bits = estimated_bits(value)
    if bits < kind.min_bits:
        return f"its estimated entropy is {bits:.0f} bits; at least {kind.min_bits:.0f} are required"
    return None


def require_strong(name: str, value: str | None, kind: SecretKind, *, program: str = "quickpay") -> str:
    """`value`, or SystemExit with a message that says what is wrong and how to fix it."""
    problem = secret_problem(value, kind)
    if problem is not None:
        raise SystemExit(f"{program}: refusing to start: {name} is not a usable secret ({problem}); " + HOW_TO_GENERATE)
    assert value is not None
    return value


def generate() -> str:
    """32 random bytes as 64 hex characters, drawn again in the (negligible) case the
    draw fails the policy, so a generated secret always passes."""
    while True:
        value = secrets.token_hex(32)
        if secret_problem(value, KEY) is None:
            return value
