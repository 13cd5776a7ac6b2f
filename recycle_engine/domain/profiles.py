"""Recycle profile values: attempts, slots, reductions, as finance configures them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["AttemptRule", "ReductionType", "RecycleProfile", "Slot", "attempt_label", "slot_of_attempt"]

FINAL = 10  # the "final" attempt is stored as number 10, after the nine numbered ones


class ReductionType(enum.StrEnum):
    PERCENT = "percent"  # cumulative percent of the original price
    FLAT = "flat"  # cumulative fixed amount off, in the price's currency


class Slot(enum.StrEnum):
    """Groups of attempts sharing a gateway (domain.md 3.2)."""

    BASIC = "1-3"  # the purchase's current gateway; never FlexFactor
    S4_6 = "4-6"
    S7_9 = "7-9"
    FINAL = "final"


def slot_of_attempt(attempt: int) -> Slot:
    """The slot an attempt number (1..9, or FINAL=10) belongs to."""
    if 1 <= attempt <= 3:
        return Slot.BASIC
    if 4 <= attempt <= 6:
        return Slot.S4_6
    if 7 <= attempt <= 9:
        return Slot.S7_9
    if attempt == FINAL:
        return Slot.FINAL
    raise ValueError(f"attempt {attempt} is outside 1..9 and final")


def attempt_label(attempt: int) -> str:
    """ "1".."9" or "final"."""
    return "final" if attempt == FINAL else str(attempt)


@dataclass(frozen=True)
class AttemptRule:
    """One re-attempt: wait `days` after the previous attempt that ran; add `reduction`."""

    attempt: int  # 1..9, or FINAL (10)
    days: int
    reduction: Decimal  # percent (e.g. Decimal("5")) or major units (Decimal("2.50")) per reduction_type
    skip: bool = False


@dataclass(frozen=True)
class RecycleProfile:
    """A recycle profile: the gateways it covers, its ladder and its slot gateways."""

    id: str
    gateways: tuple[str, ...]
    reduction_type: ReductionType
    minimum_price: Decimal  # major units, in the currency of the price being recycled
    bill_on_saturday: bool
    hold_recycle_price: bool
    attempts: tuple[AttemptRule, ...]  # sorted by attempt number
    slots: dict[Slot, str | None]  # slot -> gateway id; None = the declining gateway
    holdout_percent: Decimal = Decimal(0)

    def gateway_for_slot(self, slot: Slot) -> str | None:
        """Gateway id configured for `slot`, or None for the purchase's current (declining) gateway."""
        if slot is Slot.BASIC:
            return None
        return self.slots.get(slot)
