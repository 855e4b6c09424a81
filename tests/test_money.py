from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import Rounding, UnknownCurrencyError, div_round, format_money, to_decimal, to_minor


def test_to_minor_rounds_by_the_named_mode() -> None:
    assert to_minor("120.505", "EUR", Rounding.HALF_UP) == 12051
    assert to_minor("120.505", "EUR", Rounding.HALF_EVEN) == 12050
    assert to_minor("120.515", "EUR", Rounding.HALF_EVEN) == 12052
    assert to_minor("1500", "JPY") == 1500
    assert to_minor(Decimal("1.2345"), "KWD") == 1235


def test_floats_and_unknown_currencies_are_refused() -> None:
    with pytest.raises(TypeError):
        to_minor(1.1, "EUR")  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrencyError, match="EURO"):
        to_minor("1", "EURO")


def test_decimal_and_display() -> None:
    assert to_decimal(12050, "EUR") == Decimal("120.50")
    assert str(to_decimal(5, "USD")) == "0.05"
    assert format_money(123456789, "EUR") == "1,234,567.89 EUR"
    assert format_money(-150, "USD") == "-1.50 USD"


@given(st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=50), st.integers(1, 10**6),
       st.sampled_from(list(Rounding)))  # fmt: skip
def test_div_round_equals_decimal_quantize(numerators: list[int], denominator: int, mode: Rounding) -> None:
    got = div_round(np.array(numerators, dtype=np.int64), denominator, mode)
    want = [int((Decimal(n) / Decimal(denominator)).quantize(Decimal(1), rounding=mode.decimal_mode))
            for n in numerators]  # fmt: skip
    assert got.tolist() == want


def test_div_round_ties() -> None:
    ties = np.array([5, 15, 25, -5, -15])
    assert div_round(ties, 10, Rounding.HALF_UP).tolist() == [1, 2, 3, -1, -2]
    assert div_round(ties, 10, Rounding.HALF_EVEN).tolist() == [0, 2, 2, 0, -2]
    assert Rounding.HALF_UP.decimal_mode == ROUND_HALF_UP
    assert Rounding.HALF_EVEN.decimal_mode == ROUND_HALF_EVEN
