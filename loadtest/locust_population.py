"""Population and keys shared by the Locust suites (no Locust import: usable from pytest).

``quickpay seed`` writes the population JSON and its agreements CSV; each Locust process
loads a sample of it once (QUICKPAY_POPULATION, QUICKPAY_AGREEMENTS_MAX).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

__all__ = [
    "IDEMPOTENCY_KEY_LENGTH_MAX",
    "ZIPF_EXPONENT",
    "Population",
    "ZipfSampler",
    "load_population",
    "new_idempotency_key",
]

ZIPF_EXPONENT = 1.1
IDEMPOTENCY_KEY_LENGTH_MAX = 64
_AGREEMENTS_MAX_DEFAULT = 200_000


class ZipfSampler:
    """Draws ranks 0..n-1 with probability proportional to 1 / (rank + 1) ** exponent.

    Precomputes the cumulative weights once, so a draw is one ``random()`` and a bisection.
    """

    def __init__(self, n: int, exponent: float = ZIPF_EXPONENT, rng: random.Random | None = None) -> None:
        if n < 1:
            raise ValueError("ZipfSampler needs n >= 1")
        self.cumulative = list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, n + 1)))
        self.total = self.cumulative[-1]
        self.random = (rng or random.Random()).random

    def __call__(self) -> int:
        index = bisect.bisect_left(self.cumulative, self.random() * self.total)
        return min(index, len(self.cumulative) - 1)


class Population:
    """Partners, a sample of the agreements per partner, and the blocked agreements."""

    def __init__(self, path: Path, agreements_max: int) -> None:
        data = json.loads(path.read_text())
        self.currency: str = data.get("currency", "CNY")
        self.partners: list[dict[str, Any]] = data["partners"]
        if not self.partners:
            raise ValueError(f"{path}: population has no partners")
        # partner_index -> parallel lists (agreement ids, debtor accounts)
        self.agreements: dict[int, tuple[list[str], list[str]]] = {}
        self.all_debtor_accounts: list[str] = []
        csv_path = path.parent / data["agreements_csv"]
        for partner_index, agreement_id, debtor_account in _sample_agreements(csv_path, agreements_max):
            ids, accounts = self.agreements.setdefault(partner_index, ([], []))
            ids.append(agreement_id)
            accounts.append(debtor_account)
            self.all_debtor_accounts.append(debtor_account)
        self.blocked: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for blocked in data.get("blocked_agreements", []):
            self.blocked[int(blocked["partner_index"])].append(blocked)
        self.partner_indexes_with_agreements = sorted(
            index for index in self.agreements if 0 <= index < len(self.partners)
        )
        if not self.partner_indexes_with_agreements:
            raise ValueError(f"{csv_path}: no agreements for any partner in {path}")
        self.samplers = {
            index: ZipfSampler(len(self.agreements[index][0])) for index in self.partner_indexes_with_agreements
        }


def _sample_agreements(csv_path: Path, rows_max: int) -> list[tuple[int, str, str]]:
    """Every k-th row of the CSV so that at most ``rows_max`` rows are kept.

    Counting newlines in binary blocks first is fast even for a million rows, and taking
    every k-th row (rather than the first rows) keeps every partner represented when the
    file is grouped by partner.
    """
    with csv_path.open("rb") as file:
        lines = sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))
    stride = max(1, -(-max(lines - 1, 1) // rows_max))
    rows: list[tuple[int, str, str]] = []
    with csv_path.open("r", encoding="utf-8", newline="") as file:
        header = file.readline().strip().split(",")
        if header[:3] != ["partner_index", "agreement_id", "debtor_account"]:
            raise ValueError(f"{csv_path}: header must be partner_index,agreement_id,debtor_account")
        for number, line in enumerate(file):
            if number % stride:
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) < 3:
                continue
            rows.append((int(fields[0]), fields[1], fields[2]))
            if len(rows) >= rows_max:
                break
    return rows


_population: Population | None = None


def load_population() -> Population:
    """Load once per process; every user shares it."""
    global _population
    if _population is None:
        path = os.environ.get("QUICKPAY_POPULATION")
        if not path:
            raise RuntimeError("set QUICKPAY_POPULATION to the population JSON written by `quickpay seed`")
        agreements_max = int(os.environ.get("QUICKPAY_AGREEMENTS_MAX", _AGREEMENTS_MAX_DEFAULT))
        _population = Population(Path(path), agreements_max)
    return _population


# Key prefix unique per process: pid plus random bits. Computed lazily and re-made when the pid
# changes, because `locust --processes N` forks after this module was imported.
_key_state: dict[str, Any] = {"pid": -1, "prefix": "", "numbers": itertools.count()}


def new_idempotency_key() -> str:
    state = _key_state
    pid = os.getpid()
    if state["pid"] != pid:
        state.update(
            pid=pid, prefix=f"lc{pid:x}{random.SystemRandom().getrandbits(40):010x}-", numbers=itertools.count()
        )
    key = f"{state['prefix']}{next(state['numbers'])}"
    if len(key) > IDEMPOTENCY_KEY_LENGTH_MAX:
        raise AssertionError(f"idempotency key longer than {IDEMPOTENCY_KEY_LENGTH_MAX}: {key}")
    return key
