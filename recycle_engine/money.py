"""Money as integer minor units plus an ISO 4217 currency; decimal text is parsed exactly, once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_MINOR",
    "AmountTooLarge",
    "Money",
    "currency_exponent",
    "is_known_currency",
    "largest_amount",
    "parse_minor",
]

# ISO 4217 minor-unit exponents; currencies not listed here are refused rather than guessed.
CURRENCY_EXPONENTS: dict[str, int] = {
    **{
        c: 2
        for c in (
            "USD EUR GBP CAD AUD NZD CHF SEK NOK DKK PLN CZK HUF RON BGN MXN BRL ARS COP PEN ZAR INR "
            "SGD HKD TWD PHP THB MYR ILS TRY AED SAR QAR EGP NGN KES MAD CNY RUB UAH"
        ).split()
    },
    **{c: 0 for c in "JPY KRW CLP VND ISK UGX XAF XOF PYG IDR".split()},
    **{c: 3 for c in "BHD KWD OMR JOD TND".split()},
}

# The largest amount the engine accepts, in minor units (9,999,999,999.99 USD): far above any real
# charge, far below the 64-bit columns that store it, so a typo such as 99999999999999999999 is a
# rejected value, never an overflow in the database.
MAX_MINOR: Final = 10**12 - 1


class AmountTooLarge(ValueError):
    """An amount past MAX_MINOR minor units."""


_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")


def is_known_currency(code: str) -> bool:
    """True if `code` is an ISO 4217 code the engine knows the exponent of."""
    return code in CURRENCY_EXPONENTS


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits of `code`; raises ValueError for an unknown currency."""
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}") from None


def parse_minor(text: str, currency: str) -> int:
    """Parse a major-unit decimal string ("29.99") into minor units, refusing extra precision and,
    with AmountTooLarge, anything past MAX_MINOR (in either sign)."""
    raw = text.strip()
    if not _DECIMAL_RE.fullmatch(raw):
        raise ValueError(f"not a decimal amount: {raw!r}")
    exp = currency_exponent(currency)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {raw!r}") from None
    scaled = value.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{raw} has more than {exp} decimal places for {currency}")
    if abs(scaled) > MAX_MINOR:
        raise AmountTooLarge(f"more than {largest_amount(currency)}")
    return int(scaled)


def largest_amount(currency: str) -> str:
    """MAX_MINOR as text in `currency`, e.g. "9999999999.99 USD"."""
    return Money(MAX_MINOR, currency).format()


@dataclass(frozen=True, order=True)
class Money:
    """An amount in minor units of `currency` (cents for USD, yen for JPY)."""

    minor: int
    currency: str

    def percent_of(self, percent: Decimal) -> int:
        """`percent` % of this amount in minor units, rounded half-up."""
        return int((Decimal(self.minor) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot mix {self.currency} and {other.currency}")

    def to_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-currency_exponent(self.currency))

    def format(self) -> str:
        """Human text such as "29.99 USD"."""
        exp = currency_exponent(self.currency)
        return f"{self.to_decimal():.{exp}f} {self.currency}"

    def format_grouped(self) -> str:
        """Human text with thousands grouped, "3,467.90 USD": how the report and the demo show money."""
        exp = currency_exponent(self.currency)
        return f"{self.to_decimal():,.{exp}f} {self.currency}"

    def __str__(self) -> str:
        return self.format()
