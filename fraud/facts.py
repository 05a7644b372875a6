"""The facts about one payment that rules may look at."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaymentFacts"]


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """Everything the fraud filter knows about a payment; no I/O is needed to decide.

    `amount_minor` is in minor units of `currency` (CNY: 1234 = 12.34). `at_ms` is the
    payment time in milliseconds since the Unix epoch, injected by the caller: the
    engine never reads the clock, so replays and tests are deterministic.
    """

    transfer_id: str
    partner_id: str
    agreement_id: str
    debtor_account: str
    creditor_account: str
    amount_minor: int
    currency: str
    device_id: str | None
    ip: str | None
    at_ms: int
