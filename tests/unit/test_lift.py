"""The holdout comparison on literal data: group rates, the lift, its 95 % interval and the sample sizes."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recycle_engine.reports.lift import difference_interval, lift_summary

COLUMNS = ["arm", "currency", "outcome", "n", "assigned_minor", "recovered_minor"]


def facts(*rows: tuple[str, str, str, int, int, int]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def test_given_60_of_100_against_40_of_100_settled_then_the_lift_is_20_points_with_its_wald_interval() -> (
    None
):
    # given: FlexFactor group 60 recovered, 40 lost, 5 pending; holdout 40 recovered, 60 lost
    data = facts(
        ("FLEXFACTOR", "USD", "recovered", 60, 6_000, 5_400),
        ("FLEXFACTOR", "USD", "lost", 40, 4_000, 0),
        ("FLEXFACTOR", "USD", "pending", 5, 500, 0),
        ("HOLDOUT", "USD", "recovered", 40, 4_000, 4_000),
        ("HOLDOUT", "USD", "lost", 60, 6_000, 0),
    )
    # when
    result = lift_summary(data)
    # then: se = sqrt(.6*.4/100 + .4*.6/100) = 0.069282; 1.959964 * se = 0.135792
    assert result.lift == pytest.approx(0.20)
    assert result.low == pytest.approx(0.064210, abs=1e-6)
    assert result.high == pytest.approx(0.335790, abs=1e-6)
    assert (result.n_flexfactor, result.n_holdout) == (100, 100)
    groups = result.groups.set_index("arm")
    assert groups.loc["FLEXFACTOR", "assigned"] == 105
    assert groups.loc["FLEXFACTOR", "pending"] == 5
    assert groups.loc["FLEXFACTOR", "rate_settled"] == pytest.approx(0.60)
    assert groups.loc["FLEXFACTOR", "rate_to_date"] == pytest.approx(60 / 105)
    assert groups.loc["HOLDOUT", "rate_settled"] == pytest.approx(0.40)
    usd = result.amounts.set_index("currency").loc["USD"]
    # rate by amount, as everywhere in the report: recovered ÷ submitted, pending included
    assert (usd["submitted_minor_flexfactor"], usd["recovered_minor_flexfactor"]) == (10_500, 5_400)
    assert (usd["submitted_minor_holdout"], usd["recovered_minor_holdout"]) == (10_000, 4_000)
    assert usd["difference"] == pytest.approx(5_400 / 10_500 - 0.40)


def test_given_two_currencies_then_counts_add_up_and_amounts_stay_apart() -> None:
    data = facts(
        ("FLEXFACTOR", "USD", "recovered", 1, 1_000, 1_000),
        ("FLEXFACTOR", "EUR", "lost", 1, 2_000, 0),
        ("HOLDOUT", "EUR", "recovered", 1, 3_000, 3_000),
    )
    result = lift_summary(data)
    assert (result.n_flexfactor, result.n_holdout) == (2, 1)
    assert list(result.amounts["currency"]) == ["EUR", "USD"]
    eur = result.amounts.set_index("currency").loc["EUR"]
    assert (eur["submitted_minor_flexfactor"], eur["submitted_minor_holdout"]) == (2_000, 3_000)


def test_given_no_holdout_group_then_the_lift_is_undefined_not_zero() -> None:
    result = lift_summary(facts(("FLEXFACTOR", "USD", "recovered", 3, 300, 300)))
    assert math.isnan(result.lift)
    assert math.isnan(result.low)
    assert math.isnan(result.high)
    assert result.n_holdout == 0


def test_given_no_data_then_both_groups_are_empty() -> None:
    result = lift_summary(pd.DataFrame(columns=COLUMNS))
    assert list(result.groups["assigned"]) == [0, 0]
    assert result.amounts.empty


def test_given_equal_proportions_then_the_interval_is_symmetric_around_zero() -> None:
    diff, low, high = difference_interval(30, 100, 30, 100)
    assert diff == 0
    assert low == pytest.approx(-high)
