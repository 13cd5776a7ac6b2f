"""The unattended scheduler: APScheduler 3.x jobs from settings, a persistent job store, one leader."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, insert, select, update

from jobs.alerts import send_alert
from jobs.leader import Leadership, Lease, lease_seconds
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.ports import Clock
from recycle_engine.services.job_runs import new_run_id
from recycle_engine.services.status import JOBSTORE_TABLE
from recycle_engine.settings import Settings
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import JobRun

__all__ = [
    "JOB_TARGETS",
    "JobOutcomes",
    "LocalCronTrigger",
    "SchedulerProcess",
    "build_scheduler",
    "crontab_weekdays",
    "next_fire_times",
    "serve",
    "sync_jobs",
]

log = logging.getLogger(__name__)

# Job name in settings.yaml -> entry point, as a text reference so the job store can persist it.
JOB_TARGETS: Final[Mapping[str, str]] = {
    "submit": "jobs.nightly_submit:run",
    "reconcile": "jobs.nightly_reconcile:run",
    "report": "jobs.daily_report:run",
}
DEFAULT_GRACE_SECONDS: Final = 3600  # JobSettings' default; every job also sets its own
_CRON_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 and 7 are Sunday


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field with numbers rewritten as names (APScheduler 3 counts 0 as Monday)."""
    parts = []
    for part in field.split(","):
        if part == "*" or any(ch.isalpha() for ch in part):
            parts.append(part)  # names mean the same to crontab and APScheduler
            continue
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = int(first_text), int(last_text)
        else:
            first = int(span)
            last = 7 if step_text else first  # crontab reads "1/2" as "1-7/2"
        parts.extend(_CRON_WEEKDAYS[day % 7] for day in range(first, last + 1, step))
    return ",".join(dict.fromkeys(parts))


class LocalCronTrigger(CronTrigger):  # type: ignore[misc]
    """A crontab schedule in the merchant's timezone that fires once per local wall-clock time.

    Plain CronTrigger fires a 01:30 job twice on a fall-back night (01:30 EDT, then 01:30 EST); a
    nightly billing run must not. On a spring-forward night a time that does not exist (02:30 in
    New York) fires once, an hour later by the wall clock (03:30 EDT), as APScheduler does.
    """

    @classmethod
    def from_settings(cls, cron: str, timezone: ZoneInfo) -> LocalCronTrigger:
        minute, hour, day, month, weekday = cron.split()
        expr = " ".join((minute, hour, day, month, crontab_weekdays(weekday)))
        trigger: LocalCronTrigger = cls.from_crontab(expr, timezone=timezone)
        return trigger

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        following: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if (
            following
            and previous_fire_time
            and _wall(following, self.timezone) == _wall(previous_fire_time, self.timezone)
        ):
            following = super().get_next_fire_time(following, following)  # the repeated hour
        return following


def _wall(instant: datetime, timezone: ZoneInfo) -> datetime:
    return instant.astimezone(timezone).replace(tzinfo=None)


def next_fire_times(settings: Settings, now: datetime) -> dict[str, datetime | None]:
    """When each configured job fires next after `now`, from its cron in the settings timezone."""
    return {
        name: LocalCronTrigger.from_settings(job.cron, settings.timezone).get_next_fire_time(None, now)
        for name, job in settings.jobs.items()
    }


class JobOutcomes:
    """Turns APScheduler job events into job_runs rows and alerts: failed, missed and overrun runs."""

    def __init__(self, engine: Engine, clock: Clock, alert_hook: str | None) -> None:
        self.engine = engine
        self.clock = clock
        self.alert_hook = alert_hook

    def on_event(self, event: Any) -> None:
        """APScheduler listener; never raises, since a listener error would only be logged anyway."""
        try:
            if event.code == EVENT_JOB_ERROR:
                self.failed(event.job_id, event.scheduled_run_time, event.exception)
            elif event.code == EVENT_JOB_MISSED:
                late = self.clock.now() - event.scheduled_run_time
                reason = f"not started: {late} late, beyond its misfire grace time"
                self.missed(event.job_id, [event.scheduled_run_time], reason)
            elif event.code == EVENT_JOB_MAX_INSTANCES:
                reason = "not started: its previous run was still running (overran)"
                self.missed(event.job_id, list(event.scheduled_run_times), reason)
        except Exception:
            log.exception("could not record a job outcome", extra={"job": getattr(event, "job_id", None)})

    def missed(self, job: str, scheduled: Sequence[datetime], reason: str) -> list[str]:
        """Record one MISSED run per scheduled time and send one alert; returns the run ids."""
        now = self.clock.now()
        rows = [_closed_run(job, at, now, "MISSED", reason) for at in scheduled]
        with self.engine.begin() as conn:
            conn.execute(insert(JobRun), rows)
        run_ids = [str(row["id"]) for row in rows]
        times = ", ".join(at.isoformat() for at in scheduled)
        log.error(
            "job missed", extra={"job": job, "run_ids": run_ids, "scheduled_at": times, "reason": reason}
        )
        send_alert(self.alert_hook, job=job, kind="MISSED", reason=f"{times}: {reason}", run_id=run_ids[-1])
        return run_ids

    def failed(self, job: str, scheduled_at: datetime, exc: BaseException) -> str:
        """Make sure a failed run is recorded FAILED with its error (once), log it and alert."""
        error = f"{type(exc).__name__}: {exc}"
        run_id = self._record_failure(job, scheduled_at, error)
        log.error("job failed", extra={"job": job, "run_id": run_id, "error": error})
        send_alert(self.alert_hook, job=job, kind="FAILED", reason=error, run_id=run_id)
        return run_id

    def _record_failure(self, job: str, scheduled_at: datetime, error: str) -> str:
        # The service records its own failures; a job that broke before the service started (bad
        # settings, database down) left no row, so the scheduler writes one.
        now = self.clock.now()
        mine = (JobRun.job == job, JobRun.host == socket.gethostname(), JobRun.pid == os.getpid())
        with self.engine.begin() as conn:
            row = conn.execute(
                select(JobRun.id, JobRun.status)
                .where(*mine, JobRun.started_at >= scheduled_at, JobRun.status.in_(("FAILED", "RUNNING")))
                .order_by(JobRun.started_at.desc())
                .limit(1)
            ).first()
            if row and row.status == "FAILED":
                return str(row.id)
            if row:
                conn.execute(
                    update(JobRun)
                    .where(JobRun.id == row.id)
                    .values(status="FAILED", finished_at=now, error=error)
                )
                return str(row.id)
            row_values = _closed_run(job, scheduled_at, now, "FAILED", error)
            conn.execute(insert(JobRun).values(row_values))
        return str(row_values["id"])


def _closed_run(job: str, logical_at: datetime, now: datetime, status: str, error: str) -> dict[str, Any]:
    """A job_runs row for a run that ended as soon as it was recorded."""
    return {
        "id": new_run_id(job),
        "job": job,
        "logical_at": logical_at,
        "started_at": now,
        "finished_at": now,
        "status": status,
        "error": error,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def build_scheduler(
    settings: Settings,
    *,
    jobstore: BaseJobStore,
    outcomes: JobOutcomes,
    scheduler_cls: type[BaseScheduler] = BackgroundScheduler,
    executor: BaseExecutor | None = None,
) -> BaseScheduler:
    """An unstarted scheduler in the settings timezone with explicit job defaults and the listener."""
    scheduler = scheduler_cls(
        timezone=settings.timezone,
        jobstores={"default": jobstore},
        # One worker: jobs never run side by side and queue in fire-time order, so after downtime
        # or an overrunning reconcile the report still starts only once reconcile has ended.
        executors={"default": executor or ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": DEFAULT_GRACE_SECONDS},
    )
    scheduler.add_listener(outcomes.on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


def sync_jobs(
    scheduler: BaseScheduler,
    settings: Settings,
    config_path: str,
    *,
    outcomes: JobOutcomes,
    now: datetime,
    targets: Mapping[str, str] = JOB_TARGETS,
) -> None:
    """Make the (started, paused) scheduler's job store match the settings.

    A job whose cron is unchanged keeps its stored next run time, so a run that fell due while no
    scheduler was active is caught up once on resume (or reported missed beyond its grace time).
    Nights before that one were coalesced away; they are recorded MISSED here.
    """
    wanted = {name: job for name, job in settings.jobs.items() if name in targets}
    for stored in scheduler.get_jobs():
        if stored.id not in wanted:
            log.info("removing a job no longer in settings", extra={"job": stored.id})
            scheduler.remove_job(stored.id)
    for name, job in wanted.items():
        trigger = LocalCronTrigger.from_settings(job.cron, settings.timezone)
        options: dict[str, Any] = {
            "func": targets[name],
            "args": (config_path,),
            "name": name,
            "misfire_grace_time": job.misfire_grace_seconds,
            "coalesce": True,
            "max_instances": 1,
        }
        existing = scheduler.get_job(name)
        if existing is None:
            scheduler.add_job(id=name, trigger=trigger, **options)
            continue
        if _same_schedule(existing.trigger, trigger):
            _record_coalesced(existing, now, outcomes)
        else:
            # A new cron starts from now: what the old schedule still owed is not owed any more.
            log.info("job schedule changed", extra={"job": name, "cron": job.cron})
            scheduler.reschedule_job(name, trigger=trigger)
        scheduler.modify_job(name, **options)


def _same_schedule(stored: Any, wanted: LocalCronTrigger) -> bool:
    return (
        type(stored) is type(wanted)
        and str(stored) == str(wanted)
        and str(stored.timezone) == str(wanted.timezone)
    )


def _record_coalesced(job: Any, now: datetime, outcomes: JobOutcomes) -> None:
    owed: list[datetime] = []
    at: datetime | None = job.next_run_time
    while at is not None and at <= now and len(owed) < 1000:
        owed.append(at)
        at = job.trigger.get_next_fire_time(at, now)
    if len(owed) > 1:
        latest = owed[-1].isoformat()
        outcomes.missed(
            job.id, owed[:-1], f"the scheduler was down; only the latest run ({latest}) is caught up"
        )


class SchedulerProcess:
    """The `scheduler` command: standby until it holds the lease, then the jobs, until stopped."""

    def __init__(
        self,
        settings: Settings,
        config_path: Path,
        *,
        clock: Clock | None = None,
        targets: Mapping[str, str] = JOB_TARGETS,
        lease_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = str(config_path.resolve())
        self.clock = clock or SystemClock()
        self.targets = targets
        self.engine = make_engine(settings.database_url, pool_size=2)
        self.lease = Lease(self.engine, self.clock, ttl_s=lease_seconds() if lease_s is None else lease_s)
        self.leadership = Leadership(self.lease)
        self.outcomes = JobOutcomes(self.engine, self.clock, settings.alert_command)
        self.scheduler: BaseScheduler | None = None

    @property
    def role(self) -> str:
        return self.leadership.role

    def request_stop(self, signum: int = 0) -> None:
        """Ask for a graceful stop. Only sets a flag, so it is safe inside a signal handler."""
        self.leadership.request_stop(signum)

    def run(self) -> None:
        """Wait as standby or run as the active scheduler until a stop is requested."""
        log.info(
            "scheduler starting",
            extra={"holder": self.lease.holder, "lease_s": self.lease.ttl.total_seconds()},
        )
        try:
            self.leadership.run(self._run_jobs)
        finally:
            self.engine.dispose()
        log.info(
            "scheduler stopped", extra={"holder": self.lease.holder, "signal": self.leadership.stop_signal}
        )

    def _run_jobs(self, should_stop: Callable[[], bool]) -> None:
        jobstore = SQLAlchemyJobStore(
            engine=make_engine(self.settings.database_url, pool_size=2), tablename=JOBSTORE_TABLE
        )
        scheduler = build_scheduler(self.settings, jobstore=jobstore, outcomes=self.outcomes)
        self.scheduler = scheduler
        try:
            # Paused first: the stored jobs are brought in line with settings before any can fire.
            scheduler.start(paused=True)
            sync_jobs(
                scheduler,
                self.settings,
                self.config_path,
                outcomes=self.outcomes,
                now=self.clock.now(),
                targets=self.targets,
            )
            scheduler.resume()
            next_runs = {job.id: str(job.next_run_time) for job in scheduler.get_jobs()}
            log.info("active: running the jobs", extra={"holder": self.lease.holder, "next_runs": next_runs})
            while not should_stop():
                time.sleep(0.1)
        finally:
            if scheduler.running:
                # The services have no stop flag yet: a running job finishes whole, as do jobs
                # already queued behind it (their next run time is stored, so skipping them would
                # lose them).
                log.info(
                    "stopping: waiting for running jobs to finish",
                    extra={"signal": self.leadership.stop_signal},
                )
                scheduler.shutdown(wait=True)
            self.scheduler = None


def serve(config_path: Path) -> None:
    """`recycle-engine scheduler`: run until SIGTERM or SIGINT, then stop gracefully and return."""
    from recycle_engine.bootstrap import load_settings_file

    process = SchedulerProcess(load_settings_file(config_path), config_path)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        process.request_stop(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    process.run()
