"""Identifiers and shard routing.

Every account, agreement and payment id routes to exactly one shard by a hash
of the id. Agreements are created so that they hash to their debtor's shard,
which keeps an agreement, its debtor's balance and its payments in one single
writer. Payment ids are derived from (partner, idempotency key) so that a retry
maps to the same transfer, and carry their shard so reads route without a
lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

__all__ = [
    "CLEARING_ACCOUNT",
    "FUNDING_ACCOUNT",
    "is_striped",
    "new_account_id",
    "new_agreement_id",
    "new_partner_id",
    "payment_id_for",
    "refund_id_for",
    "settlement_account_for",
    "shard_of",
    "shard_of_payment",
    "shard_of_refund",
]

# Striped system accounts exist once on every shard; a transfer touching them
# always uses the local stripe, so funding and partner settlement never cross
# shards. Their logical balance is the sum over stripes.
FUNDING_ACCOUNT = "sys_funding"
CLEARING_ACCOUNT = "sys_clearing"
_SETTLEMENT_PREFIX = "set_"


def shard_of(entity_id: str, shard_count: int) -> int:
    return zlib.crc32(entity_id.encode()) % shard_count


def is_striped(account_id: str) -> bool:
    return account_id.startswith(_SETTLEMENT_PREFIX) or account_id.startswith("sys_")


def settlement_account_for(partner_id: str) -> str:
    return _SETTLEMENT_PREFIX + partner_id


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(10)


def new_partner_id() -> str:
    return "ptn_" + secrets.token_hex(8)


def new_agreement_id(debtor_account: str, shard_count: int) -> str:
    """A random agreement id that routes to the debtor's shard (expected shard_count draws)."""
    target = shard_of(debtor_account, shard_count)
    while True:
        candidate = "agr_" + secrets.token_hex(10)
        if shard_of(candidate, shard_count) == target:
            return candidate


def payment_id_for(partner_id: str, idempotency_key: str, shard: int) -> str:
    digest = hashlib.blake2b(f"{partner_id}\x00{idempotency_key}".encode(), digest_size=16).hexdigest()
    return f"pay_{digest}_{shard}"


def refund_id_for(partner_id: str, idempotency_key: str, shard: int) -> str:
    """A refund's id: (partner, key) like a payment's, so a retry is the same refund, under
    its own prefix (a key used for a payment and for a refund names two things), on the
    refunded payment's shard."""
    return "ref_" + payment_id_for(partner_id, idempotency_key, shard)[4:]


def shard_of_refund(refund_id: str, shard_count: int) -> int | None:
    if not refund_id.startswith("ref_"):
        return None
    return shard_of_payment("pay_" + refund_id[4:], shard_count)


def shard_of_payment(payment_id: str, shard_count: int) -> int | None:
    """The shard encoded in a payment id, or None if the id is malformed."""
    # ASCII only: str.isdigit() accepts "²" and "٣", which int() then refuses (or reads).
    match = _PAYMENT_ID.fullmatch(payment_id)
    if match is None:
        return None
    shard = int(match.group(1))
    return shard if shard < shard_count else None


_PAYMENT_ID = re.compile(r"pay_[0-9a-f]{32}_(0|[1-9][0-9]{0,5})")
