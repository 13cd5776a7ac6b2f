"""The index page's dashboard: headline figures and the trend charts over the last TREND_DAYS local days,
read from the daily rollups in the report's snapshot."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from recycle_engine.reports import queries, rollup_queries, trend_charts, trend_queries, trends
from recycle_engine.reports.render import report_name

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["dashboard_context"]


def dashboard_context(
    conn: Connection, *, last: date, tz: ZoneInfo, now: datetime, window_days: int
) -> dict[str, Any]:
    """The dashboard as of the end of local day `last` (or `now`, if earlier): the figures of the
    TREND_DAYS days ending with it, the three trend charts and the schedule changes among them."""
    bounds = queries.ReportBounds.for_day(last, tz, now, window_days=window_days)
    days = trends.day_axis(last, trend_queries.TREND_DAYS)
    first = days[0]
    outcomes = queries.fetch(conn, trend_queries.outcomes_per_day_stmt(first, last))
    facts = rollup_queries.fetch_cohorts(conn, rollup_queries.cohort_facts_stmt(bounds, days=(first, last)))
    changes = trends.version_changes(queries.fetch(conn, trend_queries.versions_stmt(bounds.as_of)), tz)

    recovered = trends.recovered_per_day(outcomes, days)
    sent = trends.submitted_per_day(facts, days)
    settled = trends.outcomes_per_day(outcomes, days)
    rates = trends.rate_by_age(facts, days)
    latest_rates = {
        n: next((v for v in reversed(values) if v is not None), None) for n, values in rates.items()
    }
    charts = [
        trend_charts.activity_chart(sent, settled, days, changes),
        trend_charts.rate_chart(rates, days, changes),
        *(trend_charts.amount_chart(ccy, minor, days, changes) for ccy, minor in recovered.items()),
    ]
    return {
        "first": first,
        "last": last,
        "n_days": len(days),
        "last_href": report_name(last),
        "handed_off": sum(sent),
        "recovered_n": sum(settled["recovered"]),
        "lost_n": sum(settled["lost"]),
        "recovered": [{"currency": ccy, "amount_minor": sum(minor)} for ccy, minor in recovered.items()],
        "latest_rates": latest_rates,
        "charts": charts,
        "changes": [c for c in changes if first <= c.day <= last],
    }
