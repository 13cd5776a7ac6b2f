"""The day arithmetic of the report rollups: a zone's offsets over a range, and runs of days to recompute."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from recycle_engine.storage.report_sql import utc_offsets
from recycle_engine.storage.rollup_repo import day_spans

HOUR = 3600


def test_given_a_year_in_new_york_then_the_offsets_change_at_both_dst_instants_to_the_second() -> None:
    # given
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC)
    # when
    spans = utc_offsets(ZoneInfo("America/New_York"), start, end)
    # then: 02:00 EST on 8 March and 02:00 EDT on 1 November
    assert spans == [
        (start, -5 * HOUR),
        (datetime(2026, 3, 8, 7, 0, tzinfo=UTC), -4 * HOUR),
        (datetime(2026, 11, 1, 6, 0, tzinfo=UTC), -5 * HOUR),
    ]


@pytest.mark.parametrize(
    ("zone", "offset"),
    [("UTC", 0), ("Asia/Kolkata", 5 * HOUR + 30 * 60), ("Asia/Kathmandu", 5 * HOUR + 45 * 60)],
)
def test_given_a_zone_without_dst_then_one_offset_covers_the_range(zone: str, offset: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert utc_offsets(ZoneInfo(zone), start, start + timedelta(days=400)) == [(start, offset)]


@pytest.mark.parametrize(
    ("days", "spans"),
    [
        pytest.param([], [], id="none"),
        pytest.param([3, 1, 2, 2], [(1, 3)], id="unordered-and-repeated"),
        pytest.param([1, 2, 5, 7, 8], [(1, 2), (5, 5), (7, 8)], id="gaps"),
        pytest.param(list(range(1, 8)), [(1, 3), (4, 6), (7, 7)], id="capped-at-three"),
    ],
)
def test_given_days_then_they_are_recomputed_in_capped_runs_of_consecutive_days(
    days: list[int], spans: list[tuple[int, int]]
) -> None:
    def d(n: int) -> date:
        return date(2026, 2, 26) + timedelta(days=n)  # across the end of February

    assert list(day_spans([d(n) for n in days], max_days=3)) == [(d(a), d(b)) for a, b in spans]
