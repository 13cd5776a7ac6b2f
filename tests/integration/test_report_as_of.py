"""A day's report reads the book as of the end of that day: re-rendered after later activity it reads as
it did, and a day before the book began shows none of it."""

from __future__ import annotations

import difflib
import json
import re
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import insert, update

from recycle_engine.domain.night import Night
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, JobRun, WebhookDelivery
from tests.integration.test_report import DAY, NIGHT, NOW, a_handoff, seed, settings_for

GENERATED = re.compile(r'Generated <time datetime="[^"]+">[^<]+</time>')


def _without_generation_time(html: str) -> str:
    return GENERATED.sub("Generated (time)", html)


def _later_activity(engine_url: str) -> None:
    """Everything a book does after DAY: outcomes for its open hand-offs, new hand-offs and their
    outcomes, webhooks and job runs on the following days."""
    engine = make_engine(engine_url)
    later = NOW + timedelta(days=1)
    # (the PENDING rerun stays so: the seed gives it a submission time, which no settled PENDING has)
    settled = {"p-usd": "APPROVED", "overdue": "EXPIRED", "flag": "DECLINED"}
    with engine.begin() as conn:
        for handoff_id, state in settled.items():
            conn.execute(
                update(Handoff).where(Handoff.id == handoff_id).values(state=state, outcome_at=later)
            )
        conn.execute(
            insert(Handoff),
            [
                a_handoff("next-1", created=NIGHT + timedelta(days=1), state="APPROVED", amount=4100)
                | {"outcome_at": later},
                a_handoff("next-2", created=NIGHT + timedelta(days=1), state="SUBMITTED", amount=4200),
                a_handoff("week-1", created=NIGHT + timedelta(days=7), state="PENDING", amount=4300)
                | {"expires_at": NIGHT + timedelta(days=8)},
            ],
        )
        conn.execute(
            insert(WebhookDelivery),
            [
                {"gateway_id": "flexfactor-main", "received_at": later, "http_status": 200}
                | {"is_duplicate": False, "is_resent": False, "accepted": True, "reason": "applied"}
                | {"handoff_id": "p-usd"}
            ],
        )
        conn.execute(
            insert(JobRun),
            [
                {"id": "submit-2", "job": "submit", "logical_at": later, "started_at": later}
                | {"finished_at": later, "status": "SUCCEEDED", "counts": json.dumps({"handed_off": 2})}
            ],
        )
    engine.dispose()


def test_given_a_reported_day_when_later_activity_happens_then_its_report_re_renders_byte_identical(
    db_url: str, tmp_path: Path
) -> None:
    # given: the day reported the next morning
    settings = settings_for(tmp_path, db_url)
    engine = make_engine(db_url)
    seed(engine)
    first = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone)).html_path.read_text(
        encoding="utf-8"
    )
    # when: outcomes, new hand-offs, webhooks and runs on the following days, their reports, then the
    # day re-rendered a week and a half later
    _later_activity(db_url)
    for offset in (1, 2, 7):
        run_report(
            settings,
            engine,
            day=DAY + timedelta(days=offset),
            night=Night.of(NOW + timedelta(days=offset + 1), settings.timezone),
        )
    again = run_report(settings, engine, day=DAY, night=Night.of(NOW + timedelta(days=10), settings.timezone))
    engine.dispose()
    # then: the same page, apart from when it was generated
    html = again.html_path.read_text(encoding="utf-8")
    changed = difflib.unified_diff(
        _without_generation_time(first).splitlines(), _without_generation_time(html).splitlines(), lineterm=""
    )
    assert "\n".join(changed) == ""
    assert html != first  # the generation time did move


def test_given_a_book_of_june_when_a_day_of_the_year_before_is_reported_then_none_of_it_shows(
    db_url: str, tmp_path: Path
) -> None:
    # given: hand-offs from May and June 2026, some open and past their window now
    settings = settings_for(tmp_path, db_url)
    engine = make_engine(db_url)
    seed(engine)
    # when
    result = run_report(settings, engine, day=date(2025, 1, 15), night=Night.of(NOW, settings.timezone))
    engine.dispose()
    # then: nothing open, overdue, nearing expiry or exceptional in January 2025
    html = result.html_path.read_text(encoding="utf-8")
    for handoff_id in ("p-usd", "overdue", "flag", "rerun", "f-usd"):
        assert f">{handoff_id}<" not in html, handoff_id
    assert result.counts == {
        "handoffs": 0,
        "recovered": 0,
        "exceptions": 0,
        "anomalies": 0,
        "csv_rows": 0,
        "rollup_days": result.counts["rollup_days"],
    }
