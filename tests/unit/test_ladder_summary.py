"""The ten-second summary and the whole ladder from literal frames: periods, comparisons, order, shares."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from recycle_engine.reports.ladder import (
    ladder_rows,
    method_rows,
    periods_for,
    recovery_summary,
    summary_headline,
    summary_text,
)

COLUMNS = ["day", "method", "attempt", "currency", "n", "amount_minor"]
OPEN_COLUMNS = ["age_days", "state", "currency", "n", "amount_minor"]


def recoveries(*rows: tuple[str, str, float | None, str, int, int]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def open_handoffs(*rows: tuple[int, str, str, int, int]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=OPEN_COLUMNS)


@pytest.mark.parametrize(
    ("day", "prev_month"),
    [
        (date(2026, 6, 12), (date(2026, 5, 1), date(2026, 5, 12))),
        (date(2026, 3, 31), (date(2026, 2, 1), date(2026, 2, 28))),  # cut at February's end
        (date(2024, 3, 30), (date(2024, 2, 1), date(2024, 2, 29))),  # leap year
        (date(2026, 1, 5), (date(2025, 12, 1), date(2025, 12, 5))),  # across the new year
    ],
)
def test_given_a_report_day_then_the_month_to_date_is_compared_with_the_same_days_last_month(
    day: date, prev_month: tuple[date, date]
) -> None:
    # when
    periods = periods_for(day)
    # then
    assert (periods["prev_month"].first, periods["prev_month"].last) == prev_month
    assert (periods["month"].first, periods["month"].last) == (day.replace(day=1), day)
    assert periods["week_ago"].first == periods["week_ago"].last
    assert (day - periods["week_ago"].first).days == 7


def test_given_recoveries_of_several_days_then_the_summary_compares_each_currency_with_the_day_week_and_month() -> (
    None
):
    # given: the day, the day before, a week before, earlier this month, and last month
    frame = recoveries(
        ("2026-06-12", "retry", 1, "USD", 3, 3000),
        ("2026-06-12", "flexfactor", 4, "USD", 1, 1500),
        ("2026-06-12", "flexfactor", 10, "EUR", 2, 4000),
        ("2026-06-11", "retry", 2, "USD", 1, 900),
        ("2026-06-05", "cascade", None, "USD", 1, 700),
        ("2026-06-02", "rerun", None, "USD", 1, 100),
        ("2026-05-12", "retry", 1, "USD", 2, 2000),
        ("2026-05-13", "retry", 1, "USD", 5, 9999),  # after the same days last month: not compared
    )
    stake = open_handoffs(
        (1, "SUBMITTED", "USD", 4, 8000), (9, "PENDING", "USD", 1, 500), (2, "SUBMITTED", "EUR", 2, 1)
    )
    # when
    s = recovery_summary(frame, stake, day=date(2026, 6, 12), exceptions=7)
    # then
    eur, usd = s.recovered
    assert usd == {
        "currency": "USD",
        "day": 4500,
        "prev_day": 900,
        "week_ago": 700,
        "month": 6200,
        "prev_month": 2000,
        "day_n": 4,
        "prev_day_n": 1,
        "week_ago_n": 1,
        "month_n": 7,
        "prev_month_n": 2,
    }
    assert (eur["currency"], eur["day"], eur["prev_day"], eur["month"], eur["prev_month"]) == (
        "EUR",
        4000,
        0,
        4000,
        0,
    )
    assert s.recovered_n == {"day": 6, "prev_day": 1, "week_ago": 1, "month": 9, "prev_month": 2}
    assert s.at_stake == [
        {"currency": "EUR", "n": 2, "amount_minor": 1},
        {"currency": "USD", "n": 5, "amount_minor": 8500},
    ]
    assert s.at_stake_n == 7
    text = summary_text(s)
    assert "Recovered on 2026-06-12: 45.00 USD (4 payments); previous day (2026-06-11): 9.00 USD" in text
    assert "a week before (2026-06-05): 7.00 USD" in text
    assert "month to date (since 2026-06-01): 62.00 USD (7 payments)" in text
    assert "same days last month (2026-05-01 to 2026-05-12): 20.00 USD" in text
    assert "Still at stake: 0.01 EUR; 85.00 USD in 7 open hand-offs." in text
    assert "Exceptions needing someone today: 7" in text
    assert (
        summary_headline(s)
        == "Recovery report 2026-06-12: recovered 40.00 EUR, 45.00 USD; 7 exceptions to act on"
    )


def test_given_nothing_recovered_and_nothing_open_then_the_summary_says_so() -> None:
    # when
    s = recovery_summary(recoveries(), open_handoffs(), day=date(2026, 6, 12), exceptions=0)
    # then
    text = summary_text(s)
    assert s.recovered == []
    assert "nothing, and nothing in the month to date" in text
    assert "Still at stake: nothing in 0 open hand-offs." in text
    assert "No exception needs anyone today." in text
    assert summary_headline(s) == "Recovery report 2026-06-12: recovered nothing"


def test_given_recoveries_by_every_method_then_the_ladder_lists_them_in_ladder_order_with_their_share() -> (
    None
):
    # given
    frame = recoveries(
        ("2026-06-12", "cascade", None, "USD", 1, 700),
        ("2026-06-12", "flexfactor", 10.0, "EUR", 1, 4000),
        ("2026-06-03", "flexfactor", 4.0, "USD", 2, 3000),
        ("2026-06-12", "retry", 2.0, "USD", 2, 1800),
        ("2026-06-12", "retry", 1.0, "USD", 3, 3000),
        ("2026-06-12", "retry", 1.0, "EUR", 1, 500),
        ("2026-06-02", "rerun", None, "USD", 1, 100),
        ("2026-05-30", "retry", 3.0, "USD", 9, 9000),  # last month: not on the ladder of June
    )
    # when
    rows = ladder_rows(frame, day=date(2026, 6, 12))
    # then
    assert [(r["method"], r["attempt"], r["day_n"], r["month_n"]) for r in rows] == [
        ("retry", "1", 4, 4),
        ("retry", "2", 2, 2),
        ("flexfactor", "4", 0, 2),
        ("flexfactor", "final", 1, 1),
        ("rerun", "—", 0, 1),
        ("cascade", "—", 1, 1),
    ]
    assert rows[0]["day_amounts"] == [
        {"currency": "EUR", "amount_minor": 500},
        {"currency": "USD", "amount_minor": 3000},
    ]
    assert rows[2]["day_amounts"] == []
    assert [r["share"] for r in rows] == [4 / 11, 2 / 11, 2 / 11, 1 / 11, 1 / 11, 1 / 11]
    assert rows[0]["label"] == "Ordinary retry on the declining gateway"
    methods = method_rows(rows)
    assert [(m["method"], m["day_n"], m["month_n"]) for m in methods] == [
        ("retry", 6, 6),
        ("flexfactor", 1, 3),
        ("rerun", 0, 1),
        ("cascade", 1, 1),
    ]
    assert methods[0]["month_amounts"] == [
        {"currency": "EUR", "amount_minor": 500},
        {"currency": "USD", "amount_minor": 4800},
    ]
    assert methods[1]["share"] == pytest.approx(3 / 11)


def test_given_no_recovery_this_month_then_the_ladder_is_empty() -> None:
    rows = ladder_rows(recoveries(("2026-05-30", "retry", 1.0, "USD", 1, 100)), day=date(2026, 6, 12))
    assert rows == []
