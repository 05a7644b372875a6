"""Error codes, pure. `Code`: the result codes of a ledger decision (OK, the replays, and the
reasons a command is refused or a payment rejected), shared by the decision code, the shard
protocol and the gateway that maps them to HTTP. `ApiError`: the API's one error shape,
{"code", "message", "errors": [{"code", "message", "path"}]}, as an exception the gateway
answers with (gateway/errors.py turns it into a response)."""

from __future__ import annotations

__all__ = ["ApiError", "Code", "field_error"]


class Code:
    """Result codes of a decision. OK and the Rejected reasons are recorded; the rest write nothing."""

    OK = "OK"
    REPLAY = "REPLAY"  # same key, same body: answer with the original
    EXISTS_WITH_DIFFERENT_BODY = "EXISTS_WITH_DIFFERENT_BODY"
    IN_FLIGHT = "IN_FLIGHT"  # same key, original not yet committed
    AGREEMENT_NOT_FOUND = "AGREEMENT_NOT_FOUND"
    # Payments refused (nothing written) under an agreement that does not allow them now:
    AGREEMENT_NOT_AUTHORISED = "AGREEMENT_NOT_AUTHORISED"  # awaiting the customer, or rejected
    AGREEMENT_NOT_YET_VALID = "AGREEMENT_NOT_YET_VALID"
    AGREEMENT_EXPIRED = "AGREEMENT_EXPIRED"
    AGREEMENT_SUSPENDED = "AGREEMENT_SUSPENDED"
    AGREEMENT_REVOKED = "AGREEMENT_REVOKED"
    # Agreement transitions:
    SAME = "SAME"  # already in the target status: nothing recorded
    FORBIDDEN = "FORBIDDEN"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    # Agreement creation refused: the partner already has as many agreements awaiting the
    # customer (not expired) as it may, over this account / on this shard in total.
    TOO_MANY_PENDING_FOR_ACCOUNT = "TOO_MANY_PENDING_FOR_ACCOUNT"
    TOO_MANY_PENDING = "TOO_MANY_PENDING"
    # Refunds:
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    PAYMENT_IN_FLIGHT = "PAYMENT_IN_FLIGHT"  # the refunded payment is not committed yet
    NOT_REFUNDABLE = "NOT_REFUNDABLE"
    EXCEEDS_PAYMENT = "EXCEEDS_PAYMENT"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    PARTNER_NOT_FOUND = "PARTNER_NOT_FOUND"
    CREDITOR_NOT_FOUND = "CREDITOR_NOT_FOUND"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    # Reasons recorded on a Rejected payment:
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    AGREEMENT_PER_PAYMENT_LIMIT = "AGREEMENT_PER_PAYMENT_LIMIT"
    AGREEMENT_PERIODIC_LIMIT = "AGREEMENT_PERIODIC_LIMIT"  # the period is in the row's details
    BALANCE_OVERFLOW = "BALANCE_OVERFLOW"
    # A credit leg the creditor shard cannot apply without leaving int64 (the creditor's
    # balance, or its clearing stripe's): recorded as a Rejected credit_leg row with reason
    # BALANCE_OVERFLOW, moving nothing; its amount stays in the debtor shard's clearing
    # stripe (credits in flight, held) for operators to resolve. `quickpay check` lists it.
    HELD = "HELD"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


def field_error(status: int, code: str, message: str, path: str) -> ApiError:
    return ApiError(status, code, message, [{"code": code, "message": message, "path": path}])
