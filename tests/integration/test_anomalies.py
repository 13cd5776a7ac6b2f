"""The check after each nightly run, on real databases: each anomaly fires on a crafted night and stays
quiet on a normal one; the job alerts each with a one-line reason, records it, and the report lists it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from recycle_engine.config import Settings
from recycle_engine.domain.anomalies import AnomalyKind
from recycle_engine.domain.night import Night as RunNight
from recycle_engine.jobs.nightly_submit import check_after_submit
from recycle_engine.jobs.triggers import due_windows
from recycle_engine.services.nightly.anomalies import check_night
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, HandoffEvent, JobRun, NightAnomaly, WebhookDelivery
from tests.factories import a_settings_file, load_test_settings
from tests.integration.test_report import a_handoff

DAY = date(2026, 6, 20)
NOW = datetime(2026, 6, 20, 6, 30, tzinfo=UTC)  # 02:30 in New York, just after the 02:00 submit run
NIGHTS = 14


@dataclass
class Night:
    """What a crafted night changes from a normal one."""

    tonight: int = 10  # hand-offs made tonight (the 14 nights before made 10 each)
    refused_tonight: int = 0  # of those, refused by FlexFactor after sending (FAILED)
    lost_answers: int = 0  # of those, with an answer lost (UNKNOWN event)
    refused_webhooks: int = 2
    refused_hours_ago: float = 1
    last_webhook_hours_ago: float = 1
    skip_job: str | None = None  # this job has no run for its last day


def night_at(day: date, hour: int = 6) -> datetime:
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=UTC)  # 02:00 in New York in June


def a_run(job: str, started: datetime) -> dict[str, object]:
    return {
        "id": f"{job}-{started.isoformat()}",
        "job": job,
        "logical_at": started,
        "started_at": started,
        "finished_at": started + timedelta(minutes=5),
        "status": "SUCCEEDED",
    }


def build(engine: Engine, night: Night) -> None:
    handoffs, runs = [], []
    for back in range(NIGHTS, 0, -1):
        day = DAY - timedelta(days=back)
        at = night_at(day)
        runs.append(a_run("submit", at))
        handoffs += [a_handoff(f"{day}-{i}", created=at, state="SUBMITTED", amount=1000) for i in range(10)]
    yesterday = DAY - timedelta(days=1)
    runs += [a_run("reconcile", night_at(yesterday, 7)), a_run("report", night_at(yesterday, 10))]
    runs = [r for r in runs if not (r["job"] == night.skip_job and r["started_at"] >= night_at(yesterday, 4))]
    runs.append(a_run("submit", night_at(DAY)))
    for i in range(night.tonight):
        refused = i < night.refused_tonight
        handoffs.append(
            a_handoff(
                f"tonight-{i}", created=night_at(DAY), state="FAILED" if refused else "SUBMITTED", amount=1000
            )
        )
    events = [
        {
            "handoff_id": f"tonight-{i}",
            "kind": "UNKNOWN",
            "source": "RESPONSE",
            "state_after": "PENDING",
            "occurred_at": night_at(DAY),
        }
        for i in range(night.lost_answers)
    ]
    deliveries = [
        {
            "gateway_id": "ff",
            "received_at": NOW - timedelta(hours=night.refused_hours_ago),
            "accepted": False,
            "http_status": 401,
            "reason": "bad signature",
        }
        for _ in range(night.refused_webhooks)
    ] + [
        {
            "gateway_id": "ff",
            "received_at": NOW - timedelta(hours=night.last_webhook_hours_ago),
            "accepted": True,
            "http_status": 200,
            "reason": None,
        }
    ]
    with engine.begin() as conn:
        conn.execute(insert(JobRun), runs)
        conn.execute(insert(Handoff), handoffs)
        if events:
            conn.execute(insert(HandoffEvent), events)
        conn.execute(insert(WebhookDelivery), deliveries)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return load_test_settings(a_settings_file(tmp_path, db_url=db_url))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def kinds(settings: Settings, engine: Engine) -> list[AnomalyKind]:
    found = check_night(settings, engine, day=DAY, now=NOW, due=due_windows(settings, NOW))
    return [a.kind for a in found]


def test_given_a_normal_night_when_checked_then_no_anomaly_fires(settings: Settings, engine: Engine) -> None:
    # given
    build(engine, Night())
    # when / then
    assert kinds(settings, engine) == []


@pytest.mark.parametrize(
    ("night", "expected"),
    [
        pytest.param(Night(tonight=3), AnomalyKind.HANDOFF_COUNT, id="count-below-median-over-3"),
        pytest.param(Night(tonight=31), AnomalyKind.HANDOFF_COUNT, id="count-above-median-times-3"),
        pytest.param(Night(refused_tonight=1), AnomalyKind.ERROR_RATE, id="flexfactor-refused-10-percent"),
        pytest.param(Night(lost_answers=1), AnomalyKind.ERROR_RATE, id="answers-lost-10-percent"),
        pytest.param(Night(refused_webhooks=21), AnomalyKind.REFUSED_WEBHOOKS, id="21-refused-webhooks"),
        pytest.param(
            Night(refused_webhooks=0, last_webhook_hours_ago=30),
            AnomalyKind.WEBHOOK_SILENCE,
            id="30-hours-silent",
        ),
        pytest.param(Night(skip_job="report"), AnomalyKind.JOB_NOT_RUN, id="report-did-not-run"),
        pytest.param(Night(skip_job="reconcile"), AnomalyKind.JOB_NOT_RUN, id="reconcile-did-not-run"),
    ],
)
def test_given_a_crafted_night_when_checked_then_its_anomaly_fires_alone(
    settings: Settings, engine: Engine, night: Night, expected: AnomalyKind
) -> None:
    # given
    build(engine, night)
    # when / then
    assert kinds(settings, engine) == [expected]


@pytest.mark.parametrize(
    "night",
    [
        pytest.param(Night(tonight=4), id="count-just-inside"),
        pytest.param(Night(tonight=30), id="count-at-median-times-3"),
        pytest.param(Night(tonight=20, refused_tonight=1), id="error-rate-at-5-percent"),
        pytest.param(Night(refused_webhooks=20), id="20-refused-webhooks"),
        pytest.param(
            Night(refused_webhooks=30, refused_hours_ago=25), id="refused-webhooks-before-the-24-hours"
        ),
    ],
)
def test_given_a_night_at_a_threshold_when_checked_then_it_stays_quiet(
    settings: Settings, engine: Engine, night: Night
) -> None:
    build(engine, night)
    assert kinds(settings, engine) == []


def test_given_a_fresh_install_when_checked_then_jobs_that_could_not_have_run_yet_are_not_missed(
    settings: Settings, engine: Engine
) -> None:
    # given: tonight's submit is the engine's very first job run
    with engine.begin() as conn:
        conn.execute(insert(JobRun), [a_run("submit", night_at(DAY))])
    # when / then
    assert kinds(settings, engine) == []


def test_given_an_anomaly_when_the_nightly_check_runs_then_it_is_alerted_recorded_and_reported(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: an alert command that appends what it is told, and a night with 21 refused webhooks
    script = tmp_path / "alert.sh"
    script.write_text(
        '#!/bin/sh\nprintf "%s|%s\\n" "$RECYCLE_ENGINE_ALERT_KIND" "$1" >> "$(dirname "$0")/alerts.log"\n'
    )
    script.chmod(0o755)
    settings = load_test_settings(
        a_settings_file(tmp_path, db_url=db_url, extra=f"alert_command: {script}\n")
    )
    build(engine, Night(refused_webhooks=21))
    # when
    found = check_after_submit(settings, engine, now=NOW, run_id="submit-tonight")
    # then: one line to the hook ...
    reason = "21 webhooks refused in the last 24 hours (more than 20)"
    assert [a.reason for a in found] == [reason]
    assert (tmp_path / "alerts.log").read_text().splitlines() == [
        f"REFUSED_WEBHOOKS|recycle-engine anomaly REFUSED_WEBHOOKS: {reason}"
    ]
    # ... one row for the report ...
    with engine.connect() as conn:
        row = conn.execute(select(NightAnomaly)).one()
    assert (row.day, row.kind, row.reason, row.alerted, row.run_id) == (
        DAY,
        "REFUSED_WEBHOOKS",
        reason,
        True,
        "submit-tonight",
    )
    # ... and the morning report of the day before lists it in its Anomalies section
    report = run_report(
        settings,
        engine,
        day=DAY - timedelta(days=1),
        night=RunNight.of(NOW + timedelta(hours=4), settings.timezone),
    )
    html = report.html_path.read_text(encoding="utf-8")
    start = html.index('<section id="anomalies"')
    section = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html[start : html.index("</section>", start)]))
    assert f"2026-06-20 20 Jun 2026, 02:30 EDT refused webhooks {reason} confirmed" in section
    assert report.counts["anomalies"] == 1


def test_given_a_quiet_night_when_the_report_renders_then_its_anomalies_section_says_none(
    settings: Settings, engine: Engine
) -> None:
    build(engine, Night())
    check_after_submit(settings, engine, now=NOW, run_id="submit-tonight")
    report = run_report(
        settings,
        engine,
        day=DAY - timedelta(days=1),
        night=RunNight.of(NOW + timedelta(hours=4), settings.timezone),
    )
    assert "No anomaly found." in report.html_path.read_text(encoding="utf-8")
