"""A recycle profile as finance reads it: each attempt's day, price and place, and the settings surely not meant.

Built on `ladder.plan`, the arithmetic the engine runs, so what `config check` shows is what submit does.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from recycle_engine.domain.ladder import plan
from recycle_engine.domain.profiles import (
    FINAL,
    RecycleProfile,
    ReductionType,
    Slot,
    attempt_label,
    slot_of_attempt,
)
from recycle_engine.money import Money, parse_minor

__all__ = ["LadderWarning", "ReviewedAttempt", "diff_ladders", "ladder_warnings", "review_ladder"]

_SLOT_ATTEMPTS = {Slot.S4_6: (4, 5, 6), Slot.S7_9: (7, 8, 9), Slot.FINAL: (FINAL,)}


@dataclass(frozen=True)
class ReviewedAttempt:
    """One attempt of a profile for a sample price; a skipped attempt has no day, price or place."""

    attempt: int  # 1..9, or FINAL (10)
    skipped: bool
    day: int | None  # days after the decline it runs, if every attempt before it runs on its day
    amount_minor: int | None  # what it charges for the sample price, minimum price applied
    reduction: Decimal | None  # the cumulative reduction as written: percent, or major units off
    reduction_minor: int | None  # the cumulative reduction in minor units, before the minimum price
    at_minimum_price: bool  # the minimum price, not the reductions, sets the price
    slot: Slot
    gateway_id: str | None  # None: the gateway that declined
    is_flexfactor: bool  # handed to FlexFactor, which ends the ladder
    after_handoff: int | None  # an earlier attempt FlexFactor takes: this one runs only if it refuses

    @property
    def label(self) -> str:
        return attempt_label(self.attempt)


@dataclass(frozen=True)
class LadderWarning:
    """A valid setting that is almost certainly not meant; `key` is below the profile (e.g. slots.7-9)."""

    key: str
    message: str


def review_ladder(
    profile: RecycleProfile,
    *,
    decline_on: date,
    sample_minor: int,
    currency: str,
    flexfactor_gateways: Collection[str],
) -> list[ReviewedAttempt]:
    """Every attempt of `profile` in order, planned from a decline on `decline_on` (local date) at
    `sample_minor` minor units of `currency`; raises ValueError as `ladder.next_attempt` does."""
    planned = {
        step.attempt: step
        for step in plan(profile, decline_on=decline_on, original_minor=sample_minor, currency=currency)
    }
    minimum_minor = parse_minor(format(profile.minimum_price, "f"), currency)
    rows: list[ReviewedAttempt] = []
    handoff: int | None = None
    reduction = Decimal(0)
    for rule in sorted(profile.attempts, key=lambda r: r.attempt):
        slot = slot_of_attempt(rule.attempt)
        step = planned.get(rule.attempt)
        if step is None:
            rows.append(
                ReviewedAttempt(rule.attempt, True, None, None, None, None, False, slot, None, False, None)
            )
            continue
        reduction += rule.reduction
        is_flexfactor = step.gateway_id is not None and step.gateway_id in flexfactor_gateways
        rows.append(
            ReviewedAttempt(
                attempt=step.attempt,
                skipped=False,
                day=(step.due_on - decline_on).days,
                amount_minor=step.amount_minor,
                reduction=reduction,
                reduction_minor=step.cumulative_reduction_minor,
                at_minimum_price=step.amount_minor == minimum_minor
                and sample_minor - step.cumulative_reduction_minor < minimum_minor,
                slot=slot,
                gateway_id=step.gateway_id,
                is_flexfactor=is_flexfactor,
                after_handoff=handoff,
            )
        )
        if is_flexfactor and handoff is None:
            handoff = step.attempt
    return rows


def ladder_warnings(profile: RecycleProfile, flexfactor_gateways: Collection[str]) -> list[LadderWarning]:
    """Settings that are valid but certainly not meant: attempts or slots that never run as written,
    and percent reductions that add up to 100 % or more."""
    warnings: list[LadderWarning] = []
    charged = [r for r in sorted(profile.attempts, key=lambda r: r.attempt) if not r.skip]
    handoff = next(
        (
            r.attempt
            for r in charged
            if profile.gateway_for_slot(slot_of_attempt(r.attempt)) in flexfactor_gateways
        ),
        None,
    )
    if handoff is not None:
        later: dict[Slot, list[int]] = {}
        for rule in charged:
            if rule.attempt > handoff:
                later.setdefault(slot_of_attempt(rule.attempt), []).append(rule.attempt)
        unless = "it runs only for a hand-off FlexFactor refuses"
        if profile.holdout_percent > 0:
            unless += f" and for the {profile.holdout_percent} % holdout"
        for slot, attempts in later.items():
            names = ", ".join(attempt_label(a) for a in attempts)
            what = (
                f"attempt {names} (slot {slot.value}) never runs"
                if len(attempts) == 1
                else (f"attempts {names} (slot {slot.value}) never run")
            )
            warnings.append(
                LadderWarning(
                    f"slots.{slot.value}",
                    f"{what} as configured: FlexFactor takes attempt {attempt_label(handoff)}, "
                    f"which ends the ladder; {unless}",
                )
            )
    for slot, numbers in _SLOT_ATTEMPTS.items():
        gateway = profile.slots.get(slot)
        if gateway is not None and not any(r.attempt in numbers for r in charged):
            ladder = ", ".join(attempt_label(n) for n in numbers)
            warnings.append(
                LadderWarning(
                    f"slots.{slot.value}",
                    f"slot {slot.value} names {gateway!r}, but the ladder charges no attempt {ladder}: "
                    "it never runs",
                )
            )
    if profile.reduction_type is ReductionType.PERCENT:
        total = Decimal(0)
        for rule in charged:
            total += rule.reduction
            if total >= 100:
                floor = (
                    f"the minimum price {profile.minimum_price}"
                    if profile.minimum_price > 0
                    else "0 (nothing is charged)"
                )
                warnings.append(
                    LadderWarning(
                        "attempts",
                        f"reductions add up to {total.normalize():f} % by attempt {attempt_label(rule.attempt)}: "
                        f"from there every attempt charges {floor}",
                    )
                )
                break
    return warnings


def diff_ladders(old: Sequence[ReviewedAttempt], new: Sequence[ReviewedAttempt], currency: str) -> list[str]:
    """What changes for a subscription moving from ladder `old` to `new`, one line per attempt that differs."""

    def shown(row: ReviewedAttempt | None) -> dict[str, str]:
        if row is None:
            return {"": "not in the ladder"}
        if row.skipped:
            return {"": "skipped"}
        place = (
            f"FlexFactor {row.gateway_id}" if row.is_flexfactor else (row.gateway_id or "declining gateway")
        )
        return {
            "day": str(row.day),
            "price": Money(row.amount_minor or 0, currency).format(),
            "where": place,
        }

    before = {row.attempt: row for row in old}
    after = {row.attempt: row for row in new}
    lines = []
    for attempt in sorted(before.keys() | after.keys()):
        was, now = shown(before.get(attempt)), shown(after.get(attempt))
        if was == now:
            continue
        if "" in was or "" in now:
            changes = f"{_flat(was)} -> {_flat(now)}"
        else:
            changes = "; ".join(f"{key} {was[key]} -> {now[key]}" for key in was if was[key] != now[key])
        lines.append(f"attempt {attempt_label(attempt)}: {changes}")
    return lines


def _flat(shown: dict[str, str]) -> str:
    return shown[""] if "" in shown else ", ".join(f"{key} {value}" for key, value in shown.items())
