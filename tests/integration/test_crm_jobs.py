"""The scheduler's CRM jobs: scheduled only with a crm: section, pull before submit and push after
reconcile, and their entry points running against the CRM fake and recording their runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.executors.debug import DebugExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from freezegun import freeze_time
from sqlalchemy import text

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.crm_fake.book import load_feed_rows
from recycle_engine.crm_fake.server import RunningFakeCrm, start_fake_crm
from recycle_engine.crm_fake.state import FakeCrm
from recycle_engine.jobs import crm_sync
from recycle_engine.jobs.schedule import JobOutcomes, build_scheduler, next_fire_times, sync_jobs
from recycle_engine.storage.db import make_engine
from tests.crm_helpers import CRM_ENV, CRM_LOGIN, CRM_PASSWORD, crm_settings, crm_settings_file, feed_rows
from tests.factories import a_settings_file, load_test_settings


@pytest.fixture
def fake() -> Iterator[RunningFakeCrm]:
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD))
    yield running
    running.stop()


def test_given_a_crm_section_when_the_jobs_are_synced_then_pull_comes_before_submit_and_push_after_reconcile(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    settings = crm_settings(crm_settings_file(tmp_path, db_url=sqlite_url, crm_url="http://127.0.0.1:9"))
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    engine = make_engine(sqlite_url)
    scheduler = build_scheduler(
        settings,
        jobstore=MemoryJobStore(),
        outcomes=JobOutcomes(engine, FixedClock(now), None),
        scheduler_cls=BackgroundScheduler,
        executor=DebugExecutor(),
    )
    scheduler.start(paused=True)

    # when
    sync_jobs(
        scheduler, settings, "settings.yaml", outcomes=JobOutcomes(engine, FixedClock(now), None), now=now
    )
    fires = next_fire_times(settings, now)
    ids = {job.id for job in scheduler.get_jobs()}
    scheduler.shutdown(wait=False)

    # then
    assert ids == {"pull", "submit", "reconcile", "push", "report"}
    order = sorted(fires, key=lambda name: fires[name] or now)
    assert order == ["pull", "submit", "reconcile", "push", "report"]
    engine.dispose()


def test_given_no_crm_section_when_the_jobs_are_synced_then_no_crm_job_is_scheduled(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    settings = load_test_settings(a_settings_file(tmp_path, db_url=sqlite_url))
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    engine = make_engine(sqlite_url)
    outcomes = JobOutcomes(engine, FixedClock(now), None)
    scheduler = build_scheduler(
        settings, jobstore=MemoryJobStore(), outcomes=outcomes, scheduler_cls=BackgroundScheduler
    )
    scheduler.start(paused=True)

    # when
    sync_jobs(scheduler, settings, "settings.yaml", outcomes=outcomes, now=now)
    ids = {job.id for job in scheduler.get_jobs()}
    scheduler.shutdown(wait=False)

    # then
    assert ids == {"submit", "reconcile", "report"}
    engine.dispose()


def test_given_the_crm_fake_when_the_pull_and_push_jobs_run_then_declines_come_in_and_changes_go_out_once(
    fake: RunningFakeCrm, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    for name, value in CRM_ENV.items():
        monkeypatch.setenv(name, value)
    path = crm_settings_file(tmp_path, db_url=db_url, crm_url=fake.url)
    declined = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    load_feed_rows(fake.fake, feed_rows(20, declined, seed=71, span=timedelta(hours=1)))

    # when
    with freeze_time(declined + timedelta(hours=3)) as frozen:
        pulled = crm_sync.pull(str(path))
        frozen.tick(timedelta(seconds=1))  # each run its own start time: job_runs read in start order
        pushed = crm_sync.push(str(path))
        frozen.tick(timedelta(seconds=1))
        again = crm_sync.push(str(path))

    # then
    assert pulled["accepted"] == 20
    assert pushed["delivered"] > 0
    assert again["delivered"] == 0
    statuses = Counter(e["applied"]["purchaseId"] for e in fake.fake.applied())
    assert set(statuses.values()) == {1}
    engine = make_engine(db_url)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT job, status FROM job_runs ORDER BY started_at")).all()
    engine.dispose()
    assert [tuple(r) for r in jobs] == [("pull", "SUCCEEDED"), ("push", "SUCCEEDED"), ("push", "SUCCEEDED")]
