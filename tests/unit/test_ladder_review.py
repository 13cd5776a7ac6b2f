"""A recycle profile as finance reads it: day, price and place per attempt, and warnings for what is surely not meant."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from recycle_engine.domain.ladder import plan
from recycle_engine.domain.ladder_review import diff_ladders, ladder_warnings, review_ladder
from recycle_engine.domain.profiles import FINAL, AttemptRule, RecycleProfile, ReductionType, Slot

FF = frozenset({"ff-main"})
DECLINED_ON = date(2026, 6, 1)  # a Monday


def a_profile(
    *attempts: AttemptRule,
    slots: dict[Slot, str | None] | None = None,
    reduction_type: ReductionType = ReductionType.PERCENT,
    minimum: str = "5.00",
    holdout: str = "0",
) -> RecycleProfile:
    return RecycleProfile(
        id="default",
        gateways=("nmi-main",),
        reduction_type=reduction_type,
        minimum_price=Decimal(minimum),
        bill_on_saturday=False,
        hold_recycle_price=False,
        attempts=attempts,
        slots={Slot.S4_6: None, Slot.S7_9: None, Slot.FINAL: None, **(slots or {})},
        holdout_percent=Decimal(holdout),
    )


def rule(attempt: int, days: int, reduction: str = "0", *, skip: bool = False) -> AttemptRule:
    return AttemptRule(attempt, days, Decimal(reduction), skip)


SHIPPED_DEFAULT = a_profile(
    rule(1, 2),
    rule(2, 3, "5"),
    rule(3, 3, skip=True),
    rule(4, 4),
    rule(5, 3, "5"),
    rule(FINAL, 5, "10"),
    slots={Slot.S4_6: "ff-main", Slot.FINAL: "ff-main"},
)


def test_given_a_profile_when_reviewed_then_each_attempt_shows_day_price_and_place_as_the_engine_plans() -> (
    None
):
    # when
    rows = review_ladder(
        SHIPPED_DEFAULT, decline_on=DECLINED_ON, sample_minor=4999, currency="USD", flexfactor_gateways=FF
    )

    # then: "what does attempt 5 charge, when, and where?"
    by_label = {row.label: row for row in rows}
    five = by_label["5"]
    assert (five.day, five.amount_minor, five.gateway_id, five.is_flexfactor) == (12, 4499, "ff-main", True)
    assert five.after_handoff == 4
    assert by_label["3"].skipped
    assert by_label["3"].day is None
    assert by_label["4"].after_handoff is None
    assert by_label["4"].is_flexfactor
    # the same numbers as the engine's own plan, never a second implementation
    planned = plan(SHIPPED_DEFAULT, decline_on=DECLINED_ON, original_minor=4999, currency="USD")
    assert [(p.attempt, p.amount_minor, p.gateway_id) for p in planned] == [
        (r.attempt, r.amount_minor, r.gateway_id) for r in rows if not r.skipped
    ]


def test_given_a_price_below_the_minimum_when_reviewed_then_the_minimum_price_sets_it() -> None:
    # given
    profile = a_profile(rule(1, 1, "50"), rule(2, 1, "40"), minimum="9.00")

    # when
    rows = review_ladder(
        profile, decline_on=DECLINED_ON, sample_minor=2000, currency="EUR", flexfactor_gateways=FF
    )

    # then
    assert [(r.amount_minor, r.at_minimum_price) for r in rows] == [(1000, False), (900, True)]
    assert rows[1].reduction == Decimal("90")


def test_given_flexfactor_at_attempt_4_and_a_7_9_slot_when_checked_then_the_slot_is_unreachable() -> None:
    # given
    profile = a_profile(
        rule(1, 2), rule(4, 4), rule(7, 3), rule(8, 3), slots={Slot.S4_6: "ff-main", Slot.S7_9: "nmi-backup"}
    )

    # when
    warnings = ladder_warnings(profile, FF)

    # then
    assert [w.key for w in warnings] == ["slots.7-9"]
    assert warnings[0].message == (
        "attempts 7, 8 (slot 7-9) never run as configured: FlexFactor takes attempt 4, "
        "which ends the ladder; it runs only for a hand-off FlexFactor refuses"
    )


def test_given_a_holdout_when_checked_then_the_unreachable_warning_names_it() -> None:
    # given
    profile = a_profile(rule(4, 4), rule(FINAL, 3), slots={Slot.S4_6: "ff-main"}, holdout="10")

    # when
    warnings = ladder_warnings(profile, FF)

    # then
    assert warnings[0].message.endswith("and for the 10 % holdout")


def test_given_a_slot_gateway_without_attempts_when_checked_then_it_never_runs() -> None:
    # given
    profile = a_profile(rule(1, 2), rule(FINAL, 3), slots={Slot.S7_9: "nmi-backup"})

    # when
    warnings = ladder_warnings(profile, FF)

    # then
    assert [w.message for w in warnings] == [
        "slot 7-9 names 'nmi-backup', but the ladder charges no attempt 7, 8, 9: it never runs"
    ]


def test_given_percent_reductions_adding_to_105_when_checked_then_it_warns_once_at_the_attempt() -> None:
    # given
    profile = a_profile(rule(1, 1, "50"), rule(2, 1, "55"), rule(3, 1, "10"), minimum="0")

    # when
    warnings = ladder_warnings(profile, FF)

    # then
    assert [(w.key, w.message) for w in warnings] == [
        (
            "attempts",
            "reductions add up to 105 % by attempt 2: from there every attempt charges 0 (nothing is charged)",
        )
    ]


def test_given_reductions_of_exactly_100_percent_skipped_ones_aside_when_checked_then_it_warns() -> None:
    # given: the skipped 20 % never counts
    at_100 = a_profile(rule(1, 1, "60"), rule(2, 1, "20", skip=True), rule(3, 1, "40"))
    below = a_profile(rule(1, 1, "60"), rule(2, 1, "20", skip=True), rule(3, 1, "39.99"))

    # when / then
    assert [w.message for w in ladder_warnings(at_100, FF)] == [
        "reductions add up to 100 % by attempt 3: from there every attempt charges the minimum price 5.00"
    ]
    assert ladder_warnings(below, FF) == []


def test_given_a_ladder_edit_when_diffed_then_each_changed_attempt_is_one_line() -> None:
    # given
    old = a_profile(rule(1, 2), rule(4, 4, "5"), slots={Slot.S4_6: "ff-main"})
    new = a_profile(rule(1, 3), rule(4, 4, "5"), rule(FINAL, 5, "10"))

    def rows(profile: RecycleProfile) -> list:  # type: ignore[type-arg]
        return review_ladder(
            profile, decline_on=DECLINED_ON, sample_minor=4999, currency="USD", flexfactor_gateways=FF
        )

    # when
    lines = diff_ladders(rows(old), rows(new), "USD")

    # then
    assert lines == [
        "attempt 1: day 2 -> 3",
        "attempt 4: day 6 -> 7; where FlexFactor ff-main -> declining gateway",
        "attempt final: not in the ladder -> day 12, price 42.49 USD, where declining gateway",
    ]
