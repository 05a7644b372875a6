"""Money parsing/formatting and id routing are exact and total: every bad amount is
rejected with a machine-readable code (never a float, never an overflow), amounts
round-trip through format_amount, agreements colocate with their debtor's shard, and
payment ids are deterministic per (partner, key) and carry their shard."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.ids import (
    is_striped,
    new_account_id,
    new_agreement_id,
    payment_id_for,
    settlement_account_for,
    shard_of,
    shard_of_payment,
)
from kernel.money import INT64_MAX, AmountError, format_amount, parse_amount


# ---- parse_amount ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, currency, minor",
    [
        ("12.34", "CNY", 1234),
        ("0.01", "CNY", 1),
        ("1", "CNY", 100),
        ("1.5", "CNY", 150),
        ("100000.00", "USD", 10_000_000),
        ("7", "JPY", 7),
        ("92233720368547758.07", "CNY", INT64_MAX),
        ("9223372036854775807", "JPY", INT64_MAX),
    ],
)
def test_parse_valid(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    "text, currency, code",
    [
        ("0", "CNY", "QP.Amount.NotPositive"),
        ("0.00", "CNY", "QP.Amount.NotPositive"),
        ("0", "JPY", "QP.Amount.NotPositive"),
        ("-1", "CNY", "QP.Amount.Invalid"),
        ("-0.01", "CNY", "QP.Amount.Invalid"),
        ("+1", "CNY", "QP.Amount.Invalid"),
        ("1.234", "CNY", "QP.Amount.TooManyDecimals"),
        ("1.5", "JPY", "QP.Amount.TooManyDecimals"),
        ("1.0", "JPY", "QP.Amount.TooManyDecimals"),
        ("92233720368547758.08", "CNY", "QP.Amount.TooLarge"),
        ("9223372036854775808", "JPY", "QP.Amount.TooLarge"),
        ("99999999999999999999", "CNY", "QP.Amount.TooLarge"),
        ("123456789012345678901", "CNY", "QP.Amount.Invalid"),  # more digits than any int64
        ("01", "CNY", "QP.Amount.Invalid"),
        ("1.", "CNY", "QP.Amount.Invalid"),
        (".5", "CNY", "QP.Amount.Invalid"),
        ("1e3", "CNY", "QP.Amount.Invalid"),
        ("1,00", "CNY", "QP.Amount.Invalid"),
        (" 1", "CNY", "QP.Amount.Invalid"),
        ("1 ", "CNY", "QP.Amount.Invalid"),
        ("", "CNY", "QP.Amount.Invalid"),
        ("NaN", "CNY", "QP.Amount.Invalid"),
        ("١٢", "CNY", "QP.Amount.Invalid"),  # non-ASCII digits
        ("1", "XXX", "QP.Currency.Unsupported"),
        ("1", "cny", "QP.Currency.Unsupported"),
    ],
)
def test_parse_invalid(text: str, currency: str, code: str) -> None:
    with pytest.raises(AmountError) as info:
        parse_amount(text, currency)
    assert info.value.code == code
    assert info.value.message


@pytest.mark.parametrize("value", [1, 1.5, None, b"1", ["1"], {"a": 1}, True])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(AmountError) as info:
        parse_amount(value, "CNY")
    assert info.value.code == "QP.Field.Invalid"


def test_trailing_newline_is_rejected() -> None:
    # `$` in a Python regex also matches before a final "\n"; an amount must not.
    with pytest.raises(AmountError):
        parse_amount("1\n", "CNY")


# ---- format_amount -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "minor, currency, text",
    [
        (0, "CNY", "0.00"),
        (1, "CNY", "0.01"),
        (1234, "CNY", "12.34"),
        (-5, "CNY", "-0.05"),
        (-1234, "USD", "-12.34"),
        (7, "JPY", "7"),
        (0, "JPY", "0"),
        (INT64_MAX, "CNY", "92233720368547758.07"),
    ],
)
def test_format(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@settings(max_examples=300, deadline=None)
@given(minor=st.integers(min_value=1, max_value=INT64_MAX), currency=st.sampled_from(["CNY", "JPY", "USD"]))
def test_format_parse_round_trip(minor: int, currency: str) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


# ---- routing ---------------------------------------------------------------------------
def test_shard_of_is_stable_and_in_range() -> None:
    ids = [new_account_id() for _ in range(400)]
    for count in (1, 2, 3, 8):
        shards = [shard_of(i, count) for i in ids]
        assert all(0 <= s < count for s in shards)
        assert shards == [shard_of(i, count) for i in ids]
        if count > 1:
            assert len(set(shards)) == count  # 400 random ids reach every shard
    assert all(shard_of(i, 1) == 0 for i in ids)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_new_agreement_id_colocates_with_debtor(count: int) -> None:
    for _ in range(50):
        debtor = new_account_id()
        agreement = new_agreement_id(debtor, count)
        assert agreement.startswith("agr_")
        assert shard_of(agreement, count) == shard_of(debtor, count)


def test_payment_id_is_deterministic_and_carries_its_shard() -> None:
    a = payment_id_for("ptn_a", "key-1", 1)
    assert a == payment_id_for("ptn_a", "key-1", 1)
    assert a != payment_id_for("ptn_b", "key-1", 1)  # keys are per partner
    assert a != payment_id_for("ptn_a", "key-2", 1)
    # no ambiguity from concatenation: ("ab", "c") differs from ("a", "bc")
    assert payment_id_for("ab", "c", 0) != payment_id_for("a", "bc", 0)
    for shard in range(5):
        pid = payment_id_for("ptn_a", "k", shard)
        assert shard_of_payment(pid, 5) == shard
    assert shard_of_payment(payment_id_for("ptn_a", "k", 3), 2) is None  # shard out of range


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "pay_",
        "pay_abc_0",
        "acc_" + "0" * 32 + "_0",
        "pay_" + "0" * 32 + "_x",
        "pay_" + "0" * 32,
        "pay_" + "0" * 32 + "_",
        "pay_" + "0" * 31 + "_0",
        "pay_" + "0" * 32 + "_-1",
    ],
)
def test_shard_of_payment_rejects_malformed(bad: str) -> None:
    assert shard_of_payment(bad, 2) is None


def test_striped_accounts() -> None:
    assert is_striped(settlement_account_for("ptn_x"))
    assert settlement_account_for("ptn_x") == "set_ptn_x"
    assert is_striped("sys_clearing") and is_striped("sys_funding")
    assert not is_striped(new_account_id())
