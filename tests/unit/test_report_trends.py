"""The dashboard's trend series and charts on tiny literal rows: values per day, rates by cohort age, schedule
changes, and SVG that keeps its axis titles, its markers in place and its text at a readable size."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from recycle_engine.reports import svg, trend_charts, trends

LAST = date(2026, 6, 30)
NEW_YORK = ZoneInfo("America/New_York")


def outcomes(*rows: tuple[date, str, str, int, int]) -> pd.DataFrame:
    """Outcome rows: (day, state, currency, n, amount_minor)."""
    return pd.DataFrame(list(rows), columns=["day", "state", "currency", "n", "amount_minor"])


def facts(*rows: tuple[str, str, str, float | None, int]) -> pd.DataFrame:
    """Cohort facts: (cohort, state, currency, recovery_day, n), amounts 1,000 minor units a hand-off."""
    frame = pd.DataFrame(list(rows), columns=["cohort", "state", "currency", "recovery_day", "n"])
    return frame.assign(amount_minor=frame["n"] * 1000, reversal=None)


# --- series ------------------------------------------------------------------------------------------


def test_given_a_last_day_then_the_axis_is_the_days_ending_with_it_oldest_first() -> None:
    days = trends.day_axis(LAST, 3)
    assert days == [date(2026, 6, 28), date(2026, 6, 29), LAST]


def test_given_approvals_and_losses_when_recovered_per_day_then_only_approvals_count_by_currency_and_day() -> (
    None
):
    # given: two currencies, a loss, and an approval before the axis
    days = trends.day_axis(LAST, 3)
    rows = outcomes(
        (date(2026, 6, 28), "APPROVED", "USD", 2, 5000),
        (date(2026, 6, 28), "APPROVED", "USD", 1, 999),
        (date(2026, 6, 30), "APPROVED", "JPY", 1, 1500),
        (date(2026, 6, 29), "EXPIRED", "USD", 4, 8000),
        (date(2026, 6, 1), "APPROVED", "USD", 9, 90000),
    )
    # when
    out = trends.recovered_per_day(rows, days)
    # then: minor units per day, 0 where none, currencies apart and in order
    assert out == {"JPY": [0, 0, 1500], "USD": [5999, 0, 0]}


def test_given_submissions_and_outcomes_then_nights_count_hand_offs_sent_recovered_and_lost() -> None:
    days = trends.day_axis(LAST, 2)
    sent = facts(
        ("2026-06-29", "APPROVED", "USD", 2, 4),
        ("2026-06-29", "FAILED", "EUR", None, 3),
        ("2026-06-30", "SUBMITTED", "USD", None, 3),
    )
    rows = outcomes(
        (LAST, "APPROVED", "USD", 2, 1),
        (LAST, "DECLINED", "USD", 1, 1),
        (LAST, "CANCELLED", "EUR", 1, 1),
        (date(2026, 6, 29), "EXPIRED", "USD", 5, 1),
    )
    assert trends.submitted_per_day(sent, days) == [7, 3]
    assert trends.outcomes_per_day(rows, days) == {"recovered": [0, 2], "lost": [5, 2]}


def test_given_cohorts_of_several_ages_then_the_rate_by_age_shows_once_each_cohort_is_that_old() -> None:
    # given: a cohort 21 days old (recovered on days 3 and 10 of 4 accepted) and one 5 days old
    old, young = (LAST - timedelta(days=21)).isoformat(), (LAST - timedelta(days=5)).isoformat()
    rows = facts(
        (old, "APPROVED", "USD", 3, 1),
        (old, "APPROVED", "USD", 10, 1),
        (old, "EXPIRED", "USD", None, 2),
        (old, "FAILED", "USD", None, 5),  # never accepted: outside the rate
        (young, "APPROVED", "USD", 1, 1),
        (young, "SUBMITTED", "USD", None, 1),
    )
    days = trends.day_axis(LAST, 30)
    # when
    rates = trends.rate_by_age(rows, days, ages=(7, 14, 21))
    # then
    at_old, at_young = days.index(date.fromisoformat(old)), days.index(date.fromisoformat(young))
    assert rates[7][at_old] == pytest.approx(0.25)
    assert rates[14][at_old] == pytest.approx(0.5)
    assert rates[21][at_old] == pytest.approx(0.5)
    assert rates[7][at_young] is None  # five days old: not yet seven
    assert sum(v is not None for v in rates[7]) == 1


def test_given_recorded_versions_then_changes_are_every_version_but_each_profiles_first_by_local_day() -> (
    None
):
    # given: 03:30 UTC on 15 June is still 14 June in New York
    rows = pd.DataFrame(
        [
            ("default", "aaaaaaaaaaaa", datetime(2026, 5, 1, 12, tzinfo=UTC)),
            ("default", "bbbbbbbbbbbb", datetime(2026, 6, 15, 3, 30, tzinfo=UTC)),
            ("short", "cccccccccccc", datetime(2026, 6, 20, 12, tzinfo=UTC)),
        ],
        columns=["profile_id", "version", "first_seen_at"],
    )
    # when
    changes = trends.version_changes(rows, NEW_YORK)
    # then
    assert changes == [trends.VersionChange(date(2026, 6, 14), "default", "bbbbbbbbbbbb")]
    assert changes[0].label == "default bbbbbbbb"


# --- charts ------------------------------------------------------------------------------------------


def test_given_days_then_at_most_six_ticks_and_the_last_day_always_labelled() -> None:
    days = trends.day_axis(LAST, 60)
    ticks = trend_charts.day_ticks(days)
    assert len(ticks) <= trend_charts.MAX_TICKS
    assert ticks[-1] == (1.0, "30 Jun")
    assert all(0 <= frac <= 1 for frac, _ in ticks)


def test_given_a_schedule_change_then_its_marker_stands_at_its_day_and_names_the_version() -> None:
    # given: 61 days, a change on the 21st (index 20: a third of the way)
    days = trends.day_axis(LAST, 61)
    change = trends.VersionChange(days[20], "default", "d5d8e6da24a9")
    # when
    chart = str(
        trend_charts.activity_chart([1] * 61, {"recovered": [0] * 61, "lost": [0] * 61}, days, [change])
    )
    # then: the rule and its label at 12 % + 85 % x 1/3 of the width
    x = f"{12 + 85 * 20 / 60:.2f}%"
    assert re.search(rf'<line class="marker" x1="{re.escape(x)}"[^>]*x2="{re.escape(x)}"', chart)
    assert re.search(rf'<text class="marker-label" x="{re.escape(x)}"[^>]*>default d5d8e6da</text>', chart)


def test_given_two_changes_on_one_day_then_one_marker_names_both() -> None:
    days = trends.day_axis(LAST, 10)
    changes = [
        trends.VersionChange(LAST, "a", "111111111111"),
        trends.VersionChange(LAST, "b", "222222222222"),
    ]
    assert trend_charts.markers(changes, days) == [(1.0, "a 11111111, b 22222222")]


def test_given_a_trend_chart_then_it_has_a_title_both_axis_titles_with_units_and_readable_unscaled_text() -> (
    None
):
    days = trends.day_axis(LAST, 5)
    chart = trend_charts.amount_chart("JPY", [0, 1500, 0, 250_000, 3], days, [])
    html = str(chart.svg)
    # then: accessible name, axis titles with the unit (JPY has no minor units: 250,000 shows as 250k)
    assert html.startswith('<svg role="img" aria-label="Recovered per day, JPY, 26 Jun to 30 Jun"')
    assert "<title>Recovered per day, JPY, 26 Jun to 30 Jun</title>" in html
    titles = re.findall(r'class="axis-title">([^<]+)</text>', html)
    assert titles == ["Recovered (JPY)", "Day of approval"]
    assert ">250k</text>" in html
    # then: the chart is never scaled (no viewBox of its own), so every label is drawn at its font size
    assert "viewBox" not in html.split(">", 1)[0]
    sizes = [int(s) for s in re.findall(r'<text [^>]*font-size="(\d+)"', html)]
    assert sizes
    assert min(sizes) >= 10
    assert len(sizes) == html.count("<text ")
    # then: the data table has a row per day, amounts as money
    assert chart.rows[3] == ["2026-06-29", "250,000 JPY"]


def test_given_a_rate_series_with_gaps_then_the_line_breaks_instead_of_joining_across() -> None:
    days = trends.day_axis(LAST, 5)
    chart = trend_charts.rate_chart({7: [0.1, 0.2, None, 0.3, 0.4]}, days, [])
    lines = re.findall(r'<polyline points="([^"]+)" fill="none"', str(chart.svg))
    assert len(lines) == 2
    assert [len(points.split()) for points in lines] == [2, 2]
    assert 'class="axis-title">Recovered (% of accepted hand-offs)</text>' in str(chart.svg)
    assert chart.rows[2] == ["2026-06-28", "—"]


def test_given_markup_in_a_label_then_the_chart_escapes_it() -> None:
    days = trends.day_axis(LAST, 3)
    change = trends.VersionChange(LAST, "<b>x</b>", "abcdefabcdef")
    html = str(trend_charts.activity_chart([0, 0, 0], {}, days, [change]).svg)
    assert "<b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt; abcdefab" in html


@pytest.mark.parametrize(
    ("peak", "whole", "top"),
    [
        (0, False, 4.0),
        (7, True, 8.0),
        (7, False, 7.5),
        (95, False, 100.0),
        (1234, False, 1250.0),
        (0.3, False, 0.3),
        (250_000, False, 250_000.0),
        (1, True, 3.0),
    ],
)
def test_given_a_peak_then_ticks_end_at_the_lowest_round_number_at_least_as_high(
    peak: float, whole: bool, top: float
) -> None:
    ticks = svg.nice_ticks(peak, whole=whole)
    assert ticks[0] == 0
    assert ticks[-1] == pytest.approx(top)
    assert 4 <= len(ticks) <= 6
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    if whole:
        assert all(t == int(t) for t in ticks)
