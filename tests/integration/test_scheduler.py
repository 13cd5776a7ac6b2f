"""The scheduler: catch-up, misfires, coalescing, overrun, failures, graceful stop, one leader per database."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import BaseScheduler
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import Engine, insert, select, text

from recycle_engine.adapters.alerts import send_alert
from recycle_engine.adapters.clock import FixedClock, SystemClock
from recycle_engine.config import Settings, load_settings
from recycle_engine.jobs.leader import Lease
from recycle_engine.jobs.schedule import (
    JobOutcomes,
    SchedulerProcess,
    build_scheduler,
    next_fire_times,
    sync_jobs,
)
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.services.reporting.status import ACTIVE_LEASE, gather_status, render_status
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, JobRun, OutcomeQueue, SchedulerLease

ROOT = Path(__file__).resolve().parents[2]
NEW_YORK = ZoneInfo("America/New_York")
SPEC_JOBS = {
    "submit": ("0 2 * * *", 14400),
    "reconcile": ("30 3 * * *", 14400),
    "report": ("0 6 * * *", 21600),
}
FAR_FUTURE_JOBS = {name: ("0 0 1 1 *", 60) for name in SPEC_JOBS}  # leadership tests: no job fires


# --- job stand-ins: importable by text reference, as the job store needs -----------------------

CALLS: list[str] = []
RELEASE = threading.Event()
RUNNING = threading.Semaphore(0)
_concurrency = {"now": 0, "max": 0}


def submit_probe(config_path: str) -> dict[str, int]:
    CALLS.append("submit")
    return {}


def report_probe(config_path: str) -> dict[str, int]:
    CALLS.append("report")
    return {}


def reconcile_boom(config_path: str) -> dict[str, int]:
    CALLS.append("reconcile")
    raise RuntimeError("FlexFactor unreachable")


def service_recorded_failure(config_path: str) -> dict[str, int]:
    """Fails the way a service does: it records its own FAILED run before raising."""
    CALLS.append("reconcile")
    engine = make_engine(load_settings(Path(config_path)).database_url)
    now = SystemClock().now()
    run_id = start_run(engine, "reconcile", logical_at=now, now=now)
    finish_run(engine, run_id, now=now, counts={}, error="StorageError: database failed")
    engine.dispose()
    raise RuntimeError("database failed")


def slow_probe(config_path: str) -> dict[str, int]:
    """Runs until the test sets RELEASE; tracks how many copies run at once."""
    _concurrency["now"] += 1
    _concurrency["max"] = max(_concurrency["max"], _concurrency["now"])
    RUNNING.release()
    try:
        assert RELEASE.wait(20), "the test never released the slow job"
    finally:
        _concurrency["now"] -= 1
        CALLS.append("slow")
    return {}


def ref(func: Callable[..., Any]) -> str:
    return f"{__name__}:{func.__name__}"


@pytest.fixture(autouse=True)
def _reset_probes() -> Iterator[None]:
    CALLS.clear()
    RELEASE.clear()
    _concurrency.update(now=0, max=0)
    while RUNNING.acquire(blocking=False):
        pass
    yield
    RELEASE.set()  # never leave a worker thread blocked behind a failed test


# --- helpers -------------------------------------------------------------------------------------


def write_settings(
    tmp_path: Path, db_url: str, jobs: dict[str, tuple[str, int]] = SPEC_JOBS
) -> tuple[Settings, Path]:
    """A small valid settings.yaml on `db_url`, with an alert script that appends to alerts.log."""
    script = tmp_path / "alert.sh"
    script.write_text(
        '#!/bin/sh\nprintf "%s|%s\\n" "$RECYCLE_ENGINE_ALERT_KIND" "$1" >> "$(dirname "$0")/alerts.log"\n'
    )
    script.chmod(0o755)
    raw = {
        "timezone": "America/New_York",
        "database": {"url": db_url},
        "gateways": [{"id": "nmi-main", "type": "simulated"}],
        "jobs": {
            name: {"cron": cron, "misfire_grace_seconds": grace} for name, (cron, grace) in jobs.items()
        },
        "reports": {"output_dir": str(tmp_path / "out")},
        "alert_command": str(script),
    }
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_settings(path), path


def alerts(tmp_path: Path) -> list[str]:
    log = tmp_path / "alerts.log"
    return log.read_text().splitlines() if log.exists() else []


def runs(engine: Engine, job: str | None = None) -> list[Any]:
    query = select(JobRun).order_by(JobRun.logical_at, JobRun.started_at)
    with engine.connect() as conn:
        return list(conn.execute(query.where(JobRun.job == job) if job else query))


def ny(text_: str) -> datetime:
    """A New York wall time, e.g. "2026-06-10 05:00", as an aware datetime."""
    return datetime.fromisoformat(text_).replace(tzinfo=NEW_YORK)


class ManualScheduler(BaseScheduler):  # type: ignore[misc]
    """Looks for due jobs only when the test calls tick(): no thread and no real waiting."""

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def wakeup(self) -> None:
        pass

    def tick(self) -> None:
        self._process_jobs()


class Night:
    """A scheduler process on a real persistent job store, started and stopped at frozen times."""

    def __init__(
        self, settings: Settings, config_path: Path, targets: dict[str, str], executor: Any = None
    ) -> None:
        self.settings, self.config_path, self.targets = settings, config_path, targets
        self.executor = executor
        self.engine = make_engine(settings.database_url)
        self.scheduler: ManualScheduler | None = None

    def start(self) -> ManualScheduler:
        outcomes = JobOutcomes(self.engine, SystemClock(), self.settings.alert_command)
        store = SQLAlchemyJobStore(engine=make_engine(self.settings.database_url))
        scheduler = build_scheduler(
            self.settings,
            jobstore=store,
            outcomes=outcomes,
            scheduler_cls=ManualScheduler,
            executor=self.executor or DebugExecutor(),
        )
        scheduler.start(paused=True)
        sync_jobs(
            scheduler,
            self.settings,
            str(self.config_path),
            outcomes=outcomes,
            now=SystemClock().now(),
            targets=self.targets,
        )
        scheduler.resume()
        self.scheduler = scheduler
        return scheduler

    def stop(self) -> None:
        assert self.scheduler is not None
        self.scheduler.shutdown(wait=True)
        self.scheduler = None

    def next_run(self, job: str) -> datetime:
        assert self.scheduler is not None
        found = self.scheduler.get_job(job)
        assert found is not None
        return found.next_run_time  # type: ignore[no-any-return]


# --- catch-up, misfires and coalescing (controlled clock) ---------------------------------------


def test_given_the_scheduler_was_down_at_0200_when_it_starts_at_0500_within_grace_then_the_run_happens_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: a scheduler ran the evening before, then went down before 02:00
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"submit": ref(submit_probe)})
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        night.start()
        night.stop()
        # when: it comes back at 05:00, three hours late (grace 4 h), and looks twice
        clock.move_to(ny("2026-06-10 05:00"))
        night.start().tick()
        night.scheduler.tick()  # type: ignore[union-attr]
        # then
        assert CALLS == ["submit"]
        assert night.next_run("submit") == ny("2026-06-11 02:00")
        # and when: it restarts half an hour later, the night's run is not repeated
        night.stop()
        clock.move_to(ny("2026-06-10 05:30"))
        night.start().tick()
        night.stop()
    assert CALLS == ["submit"]
    assert runs(night.engine) == []  # nothing missed


@pytest.mark.parametrize(
    ("restart_at", "runs_it"),
    [("2026-06-10 05:59:59", True), ("2026-06-10 06:00:00", True), ("2026-06-10 06:00:01", False)],
    ids=["1s-before-grace-ends", "exactly-at-grace", "1s-beyond-grace"],
)
def test_given_a_0200_run_with_4h_grace_when_the_scheduler_returns_then_exactly_at_the_grace_it_still_runs(
    sqlite_url: str, tmp_path: Path, restart_at: str, runs_it: bool
) -> None:
    # given
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"submit": ref(submit_probe)})
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        night.start()
        night.stop()
        # when
        clock.move_to(ny(restart_at))
        night.start().tick()
        night.stop()
    # then: APScheduler misses a run only when it is *more* than the grace time late
    assert CALLS == (["submit"] if runs_it else [])
    assert [r.status for r in runs(night.engine)] == ([] if runs_it else ["MISSED"])


def test_given_the_scheduler_was_down_past_the_grace_time_then_the_run_is_recorded_missed_and_alerted(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"submit": ref(submit_probe)})
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        night.start()
        night.stop()
        # when: back at 06:30, four and a half hours late
        clock.move_to(ny("2026-06-10 06:30"))
        night.start().tick()
        next_run = night.next_run("submit")
        night.stop()
    # then
    assert CALLS == []
    [missed] = runs(night.engine)
    assert (missed.job, missed.status) == ("submit", "MISSED")
    assert missed.logical_at == ny("2026-06-10 02:00")
    assert "beyond its misfire grace time" in missed.error
    assert next_run == ny("2026-06-11 02:00")
    [alert] = alerts(tmp_path)
    assert alert.startswith("MISSED|recycle-engine submit MISSED: 2026-06-10T02:00:00-04:00")


def test_given_three_nights_of_downtime_when_the_scheduler_returns_within_grace_then_it_runs_once_and_records_the_rest(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: down from the evening of the 9th
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"submit": ref(submit_probe)})
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        night.start()
        night.stop()
        # when: back at 03:00 on the 13th
        clock.move_to(ny("2026-06-13 03:00"))
        night.start().tick()
        night.stop()
    # then: one coalesced run for the 13th; the 10th to the 12th are on record as missed
    assert CALLS == ["submit"]
    missed = runs(night.engine, "submit")
    assert [(r.status, r.logical_at) for r in missed] == [
        ("MISSED", ny("2026-06-10 02:00")),
        ("MISSED", ny("2026-06-11 02:00")),
        ("MISSED", ny("2026-06-12 02:00")),
    ]
    assert all("scheduler was down" in r.error for r in missed)
    assert len(alerts(tmp_path)) == 1  # one alert for the outage, not one per night


def test_given_a_job_that_overruns_when_its_next_fire_time_comes_then_it_does_not_overlap(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: a job every minute whose first run takes longer than a minute
    settings, path = write_settings(tmp_path, sqlite_url, {"submit": ("* * * * *", 30)})
    night = Night(settings, path, {"submit": ref(slow_probe)}, executor=ThreadPoolExecutor(max_workers=4))
    with freeze_time(ny("2026-06-10 12:00:30")) as clock:
        scheduler = night.start()
        clock.move_to(ny("2026-06-10 12:01:00"))
        scheduler.tick()
        assert RUNNING.acquire(timeout=10)
        # when: the next minute fires while the first run is still going
        clock.move_to(ny("2026-06-10 12:02:00"))
        scheduler.tick()
        RELEASE.set()
        deadline = time.monotonic() + 10
        while CALLS != ["slow"] and time.monotonic() < deadline:
            time.sleep(0.02)
        # and the minute after, once it has finished
        clock.move_to(ny("2026-06-10 12:03:00"))
        scheduler.tick()
        assert RUNNING.acquire(timeout=10)
        night.stop()
    # then: never two at once; the overlapping fire is recorded as missed, the next one runs
    assert _concurrency["max"] == 1
    assert CALLS == ["slow", "slow"]
    [skipped] = runs(night.engine, "submit")
    assert (skipped.status, skipped.logical_at) == ("MISSED", ny("2026-06-10 12:02"))
    assert "overran" in skipped.error


def test_given_reconcile_fails_when_the_night_runs_then_submit_and_report_still_run_and_the_failure_is_recorded(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: the real submit entry point, a reconcile that raises, a report stand-in
    settings, path = write_settings(tmp_path, sqlite_url)
    targets = {
        "submit": "recycle_engine.jobs.nightly_submit:run",
        "reconcile": ref(reconcile_boom),
        "report": ref(report_probe),
    }
    night = Night(settings, path, targets)
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        scheduler = night.start()
        # when: the night goes by
        for at in ("2026-06-10 02:00:05", "2026-06-10 03:30:05", "2026-06-10 06:00:05"):
            clock.move_to(ny(at))
            scheduler.tick()
        next_reconcile = night.next_run("reconcile")
        night.stop()
    # then
    assert CALLS == ["reconcile", "report"]
    by_job = {r.job: r for r in runs(night.engine)}
    assert by_job["submit"].status == "SUCCEEDED"
    assert isinstance(json.loads(by_job["submit"].counts), dict)
    assert (by_job["reconcile"].status, by_job["reconcile"].error) == (
        "FAILED",
        "RuntimeError: FlexFactor unreachable",
    )
    assert next_reconcile == ny("2026-06-11 03:30")  # tomorrow's reconcile is still scheduled
    assert alerts(tmp_path) == [
        "FAILED|recycle-engine reconcile FAILED: RuntimeError: FlexFactor unreachable"
    ]


def test_given_a_service_recorded_its_own_failure_then_the_scheduler_does_not_record_it_twice(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"reconcile": ref(service_recorded_failure)})
    with freeze_time(ny("2026-06-10 03:00")) as clock:
        scheduler = night.start()
        # when
        clock.move_to(ny("2026-06-10 03:30:01"))
        scheduler.tick()
        night.stop()
    # then
    [failed] = runs(night.engine)
    assert (failed.status, failed.error) == ("FAILED", "StorageError: database failed")
    assert len(alerts(tmp_path)) == 1


def test_given_the_cron_changed_while_down_then_the_old_schedule_is_not_caught_up(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: stored at 02:00; finance moves submit to 04:00 while the scheduler is down
    settings, path = write_settings(tmp_path, sqlite_url)
    night = Night(settings, path, {"submit": ref(submit_probe)})
    with freeze_time(ny("2026-06-09 20:00")) as clock:
        night.start()
        night.stop()
        moved, _ = write_settings(tmp_path, sqlite_url, {**SPEC_JOBS, "submit": ("0 4 * * *", 14400)})
        # when
        clock.move_to(ny("2026-06-10 03:00"))
        night.settings = moved
        night.start().tick()
        next_run = night.next_run("submit")
        night.stop()
    # then
    assert CALLS == []
    assert next_run == ny("2026-06-10 04:00")


# --- leadership ----------------------------------------------------------------------------------


def test_given_a_held_lease_when_a_standby_tries_then_it_gets_it_exactly_at_expiry_and_the_old_holder_cannot_renew(
    db_url: str,
) -> None:
    # given
    engine = make_engine(db_url)
    clock = FixedClock(datetime(2026, 6, 10, 6, 0, tzinfo=UTC))
    first, second = Lease(engine, clock, ttl_s=3), Lease(engine, clock, ttl_s=3)
    assert first.try_acquire()
    # when / then: one second before and a hair before expiry the lease is still held
    clock.advance(seconds=2)
    assert not second.try_acquire()
    clock.advance(seconds=0.999)
    assert not second.try_acquire()
    # exactly at expires_at it is free
    clock.advance(seconds=0.001)
    assert second.try_acquire()
    assert not first.renew()
    held = second.holder_now()
    assert held is not None
    assert held[0] == second.holder
    engine.dispose()


def test_given_the_holder_releases_then_a_standby_acquires_at_once_and_status_shows_the_roles(
    db_url: str,
) -> None:
    # given
    engine = make_engine(db_url)
    clock = FixedClock(datetime(2026, 6, 10, 6, 0, tzinfo=UTC))
    active, standby = Lease(engine, clock, ttl_s=60), Lease(engine, clock, ttl_s=60)
    assert active.try_acquire()
    assert not standby.try_acquire()
    standby.announce_standby()
    roles = gather_status(engine, now=clock.now(), crons={}, next_fire_times={}).schedulers
    assert [(r.role, r.holder) for r in roles] == [("active", active.holder), ("standby", standby.holder)]
    # when
    active.release()
    # then
    assert standby.try_acquire()
    standby.withdraw_standby()
    roles = gather_status(engine, now=clock.now(), crons={}, next_fire_times={}).schedulers
    assert [(r.role, r.holder) for r in roles] == [("active", standby.holder)]
    engine.dispose()


def _lease_holder(engine: Engine) -> tuple[str, datetime] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(SchedulerLease.holder, SchedulerLease.expires_at).where(
                SchedulerLease.name == ACTIVE_LEASE
            )
        ).first()
    return (row.holder, row.expires_at) if row else None


def _pid_of(holder: str) -> int:
    return int(holder.split(":")[-2])


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start_scheduler(config: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECYCLE_ENGINE_SCHEDULER_LEASE_SECONDS": "3"}
    with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [sys.executable, "-m", "recycle_engine", "scheduler", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _log_lines(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / f"{name}.log").read_text().splitlines() if line.strip()]


def _holder_pid(engine: Engine) -> int | None:
    held = _lease_holder(engine)
    return _pid_of(held[0]) if held else None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_given_an_active_scheduler_process_when_it_gets_a_stop_signal_then_it_exits_0_and_releases_the_lease(
    sqlite_url: str, tmp_path: Path, signum: int
) -> None:
    # given
    settings, path = write_settings(tmp_path, sqlite_url, FAR_FUTURE_JOBS)
    engine = make_engine(sqlite_url)
    proc = _start_scheduler(path, tmp_path, "one")
    try:
        _wait_for(lambda: _holder_pid(engine) == proc.pid, 20, "the scheduler to become active")
        # when
        proc.send_signal(signum)
        code = proc.wait(timeout=20)
    finally:
        proc.kill()
    # then
    assert code == 0
    assert _lease_holder(engine) is None
    messages = [line["msg"] for line in _log_lines(tmp_path, "one")]  # JSON lines: stderr is no terminal
    assert "active: running the jobs" in messages
    assert messages[-1] == "scheduler stopped"
    engine.dispose()


def test_given_an_active_scheduler_still_syncing_its_jobs_then_it_is_not_offered_until_every_job_is_in(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: an active scheduler held inside sync_jobs, before any job is in its store
    settings, path = write_settings(tmp_path, sqlite_url, FAR_FUTURE_JOBS)
    syncing, go_on = threading.Event(), threading.Event()

    def held_sync(*args: Any, **kwargs: Any) -> None:
        syncing.set()
        assert go_on.wait(20), "the test never let the sync go on"
        sync_jobs(*args, **kwargs)

    monkeypatch.setattr("recycle_engine.jobs.schedule.sync_jobs", held_sync)
    process = SchedulerProcess(settings, path, targets={"submit": ref(slow_probe)}, lease_s=2)
    thread = threading.Thread(target=process.run)
    thread.start()
    try:
        assert syncing.wait(20)
        # then: no scheduler is offered while its jobs are not all in
        assert process.scheduler is None
        # when: the sync ends
        go_on.set()
        _wait_for(lambda: process.scheduler is not None, 20, "the scheduler")
        # then: the scheduler offered already holds every job
        assert [job.id for job in process.scheduler.get_jobs()] == ["submit"]  # type: ignore[union-attr]
    finally:
        go_on.set()
        process.request_stop()
        thread.join(timeout=20)


def test_given_a_running_job_when_a_stop_is_requested_then_the_job_finishes_before_the_lease_is_released(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: an active scheduler whose submit job is running
    settings, path = write_settings(tmp_path, sqlite_url, FAR_FUTURE_JOBS)
    process = SchedulerProcess(settings, path, targets={"submit": ref(slow_probe)}, lease_s=2)
    thread = threading.Thread(target=process.run)
    thread.start()
    engine = make_engine(sqlite_url)
    try:
        _wait_for(lambda: process.role == "active" and process.scheduler is not None, 20, "active")
        process.scheduler.modify_job("submit", next_run_time=datetime.now(UTC))  # type: ignore[union-attr]
        assert RUNNING.acquire(timeout=10)
        # when
        held = _lease_holder(engine)
        assert held is not None
        process.request_stop(signal.SIGTERM)
        # then: past the lease held at the stop, it is still held, renewed while the job finishes
        first_expiry = held[1]
        _wait_for(lambda: datetime.now(UTC) > first_expiry, 20, "the lease held at the stop to run out")
        renewed = _lease_holder(engine)
        assert renewed is not None
        assert renewed[1] > first_expiry
        assert thread.is_alive()
        assert _holder_pid(engine) == os.getpid()
        RELEASE.set()
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert CALLS == ["slow"]
        assert _lease_holder(engine) is None
    finally:
        RELEASE.set()
        process.request_stop()
        thread.join(timeout=20)
        engine.dispose()


@pytest.mark.postgres
def test_given_two_scheduler_processes_on_one_postgresql_then_one_is_active_and_the_other_takes_over_after_a_kill(
    pg_url: str, tmp_path: Path
) -> None:
    # given: two scheduler processes on one database, with 3-second leases
    settings, path = write_settings(tmp_path, pg_url, FAR_FUTURE_JOBS)
    engine = make_engine(pg_url)
    first = _start_scheduler(path, tmp_path, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(lambda: _holder_pid(engine) == first.pid, 20, "the first scheduler to become active")
        second = _start_scheduler(path, tmp_path, "second")
        _wait_for(
            lambda: any(line["msg"].startswith("standby") for line in _log_lines(tmp_path, "second")),
            20,
            "the second scheduler to wait as standby",
        )
        for _ in range(20):  # two lease renewals: the standby never steps in while the first lives
            assert _holder_pid(engine) == first.pid
            time.sleep(0.1)
        with engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT id, next_run_time FROM apscheduler_jobs")).all())
        # when: the active one dies without a word
        first.kill()
        first.wait(timeout=10)
        held = _lease_holder(engine)
        assert held is not None
        expired_at = held[1]
        _wait_for(lambda: _holder_pid(engine) == second.pid, 15, "the standby to take over")  # type: ignore[union-attr]
        # then: it took over only once the dead holder's lease had run out, with the stored jobs
        with engine.connect() as conn:
            acquired_at = conn.execute(
                select(SchedulerLease.acquired_at).where(SchedulerLease.name == ACTIVE_LEASE)
            ).scalar_one()
            _wait_for(lambda: "active: running the jobs" in _messages(tmp_path, "second"), 10, "jobs")
            after = dict(conn.execute(text("SELECT id, next_run_time FROM apscheduler_jobs")).all())
        assert acquired_at >= expired_at
        assert set(stored) == {"submit", "reconcile", "report"}
        assert after == stored
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
        assert _lease_holder(engine) is None
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        engine.dispose()


def _messages(tmp_path: Path, name: str) -> list[str]:
    return [line["msg"] for line in _log_lines(tmp_path, name)]


# --- status ----------------------------------------------------------------------------------------


def _handoff(n: int, state: str, created_at: datetime) -> dict[str, Any]:
    return {
        "id": f"h-{n}",
        "source": "RECYCLE",
        "order_id": f"o-{n}",
        "transaction_id": f"t-{n}",
        "gateway_id": "flexfactor-main",
        "declining_gateway_id": "nmi-main",
        "billing_cycle": 2,
        "amount_minor": 2999,
        "currency": "USD",
        "idempotency_key": f"00000000-0000-0000-0000-{n:012d}",
        "request_body": "{}",
        "dedupe_key": f"d-{n}",
        "state": state,
        "created_at": created_at,
        "updated_at": created_at,
    }


def test_given_runs_hand_offs_and_a_lease_when_status_is_read_then_it_shows_last_runs_age_buckets_and_roles(
    db_url: str,
) -> None:
    # given
    engine = make_engine(db_url)
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    ages = [
        timedelta(0),
        timedelta(days=4) - timedelta(seconds=1),  # still 3 days old
        timedelta(days=4),  # exactly 4 days: the next bucket
        timedelta(days=8) - timedelta(seconds=1),
        timedelta(days=8),
        timedelta(days=22) - timedelta(seconds=1),
        timedelta(days=22),
    ]
    with engine.begin() as conn:
        for n, age in enumerate(ages):
            conn.execute(
                insert(Handoff).values(**_handoff(n, "SUBMITTED" if n % 2 else "PENDING", now - age))
            )
        conn.execute(insert(Handoff).values(**_handoff(99, "APPROVED", now)))  # settled: not pending
        # Its outcome, news of two hours ago, waits to be applied.
        conn.execute(
            insert(OutcomeQueue).values(
                handoff_id="h-99",
                state="APPROVED",
                outcome_at=now - timedelta(hours=2),
                outcome_source="WEBHOOK",
                source="RECYCLE",
                order_id="o-99",
                declining_gateway_id="nmi-main",
                amount_minor=2999,
                billing_cycle=2,
            )
        )
    for job, error in (("submit", None), ("reconcile", "RuntimeError: boom")):
        for hours in (30, 6):
            at = now - timedelta(hours=hours)
            run_id = start_run(engine, job, logical_at=at, now=at)
            finish_run(engine, run_id, now=at, counts={"selected": hours}, error=error)
    lease = Lease(engine, FixedClock(now), ttl_s=60)
    assert lease.try_acquire()
    settings_jobs = {"submit": "0 2 * * *", "report": "0 6 * * *"}
    fires = {"submit": ny("2026-06-11 02:00"), "report": ny("2026-06-10 06:00")}
    # when
    status = gather_status(engine, now=now, crons=settings_jobs, next_fire_times=fires)
    lines = render_status(status, NEW_YORK)
    # then
    assert status.pending_by_age == {"0-3": 2, "4-7": 2, "8-14": 1, "15-21": 1, ">21": 1}
    assert {job: (r.status, r.counts) for job, r in status.last_runs.items()} == {
        "submit": ("SUCCEEDED", {"selected": 6}),
        "reconcile": ("FAILED", {"selected": 6}),
    }
    assert status.active is not None
    assert status.active.holder == lease.holder
    assert [s.next_fire_at for s in status.schedule] == [fires["submit"], fires["report"]]
    assert "  0-3: 2  4-7: 2  8-14: 1  15-21: 1  >21: 1" in lines
    assert lines[-1] == "outcomes waiting to be applied: 1 (oldest 2026-06-10T06:00:00-04:00)"
    assert any("report" in line and "never ran" in lines[i + 1] for i, line in enumerate(lines[:-1]))
    assert any("error: RuntimeError: boom" in line for line in lines)
    engine.dispose()


def test_given_a_configured_database_when_status_runs_on_the_command_line_then_it_prints_the_schedule(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    settings, path = write_settings(tmp_path, sqlite_url)
    # when
    result = CliRunner().invoke(main_cli(), ["status", "--config", str(path)])
    # then
    assert result.exit_code == 0, result.output
    assert "no scheduler is running" in result.output
    expected = next_fire_times(settings, SystemClock().now())["submit"]
    assert expected is not None
    assert f"next {expected.isoformat(timespec='seconds')}" in result.output
    assert "pending hand-offs by age (days):" in result.output


def main_cli() -> Any:
    from recycle_engine.cli import main

    return main


# --- alert hook ------------------------------------------------------------------------------------


def test_given_an_alert_command_when_a_job_fails_then_it_gets_the_message_as_argument_and_environment(
    tmp_path: Path,
) -> None:
    # given: a message with quotes and a semicolon, which must reach the command as plain text
    out = tmp_path / "alert.txt"
    script = tmp_path / "notify-billing"
    script.write_text(
        '#!/bin/sh\nprintf "%s\\n%s\\n%s\\n" "$RECYCLE_ENGINE_ALERT_JOB" "$RECYCLE_ENGINE_ALERT" "$2" > "$1"\n'
    )
    script.chmod(0o755)
    # when: the operator's command line, to which the message is appended as the last argument
    sent = send_alert(
        f"{script} {out}", job="submit", kind="FAILED", reason='bad "x"; rm -rf /', run_id="submit-1"
    )
    # then
    assert sent
    job, env_message, arg_message = out.read_text().splitlines()
    assert job == "submit"
    assert env_message == arg_message == 'recycle-engine submit FAILED: bad "x"; rm -rf /'


@pytest.mark.parametrize(
    ("command", "timeout_s"),
    [("exit 3", 5.0), ("sleep 30", 0.3), ("/nonexistent/notify", 5.0)],
    ids=["non-zero-exit", "timeout", "missing-command"],
)
def test_given_a_broken_alert_command_when_called_then_it_returns_false_quickly_without_raising(
    command: str, timeout_s: float
) -> None:
    # when
    started = time.monotonic()
    sent = send_alert(command, job="report", kind="MISSED", reason="late", timeout_s=timeout_s)
    # then
    assert sent is False
    assert time.monotonic() - started < 5


def test_given_an_alert_url_when_a_job_is_missed_then_it_receives_a_json_post() -> None:
    # given: a loopback HTTP endpoint
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        # when
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        sent = send_alert(url, job="report", kind="MISSED", reason="beyond grace", run_id="report-1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    # then
    assert sent
    [body] = received
    assert (body["job"], body["kind"], body["run_id"]) == ("report", "MISSED", "report-1")
    assert body["message"] == "recycle-engine report MISSED: beyond grace"
