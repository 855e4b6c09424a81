"""Exact money: integer minor units with their currency, and named rounding modes.

Amounts never pass through float. Decimal is used at the edges (rule files, ERP payloads);
inside, everything is an integer count of the currency's minor unit (cents).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal
from enum import StrEnum

import numpy as np

# ISO 4217 minor-unit exponents of the currencies we accept. A currency not listed is rejected,
# so a typo ("EURO") is an error instead of a silently wrong invoice.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BRL": 2, "CAD": 2, "CHF": 2, "CNY": 2, "CZK": 2, "DKK": 2, "EUR": 2,
    "GBP": 2, "HKD": 2, "HUF": 2, "ILS": 2, "INR": 2, "JPY": 0, "KRW": 0, "MXN": 2, "NOK": 2,
    "NZD": 2, "PLN": 2, "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TRY": 2, "USD": 2,
    "ZAR": 2, "BHD": 3, "KWD": 3, "OMR": 3,
}  # fmt: skip


class Rounding(StrEnum):
    """How a value that falls between two representable values is rounded."""

    HALF_UP = "half_up"  # ties away from zero (commercial rounding)
    HALF_EVEN = "half_even"  # ties to even (banker's rounding)
    UP = "up"  # away from zero
    DOWN = "down"  # towards zero
    CEILING = "ceiling"
    FLOOR = "floor"

    @property
    def decimal_mode(self) -> str:
        return {
            Rounding.HALF_UP: ROUND_HALF_UP,
            Rounding.HALF_EVEN: ROUND_HALF_EVEN,
            Rounding.UP: ROUND_UP,
            Rounding.DOWN: ROUND_DOWN,
            Rounding.CEILING: ROUND_CEILING,
            Rounding.FLOOR: ROUND_FLOOR,
        }[self]


class UnknownCurrencyError(ValueError):
    pass


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrencyError(f"unknown currency {currency!r} (expected an ISO 4217 code)") from None


def is_currency(code: object) -> bool:
    return isinstance(code, str) and code in CURRENCY_EXPONENTS


def to_minor(amount: Decimal | int | str, currency: str, rounding: Rounding = Rounding.HALF_UP) -> int:
    """A decimal amount in major units (``"120.50"``) as integer minor units, rounded by ``rounding``."""
    if isinstance(amount, float):  # a float here is a bug upstream, not an input to tolerate
        raise TypeError("money must not be a float; pass a Decimal, int or str")
    scaled = Decimal(amount).scaleb(exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=rounding.decimal_mode))


def to_decimal(minor: int, currency: str) -> Decimal:
    """Integer minor units as an exact Decimal in major units (12050, EUR → Decimal('120.50'))."""
    exp = exponent(currency)
    return Decimal(int(minor)).scaleb(-exp).quantize(Decimal(1).scaleb(-exp))


def format_money(minor: int, currency: str) -> str:
    """``12050, "EUR"`` → ``"120.50 EUR"`` with thousands separators."""
    return f"{to_decimal(minor, currency):,} {currency}"


def div_round(numerator: np.ndarray | int, denominator: int, rounding: Rounding) -> np.ndarray:
    """Integer division of an int64 array by a positive integer, rounded by ``rounding``, exactly.

    This is the vectorized counterpart of ``Decimal.quantize``: the pricing engine multiplies integers
    (quantity in hundredths × price in minor units) and divides once, here.
    """
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    num = np.asarray(numerator, dtype=np.int64)
    quotient, remainder = np.divmod(num, denominator)  # floor division: 0 <= remainder < denominator
    if rounding is Rounding.FLOOR:
        return quotient
    if rounding is Rounding.CEILING:
        return quotient + (remainder > 0)
    if rounding is Rounding.DOWN:  # towards zero
        return quotient + ((remainder > 0) & (num < 0))
    if rounding is Rounding.UP:  # away from zero
        return quotient + ((remainder > 0) & (num >= 0))
    twice = 2 * remainder
    above_half = twice > denominator
    tie = twice == denominator
    if rounding is Rounding.HALF_UP:  # ties away from zero
        return quotient + above_half + (tie & (num >= 0))
    # HALF_EVEN: ties go to the even quotient
    return quotient + above_half + (tie & (quotient % 2 == 1))
