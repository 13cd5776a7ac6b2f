"""The index page's dashboard on SQLite and PostgreSQL: trend numbers read from the rollups, schedule changes
marked on the day they were first seen, and a past day re-rendered leaves the dashboard on the newest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from recycle_engine.domain.night import Night
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import RecycleProfileVersion
from tests.integration.test_report import DAY, NOW, seed, settings_for


def _row(html: str, day: str) -> list[str]:
    """The cells of every data-table row for `day`, in page order."""
    return re.findall(rf'<tr><th scope="row">{day}</th>((?:<td class="num">[^<]*</td>)+)</tr>', html)


def test_given_a_book_and_a_schedule_change_when_the_report_runs_then_the_dashboard_shows_its_trends(
    db_url: str, tmp_path: Path
) -> None:
    # given: the report book, and the default profile's schedule changed on 8 June (10:00 local);
    # a change on 20 June has not happened as of the report's day
    settings = settings_for(tmp_path, db_url)
    engine = make_engine(db_url)
    seed(engine)
    versions = [
        ("aaaaaaaaaaaa", datetime(2026, 5, 1, 12, tzinfo=UTC)),
        ("bbbbbbbbbbbb", datetime(2026, 6, 8, 14, tzinfo=UTC)),
        ("cccccccccccc", datetime(2026, 6, 20, 14, tzinfo=UTC)),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(RecycleProfileVersion),
            [
                {"profile_id": "default", "version": v, "content": "{}", "first_seen_at": at}
                for v, at in versions
            ],
        )
    # when
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    index = result.index_path.read_text(encoding="utf-8")
    # then: the summary first, then the 60 days ending with the report's day
    assert index.index('id="summary"') < index.index('id="trends"') < index.index('id="reports"')
    assert "The last 60 days: 2026-04-14 to 2026-06-12" in index
    # then: per night, hand-offs sent (FAILED included), recovered (a-usd, a-eur, casc, late) and lost
    assert (
        _row(index, "2026-06-12")[0] == '<td class="num">7</td><td class="num">4</td><td class="num">1</td>'
    )
    # then: recovered amounts by day of approval, one chart per currency (a-usd, casc and the late approval)
    assert '<td class="num">57.00 USD</td>' in _row(index, "2026-06-12")
    assert '<td class="num">5,000 JPY</td>' in _row(index, "2026-06-04")
    assert "Recovered per day, EUR" in index
    # then: the change of 8 June is marked on every chart, the later one nowhere
    assert index.count(">default bbbbbbbb</text>") == 5  # activity, rate, EUR, JPY, USD
    assert "cccccccc" not in index
    assert "2026-06-08 default → version <code>bbbbbbbbbbbb</code>" in index

    # when: the next day is reported, then the day again
    run_report(
        settings,
        engine,
        day=DAY + timedelta(days=1),
        night=Night.of(NOW + timedelta(days=1), settings.timezone),
    )
    again = run_report(
        settings, engine, day=DAY, night=Night.of(NOW + timedelta(days=2), settings.timezone)
    ).index_path.read_text(encoding="utf-8")
    engine.dispose()
    # then: the dashboard stays on the newest report
    assert "The last 60 days: 2026-04-15 to 2026-06-13" in again
