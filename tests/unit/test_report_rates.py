"""Which rates the report quotes: final rates only from cohorts whose windows have closed, rates in
progress labelled so, and one meaning of rate by amount."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from recycle_engine.reports import recovery
from recycle_engine.reports.queries import ReportBounds

DAY = date(2026, 6, 30)
COLUMNS = ["cohort", "state", "currency", "recovery_day", "n", "amount_minor"]


def facts(*rows: tuple[object, ...]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


@pytest.mark.parametrize(
    ("cohort", "closed"),
    [
        ("2026-06-29", False),  # a day old: nearly everything still pending
        ("2026-06-09", False),  # 21 days old: its last windows close today, settled tonight
        ("2026-06-08", True),  # 22 days old: every window closed and settled
    ],
)
def test_given_a_cohort_then_its_final_rate_is_quoted_only_once_its_windows_have_closed(
    cohort: str, closed: bool
) -> None:
    # given: an open cohort's losses are yet to come: its "settled" rate would read 100 %
    frame = facts(
        (cohort, "APPROVED", "USD", 2, 1, 1000),
        (cohort, "SUBMITTED", "USD", None, 3, 3000),
    )
    # when
    row = recovery.cohort_table(frame, day=DAY, window_days=21).iloc[0]
    # then
    assert row["rate_to_date"] == pytest.approx(0.25)
    if closed:
        assert row["rate_final"] == pytest.approx(0.25)
    else:
        assert math.isnan(row["rate_final"])


def test_given_cohorts_of_every_age_then_closed_cohorts_are_those_past_their_windows() -> None:
    # given
    frame = facts(
        ("2026-06-09", "APPROVED", "USD", 2, 1, 1000),
        ("2026-06-08", "DECLINED", "USD", None, 1, 1000),
        ("2026-05-01", "APPROVED", "USD", 3, 1, 1000),
    )
    # when
    closed = recovery.closed_cohorts(frame, day=DAY, window_days=21)
    # then
    assert sorted(closed["cohort"]) == ["2026-05-01", "2026-06-08"]


def test_given_a_report_day_then_final_rates_cover_the_week_of_cohorts_closed_by_then() -> None:
    bounds = ReportBounds.for_day(DAY, ZoneInfo("America/New_York"), datetime(2026, 7, 1, 10, tzinfo=UTC))
    first, last = bounds.closed_cohorts
    assert (first, last) == (date(2026, 6, 2), date(2026, 6, 8))
    assert recovery.is_closed((DAY - last).days, bounds.window_days)
    assert not recovery.is_closed((DAY - last).days - 1, bounds.window_days)
