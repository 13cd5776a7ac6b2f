"""Properties of the recycle ladder over generated profiles, prices and decline dates."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from recycle_engine.domain.ladder import next_attempt, plan
from recycle_engine.domain.profiles import FINAL, AttemptRule, RecycleProfile, ReductionType, Slot
from recycle_engine.money import parse_minor

ATTEMPT_NUMBERS = (*range(1, 10), FINAL)
SATURDAY = 5

decline_dates = st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31))
original_prices = st.integers(min_value=0, max_value=1_000_000)  # minor units of USD


@st.composite
def attempt_rules(
    draw: st.DrawFn, *, reduction_type: ReductionType, min_days: int
) -> tuple[AttemptRule, ...]:
    numbers = draw(st.lists(st.sampled_from(ATTEMPT_NUMBERS), unique=True, max_size=len(ATTEMPT_NUMBERS)))
    if reduction_type is ReductionType.PERCENT:
        reductions = st.decimals(min_value=0, max_value=40, places=2)
    else:
        reductions = st.decimals(min_value=0, max_value=50, places=2)
    return tuple(
        AttemptRule(
            attempt=n,
            days=draw(st.integers(min_value=min_days, max_value=30)),
            reduction=draw(reductions),
            skip=draw(st.booleans()),
        )
        for n in sorted(numbers)
    )


@st.composite
def profiles(
    draw: st.DrawFn,
    *,
    min_days: int = 1,
    reduction_type: ReductionType | None = None,
    bill_on_saturday: bool | None = None,
) -> RecycleProfile:
    kind = reduction_type or draw(st.sampled_from(ReductionType))
    gateway = st.none() | st.sampled_from(["ff-a", "ff-b"])
    return RecycleProfile(
        id="generated",
        gateways=("nmi-main",),
        reduction_type=kind,
        minimum_price=draw(st.decimals(min_value=0, max_value=10_000, places=2)),
        bill_on_saturday=draw(st.booleans()) if bill_on_saturday is None else bill_on_saturday,
        hold_recycle_price=False,
        attempts=draw(attempt_rules(reduction_type=kind, min_days=min_days)),
        slots={Slot.S4_6: draw(gateway), Slot.S7_9: draw(gateway), Slot.FINAL: draw(gateway)},
    )


@given(profile=profiles(), decline_on=decline_dates, original=original_prices)
def test_given_days_of_at_least_one_then_due_dates_strictly_increase_after_the_decline(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    dates = [decline_on, *(p.due_on for p in ladder)]
    assert all(earlier < later for earlier, later in zip(dates, dates[1:], strict=False))


@given(profile=profiles(min_days=0), decline_on=decline_dates, original=original_prices)
def test_given_days_of_zero_allowed_then_due_dates_never_go_backwards(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    dates = [decline_on, *(p.due_on for p in ladder)]
    assert all(earlier <= later for earlier, later in zip(dates, dates[1:], strict=False))


@given(profile=profiles(min_days=0), decline_on=decline_dates, original=original_prices)
def test_given_any_profile_then_exactly_the_non_skipped_attempts_are_planned_in_order(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    assert [p.attempt for p in ladder] == [rule.attempt for rule in profile.attempts if not rule.skip]


@given(profile=profiles(min_days=0), decline_on=decline_dates, original=original_prices)
def test_given_any_profile_then_amounts_stay_between_the_minimum_and_the_original(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # given
    minimum = parse_minor(format(profile.minimum_price, "f"), "USD")

    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    for planned in ladder:
        assert min(minimum, original) <= planned.amount_minor <= original


@given(profile=profiles(min_days=0), decline_on=decline_dates, original=original_prices)
def test_given_non_negative_reductions_then_amounts_never_rise_as_the_cumulative_reduction_grows(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    pairs = list(zip(ladder, ladder[1:], strict=False))
    assert all(a.cumulative_reduction_minor <= b.cumulative_reduction_minor for a, b in pairs)
    assert all(a.amount_minor >= b.amount_minor for a, b in pairs)


@given(
    profile=profiles(reduction_type=ReductionType.PERCENT, min_days=0),
    decline_on=decline_dates,
    original=original_prices,
)
def test_given_percent_reductions_then_the_cumulative_reduction_is_one_half_up_rounding_of_the_sum(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    charged = [rule for rule in profile.attempts if not rule.skip]
    for planned, upto in zip(ladder, range(1, len(charged) + 1), strict=True):
        percent = sum((rule.reduction for rule in charged[:upto]), Decimal(0))
        exact = Decimal(original) * percent / 100
        assert abs(Decimal(planned.cumulative_reduction_minor) - exact) <= Decimal("0.5")


@given(
    profile=profiles(bill_on_saturday=True, min_days=0), decline_on=decline_dates, original=original_prices
)
def test_given_bill_on_saturday_then_every_attempt_lands_on_a_saturday_within_a_week_of_its_date(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    previous = decline_on
    by_number = {rule.attempt: rule for rule in profile.attempts}
    for planned in ladder:
        computed = (planned.due_on - previous).days - by_number[planned.attempt].days
        assert planned.due_on.weekday() == SATURDAY
        assert 0 <= computed <= 6
        previous = planned.due_on


@given(profile=profiles(min_days=0), decline_on=decline_dates, original=original_prices)
def test_given_any_profile_then_basic_slot_attempts_never_name_a_gateway(
    profile: RecycleProfile, decline_on: date, original: int
) -> None:
    # when
    ladder = plan(profile, decline_on=decline_on, original_minor=original, currency="USD")

    # then
    for planned in ladder:
        if planned.attempt <= 3:
            assert (planned.slot, planned.gateway_id) == (Slot.BASIC, None)
        else:
            assert planned.gateway_id == profile.gateway_for_slot(planned.slot)


@given(
    profile=profiles(min_days=0),
    last_ran_on=decline_dates,
    original=original_prices,
    last_attempt=st.sampled_from((0, *ATTEMPT_NUMBERS)),
)
def test_given_any_point_in_the_ladder_then_next_attempt_is_the_first_non_skipped_later_one(
    profile: RecycleProfile, last_ran_on: date, original: int, last_attempt: int
) -> None:
    # when
    step = next_attempt(
        profile, last_attempt=last_attempt, last_ran_on=last_ran_on, original_minor=original, currency="USD"
    )

    # then
    later = [rule.attempt for rule in profile.attempts if rule.attempt > last_attempt and not rule.skip]
    assert (step.attempt if step else None) == (later[0] if later else None)
    if step is not None:
        assert step.due_on >= last_ran_on
