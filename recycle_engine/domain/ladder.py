"""Recycle ladder arithmetic: attempt dates, cumulative price reductions, skips and the minimum price."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from recycle_engine.domain.profiles import (
    FINAL,
    AttemptRule,
    RecycleProfile,
    ReductionType,
    Slot,
    slot_of_attempt,
)
from recycle_engine.money import parse_minor

__all__ = ["PlannedAttempt", "is_due", "local_date", "next_attempt", "plan"]

_SATURDAY = 5  # date.weekday(): Monday is 0


@dataclass(frozen=True)
class PlannedAttempt:
    """One scheduled re-attempt: when it is due, what it charges and on which gateway."""

    attempt: int  # 1..9, or FINAL (10)
    due_on: date  # local date in the configured timezone
    amount_minor: int  # price to charge, minor units of the rebill's currency
    cumulative_reduction_minor: int  # ladder reduction so far, before the minimum price and the cap apply
    slot: Slot
    gateway_id: str | None  # the slot's configured gateway; None = the gateway that declined


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The calendar date of an aware `instant` in `tz`; raises ValueError for a naive datetime."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("local_date needs an aware datetime")
    return instant.astimezone(tz).date()


def next_attempt(
    profile: RecycleProfile,
    *,
    last_attempt: int,
    last_ran_on: date,
    original_minor: int,
    currency: str,
) -> PlannedAttempt | None:
    """The first non-skipped attempt after `last_attempt`, or None when the ladder is exhausted.

    `last_attempt` is 0 before any attempt ran, and `last_ran_on` is then the local decline date;
    otherwise it is the local date the previous attempt actually ran. Amounts are minor units of
    `currency`. Raises ValueError for a negative `days`, a negative original price, or a flat
    reduction or minimum price with more decimals than the currency has.
    """
    if original_minor < 0:
        raise ValueError(f"original price must not be negative, got {original_minor}")
    rules = sorted(profile.attempts, key=lambda rule: rule.attempt)
    upcoming = next((r for r in rules if r.attempt > last_attempt and not r.skip), None)
    if upcoming is None:
        return None
    if upcoming.days < 0:
        raise ValueError(f"attempt {upcoming.attempt} has negative days {upcoming.days}")

    due_on = last_ran_on + timedelta(days=upcoming.days)
    if profile.bill_on_saturday:
        due_on = _on_or_after_saturday(due_on)

    charged = [r for r in rules if r.attempt <= upcoming.attempt and not r.skip]
    reduction_minor = _cumulative_reduction_minor(profile.reduction_type, charged, original_minor, currency)
    slot = slot_of_attempt(upcoming.attempt)
    return PlannedAttempt(
        attempt=upcoming.attempt,
        due_on=due_on,
        amount_minor=_price_minor(profile, original_minor, reduction_minor, currency),
        cumulative_reduction_minor=reduction_minor,
        slot=slot,
        gateway_id=profile.gateway_for_slot(slot),
    )


def plan(
    profile: RecycleProfile, *, decline_on: date, original_minor: int, currency: str
) -> list[PlannedAttempt]:
    """The whole ladder from the local decline date, assuming each attempt runs on its due date."""
    planned: list[PlannedAttempt] = []
    last_attempt, last_ran_on = 0, decline_on
    while last_attempt < FINAL:
        step = next_attempt(
            profile,
            last_attempt=last_attempt,
            last_ran_on=last_ran_on,
            original_minor=original_minor,
            currency=currency,
        )
        if step is None:
            break
        planned.append(step)
        last_attempt, last_ran_on = step.attempt, step.due_on
    return planned


def is_due(planned: PlannedAttempt, today: date) -> bool:
    """True once the run's local date reaches `due_on`; a missed run catches up on a later day."""
    return today >= planned.due_on


def _on_or_after_saturday(day: date) -> date:
    return day + timedelta(days=(_SATURDAY - day.weekday()) % 7)


def _cumulative_reduction_minor(
    reduction_type: ReductionType, charged: list[AttemptRule], original_minor: int, currency: str
) -> int:
    total = sum((rule.reduction for rule in charged), Decimal(0))
    if reduction_type is ReductionType.PERCENT:
        # One rounding of the cumulative percent, so 5 % + 5 % is exactly 10 % of the original.
        exact = Decimal(original_minor) * total / 100
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return parse_minor(format(total, "f"), currency)


def _price_minor(profile: RecycleProfile, original_minor: int, reduction_minor: int, currency: str) -> int:
    minimum_minor = parse_minor(format(profile.minimum_price, "f"), currency)
    return min(max(original_minor - reduction_minor, minimum_minor, 0), original_minor)
