"""Recycle ladder arithmetic: dates, reductions, skips, minimum price, local dates and due boundaries."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from recycle_engine.domain.ladder import PlannedAttempt, is_due, local_date, next_attempt, plan
from recycle_engine.domain.profiles import FINAL, AttemptRule, RecycleProfile, ReductionType, Slot

NEW_YORK = ZoneInfo("America/New_York")


def an_attempt(attempt: int, days: int, reduction: str = "0", *, skip: bool = False) -> AttemptRule:
    return AttemptRule(attempt=attempt, days=days, reduction=Decimal(reduction), skip=skip)


def a_profile(**overrides: Any) -> RecycleProfile:
    values: dict[str, Any] = {
        "id": "default",
        "gateways": ("nmi-main",),
        "reduction_type": ReductionType.PERCENT,
        "minimum_price": Decimal("0"),
        "bill_on_saturday": False,
        "hold_recycle_price": False,
        "attempts": (an_attempt(1, 2),),
        "slots": {Slot.S4_6: None, Slot.S7_9: None, Slot.FINAL: None},
    }
    values.update(overrides)
    return RecycleProfile(**values)


def the_domain_example(*, bill_on_saturday: bool) -> RecycleProfile:
    """domain.md 3.3: percent, minimum 40.00, +2d 5 %, +3d 5 %, 3 skipped, 4 +4d 10 % on FlexFactor."""
    return a_profile(
        minimum_price=Decimal("40.00"),
        bill_on_saturday=bill_on_saturday,
        attempts=(
            an_attempt(1, 2, "5"),
            an_attempt(2, 3, "5"),
            an_attempt(3, 3, "0", skip=True),
            an_attempt(4, 4, "10"),
        ),
        slots={Slot.S4_6: "flexfactor-main", Slot.S7_9: None, Slot.FINAL: "flexfactor-main"},
    )


def a_planned_attempt(due_on: date) -> PlannedAttempt:
    return PlannedAttempt(
        attempt=1,
        due_on=due_on,
        amount_minor=4999,
        cumulative_reduction_minor=0,
        slot=Slot.BASIC,
        gateway_id=None,
    )


# --- the worked example of domain.md 3.3 -------------------------------------------------------


def test_given_the_domain_example_with_saturday_off_then_dates_prices_and_gateways_match_the_table() -> None:
    # given
    profile = the_domain_example(bill_on_saturday=False)

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=4999, currency="USD")

    # then
    assert [(p.attempt, p.due_on, p.amount_minor) for p in ladder] == [
        (1, date(2026, 6, 3), 4749),
        (2, date(2026, 6, 6), 4499),
        (4, date(2026, 6, 10), 4000),
    ]
    assert [p.cumulative_reduction_minor for p in ladder] == [250, 500, 1000]
    assert [(p.slot, p.gateway_id) for p in ladder] == [
        (Slot.BASIC, None),
        (Slot.BASIC, None),
        (Slot.S4_6, "flexfactor-main"),
    ]


def test_given_the_domain_example_with_saturday_on_then_every_attempt_lands_on_the_table_saturdays() -> None:
    # given
    profile = the_domain_example(bill_on_saturday=True)

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=4999, currency="USD")

    # then
    assert [(p.attempt, p.due_on, p.amount_minor) for p in ladder] == [
        (1, date(2026, 6, 6), 4749),
        (2, date(2026, 6, 13), 4499),
        (4, date(2026, 6, 20), 4000),
    ]


def test_given_attempt_2_ran_late_when_next_attempt_is_asked_then_attempt_4_counts_from_the_actual_run() -> (
    None
):
    # given
    profile = the_domain_example(bill_on_saturday=False)

    # when
    step = next_attempt(
        profile, last_attempt=2, last_ran_on=date(2026, 6, 8), original_minor=4999, currency="USD"
    )

    # then
    assert step is not None
    assert (step.attempt, step.due_on, step.amount_minor) == (4, date(2026, 6, 12), 4000)


# --- reductions, minimum and cap ----------------------------------------------------------------


def test_given_flat_reductions_then_amounts_add_up_in_major_units() -> None:
    # given
    profile = a_profile(
        reduction_type=ReductionType.FLAT,
        attempts=(an_attempt(1, 1, "2.50"), an_attempt(2, 1, "0.01"), an_attempt(3, 1, "1")),
    )

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=2999, currency="USD")

    # then
    assert [p.cumulative_reduction_minor for p in ladder] == [250, 251, 351]
    assert [p.amount_minor for p in ladder] == [2749, 2748, 2648]


def test_given_a_flat_reduction_finer_than_the_currency_then_it_is_refused() -> None:
    # given
    profile = a_profile(reduction_type=ReductionType.FLAT, attempts=(an_attempt(1, 1, "0.5"),))

    # when / then
    with pytest.raises(ValueError, match="decimal places"):
        next_attempt(
            profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=3000, currency="JPY"
        )


def test_given_cumulative_percent_then_it_is_rounded_once_half_up_on_the_original() -> None:
    # given: 2.5 % of 1.01 is 2.525 cents, twice is 5.05: one rounding gives 5, two would give 6
    profile = a_profile(attempts=(an_attempt(1, 1, "2.5"), an_attempt(2, 1, "2.5")))

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=101, currency="USD")

    # then
    assert [p.cumulative_reduction_minor for p in ladder] == [3, 5]
    assert [p.amount_minor for p in ladder] == [98, 96]


def test_given_a_reduction_below_the_minimum_then_the_minimum_price_is_charged() -> None:
    # given
    profile = a_profile(minimum_price=Decimal("25.00"), attempts=(an_attempt(1, 1, "50"),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=3000, currency="USD"
    )

    # then
    assert step is not None
    assert (step.cumulative_reduction_minor, step.amount_minor) == (1500, 2500)


def test_given_a_minimum_above_the_original_then_the_price_is_capped_at_the_original() -> None:
    # given
    profile = a_profile(minimum_price=Decimal("100.00"), attempts=(an_attempt(1, 1, "10"),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=2999, currency="USD"
    )

    # then
    assert step is not None
    assert step.amount_minor == 2999


def test_given_a_negative_reduction_then_the_price_never_rises_above_the_original() -> None:
    # given
    profile = a_profile(reduction_type=ReductionType.FLAT, attempts=(an_attempt(1, 1, "-5.00"),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=2999, currency="USD"
    )

    # then
    assert step is not None
    assert step.amount_minor == 2999


def test_given_reductions_beyond_the_whole_price_and_no_minimum_then_the_price_stops_at_zero() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(1, 1, "150"),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=2999, currency="USD"
    )

    # then
    assert step is not None
    assert step.amount_minor == 0


def test_given_a_zero_decimal_currency_then_percent_reductions_round_to_whole_yen() -> None:
    # given: 5 % of 3333 yen is 166.65, 10 % is 333.3
    profile = a_profile(
        minimum_price=Decimal("3000"),
        attempts=(an_attempt(1, 1, "5"), an_attempt(2, 1, "5"), an_attempt(3, 1, "5")),
    )

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=3333, currency="JPY")

    # then
    assert [p.cumulative_reduction_minor for p in ladder] == [167, 333, 500]
    assert [p.amount_minor for p in ladder] == [3166, 3000, 3000]


def test_given_a_zero_decimal_currency_then_flat_reductions_are_whole_yen() -> None:
    # given
    profile = a_profile(reduction_type=ReductionType.FLAT, attempts=(an_attempt(1, 1, "100"),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=3000, currency="JPY"
    )

    # then
    assert step is not None
    assert step.amount_minor == 2900


# --- skips, slots and the end of the ladder -------------------------------------------------------


def test_given_skipped_attempts_then_they_never_appear_and_add_no_days_or_reduction() -> None:
    # given
    profile = a_profile(
        attempts=(
            an_attempt(1, 2, "10", skip=True),
            an_attempt(2, 3, "5"),
            an_attempt(3, 7, "50", skip=True),
            an_attempt(4, 1, "5"),
        )
    )

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=10000, currency="USD")

    # then
    assert [(p.attempt, p.due_on, p.amount_minor) for p in ladder] == [
        (2, date(2026, 6, 4), 9500),
        (4, date(2026, 6, 5), 9000),
    ]


def test_given_every_slot_configured_then_attempts_1_3_stay_on_the_declining_gateway() -> None:
    # given
    profile = a_profile(
        attempts=tuple(an_attempt(n, 1) for n in (*range(1, 10), FINAL)),
        slots={Slot.S4_6: "ff-a", Slot.S7_9: "ff-b", Slot.FINAL: "ff-c"},
    )

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=1000, currency="USD")

    # then
    assert [(p.attempt, p.slot, p.gateway_id) for p in ladder] == [
        (1, Slot.BASIC, None),
        (2, Slot.BASIC, None),
        (3, Slot.BASIC, None),
        (4, Slot.S4_6, "ff-a"),
        (5, Slot.S4_6, "ff-a"),
        (6, Slot.S4_6, "ff-a"),
        (7, Slot.S7_9, "ff-b"),
        (8, Slot.S7_9, "ff-b"),
        (9, Slot.S7_9, "ff-b"),
        (FINAL, Slot.FINAL, "ff-c"),
    ]


def test_given_a_slot_without_gateway_then_its_attempts_run_on_the_declining_gateway() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(7, 1),), slots={Slot.S4_6: "ff-a", Slot.S7_9: None})

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=1000, currency="USD"
    )

    # then
    assert step is not None
    assert (step.slot, step.gateway_id) == (Slot.S7_9, None)


def test_given_the_final_attempt_ran_then_the_ladder_is_exhausted() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(1, 1), an_attempt(FINAL, 5)))

    # when
    step = next_attempt(
        profile, last_attempt=FINAL, last_ran_on=date(2026, 6, 1), original_minor=1000, currency="USD"
    )

    # then
    assert step is None


def test_given_only_skipped_attempts_remain_then_the_ladder_is_exhausted() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(1, 1), an_attempt(2, 1, skip=True), an_attempt(3, 1, skip=True)))

    # when
    step = next_attempt(
        profile, last_attempt=1, last_ran_on=date(2026, 6, 2), original_minor=1000, currency="USD"
    )

    # then
    assert step is None


def test_given_a_profile_without_attempts_then_the_plan_is_empty() -> None:
    # given
    profile = a_profile(attempts=())

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=1000, currency="USD")

    # then
    assert ladder == []


def test_given_attempts_listed_out_of_order_then_they_are_planned_by_number() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(FINAL, 5), an_attempt(2, 3), an_attempt(1, 1)))

    # when
    ladder = plan(profile, decline_on=date(2026, 6, 1), original_minor=1000, currency="USD")

    # then
    assert [(p.attempt, p.due_on) for p in ladder] == [
        (1, date(2026, 6, 2)),
        (2, date(2026, 6, 5)),
        (FINAL, date(2026, 6, 10)),
    ]


def test_given_negative_days_then_the_attempt_is_refused() -> None:
    # given
    profile = a_profile(attempts=(an_attempt(1, -1),))

    # when / then
    with pytest.raises(ValueError, match="negative days"):
        next_attempt(
            profile, last_attempt=0, last_ran_on=date(2026, 6, 1), original_minor=1000, currency="USD"
        )


# --- calendar edges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decline_on", "days", "due_on"),
    [
        (date(2026, 1, 30), 2, date(2026, 2, 1)),
        (date(2026, 2, 27), 2, date(2026, 3, 1)),
        (date(2026, 12, 31), 1, date(2027, 1, 1)),
        (date(2028, 2, 28), 1, date(2028, 2, 29)),
        (date(2028, 2, 29), 1, date(2028, 3, 1)),
        (date(2028, 2, 27), 3, date(2028, 3, 1)),
    ],
)
def test_given_month_and_year_ends_then_due_dates_follow_the_calendar(
    decline_on: date, days: int, due_on: date
) -> None:
    # given
    profile = a_profile(attempts=(an_attempt(1, days),))

    # when
    step = next_attempt(profile, last_attempt=0, last_ran_on=decline_on, original_minor=1000, currency="USD")

    # then
    assert step is not None
    assert step.due_on == due_on


def test_given_saturday_billing_on_29_february_2028_then_the_attempt_moves_to_4_march() -> None:
    # given: 2028-02-29 is a Tuesday
    profile = a_profile(bill_on_saturday=True, attempts=(an_attempt(1, 1),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2028, 2, 28), original_minor=1000, currency="USD"
    )

    # then
    assert step is not None
    assert step.due_on == date(2028, 3, 4)


def test_given_saturday_billing_and_a_computed_saturday_then_the_date_stays() -> None:
    # given: 2026-06-04 is a Thursday, +2 days is Saturday 2026-06-06
    profile = a_profile(bill_on_saturday=True, attempts=(an_attempt(1, 2),))

    # when
    step = next_attempt(
        profile, last_attempt=0, last_ran_on=date(2026, 6, 4), original_minor=1000, currency="USD"
    )

    # then
    assert step is not None
    assert step.due_on == date(2026, 6, 6)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        # spring forward: the day starts at 05:00 UTC (EST) and ends at 04:00 UTC (EDT), 23 hours later;
        # 06:59 UTC is 01:59 EST and 07:00 UTC is 03:00 EDT
        (datetime(2025, 3, 9, 4, 59, tzinfo=UTC), date(2025, 3, 8)),
        (datetime(2025, 3, 9, 5, 0, tzinfo=UTC), date(2025, 3, 9)),
        (datetime(2025, 3, 9, 6, 59, tzinfo=UTC), date(2025, 3, 9)),
        (datetime(2025, 3, 9, 7, 0, tzinfo=UTC), date(2025, 3, 9)),
        (datetime(2025, 3, 10, 3, 59, tzinfo=UTC), date(2025, 3, 9)),
        (datetime(2025, 3, 10, 4, 0, tzinfo=UTC), date(2025, 3, 10)),
        # fall back: the day starts at 04:00 UTC (EDT) and ends at 05:00 UTC (EST), 25 hours later;
        # 05:30 and 06:30 UTC are both 01:30 local
        (datetime(2025, 11, 2, 3, 59, tzinfo=UTC), date(2025, 11, 1)),
        (datetime(2025, 11, 2, 4, 0, tzinfo=UTC), date(2025, 11, 2)),
        (datetime(2025, 11, 2, 5, 30, tzinfo=UTC), date(2025, 11, 2)),
        (datetime(2025, 11, 2, 6, 30, tzinfo=UTC), date(2025, 11, 2)),
        (datetime(2025, 11, 3, 4, 59, tzinfo=UTC), date(2025, 11, 2)),
        (datetime(2025, 11, 3, 5, 0, tzinfo=UTC), date(2025, 11, 3)),
    ],
)
def test_given_an_instant_around_a_dst_change_then_local_date_is_the_new_york_calendar_date(
    instant: datetime, expected: date
) -> None:
    # when
    result = local_date(instant, NEW_YORK)

    # then
    assert result == expected


def test_given_a_02_30_new_york_run_on_both_dst_days_then_local_date_is_that_day() -> None:
    # given: 02:30 does not exist on 2025-03-09 (zoneinfo reads it as 03:30 EDT), and happens once on 11-02
    spring = datetime(2025, 3, 9, 2, 30, tzinfo=NEW_YORK)
    autumn = datetime(2025, 11, 2, 2, 30, tzinfo=NEW_YORK)

    # when
    dates = [local_date(spring.astimezone(UTC), NEW_YORK), local_date(autumn.astimezone(UTC), NEW_YORK)]

    # then
    assert dates == [date(2025, 3, 9), date(2025, 11, 2)]


def test_given_an_instant_in_another_offset_then_local_date_converts_it_first() -> None:
    # given: 23:30 in UTC-10 is already the next day in New York
    instant = datetime(2026, 6, 1, 23, 30, tzinfo=ZoneInfo("Pacific/Honolulu"))

    # when
    result = local_date(instant, NEW_YORK)

    # then
    assert result == date(2026, 6, 2)


def test_given_a_naive_datetime_then_local_date_refuses_it() -> None:
    # given
    naive = datetime(2026, 6, 1, 12, 0)

    # when / then
    with pytest.raises(ValueError, match="aware"):
        local_date(naive, NEW_YORK)


# --- is_due boundaries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today_offset_days", "due"),
    [(-1, False), (0, True), (1, True), (30, True)],
    ids=["day-before-not-due", "the-day-is-due", "day-after-catches-up", "month-later-catches-up"],
)
def test_given_a_due_date_when_the_run_day_is_near_it_then_exactly_the_due_day_and_later_are_due(
    today_offset_days: int, due: bool
) -> None:
    # given
    planned = a_planned_attempt(date(2026, 6, 3))

    # when
    result = is_due(planned, date(2026, 6, 3) + timedelta(days=today_offset_days))

    # then
    assert result is due


def test_given_a_planned_attempt_then_it_is_immutable() -> None:
    # given
    planned = a_planned_attempt(date(2026, 6, 3))

    # when / then
    with pytest.raises(FrozenInstanceError):
        planned.due_on = date(2026, 6, 5)  # type: ignore[misc]
