"""Schedule versions: derived from the ladder's content only, stable across spellings, readable back."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

from recycle_engine.domain.ladder import plan
from recycle_engine.domain.profile_versions import (
    VERSION_CHARS,
    profile_content,
    profile_from_content,
    profile_version,
)
from recycle_engine.domain.profiles import FINAL, AttemptRule, RecycleProfile, ReductionType, Slot


def a_profile(**overrides: object) -> RecycleProfile:
    profile = RecycleProfile(
        id="default",
        gateways=("nmi",),
        reduction_type=ReductionType.PERCENT,
        minimum_price=Decimal("5.00"),
        bill_on_saturday=False,
        hold_recycle_price=False,
        attempts=(
            AttemptRule(1, 1, Decimal("0")),
            AttemptRule(2, 1, Decimal("5")),
            AttemptRule(4, 2, Decimal("5")),
            AttemptRule(FINAL, 3, Decimal("10")),
        ),
        slots={Slot.S4_6: "ff", Slot.S7_9: None, Slot.FINAL: "ff"},
    )
    return replace(profile, **overrides)  # type: ignore[arg-type]


def test_given_the_same_ladder_written_differently_then_the_version_is_the_same() -> None:
    # given: "5" and "5.00" are one minimum; covered gateways and holdout are not the schedule
    spelled = a_profile(minimum_price=Decimal("5"), gateways=("other",), holdout_percent=Decimal(50))
    # when / then
    assert profile_version(spelled) == profile_version(a_profile())
    assert len(profile_version(spelled)) == VERSION_CHARS


def test_given_a_changed_day_slot_or_flag_then_the_version_changes() -> None:
    base = profile_version(a_profile())
    longer = a_profile(attempts=(AttemptRule(1, 2, Decimal("0")),))
    assert profile_version(longer) != base
    assert profile_version(a_profile(slots={Slot.S4_6: None, Slot.S7_9: None, Slot.FINAL: "ff"})) != base
    assert profile_version(a_profile(bill_on_saturday=True)) != base
    assert profile_version(a_profile(hold_recycle_price=True)) != base


def test_given_stored_content_when_read_back_then_it_plans_the_same_ladder() -> None:
    # given
    profile = a_profile()
    # when
    back = profile_from_content("default", profile_content(profile), gateways=("nmi",))
    # then
    assert profile_version(back) == profile_version(profile)
    on = date(2026, 6, 1)
    assert plan(back, decline_on=on, original_minor=4999, currency="USD") == plan(
        profile, decline_on=on, original_minor=4999, currency="USD"
    )
