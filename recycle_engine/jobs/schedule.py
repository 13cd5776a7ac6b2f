"""The unattended scheduler: APScheduler 3.x jobs from settings, a persistent job store, one leader."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from recycle_engine.bootstrap import system_clock
from recycle_engine.config import Settings
from recycle_engine.jobs.leader import Leadership, Lease, lease_seconds
from recycle_engine.jobs.outcomes import JobOutcomes
from recycle_engine.jobs.triggers import LocalCronTrigger, crontab_weekdays
from recycle_engine.ports import Clock
from recycle_engine.services.reporting.status import JOBSTORE_TABLE
from recycle_engine.storage.db import make_engine

# Re-exported: JobOutcomes (outcomes.py), LocalCronTrigger and crontab_weekdays (triggers.py).
# LocalCronTrigger must stay importable here: job stores written before the move hold triggers
# pickled as recycle_engine.jobs.schedule.LocalCronTrigger.
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
    "pull": "recycle_engine.jobs.crm_sync:pull",
    "submit": "recycle_engine.jobs.nightly_submit:run",
    "reconcile": "recycle_engine.jobs.nightly_reconcile:run",
    "report": "recycle_engine.jobs.daily_report:run",
    "push": "recycle_engine.jobs.crm_sync:push",
}


def next_fire_times(settings: Settings, now: datetime) -> dict[str, datetime | None]:
    """When each configured job fires next after `now`, from its cron in the settings timezone."""
    return {
        name: LocalCronTrigger.from_settings(job.cron, settings.timezone).get_next_fire_time(None, now)
        for name, job in settings.jobs.items()
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
        job_defaults={"coalesce": True, "max_instances": 1},  # each job sets its misfire grace
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
        self.clock = clock or system_clock()
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
            # Offered only now: a caller that saw it while sync_jobs ran could look for a job not yet in.
            self.scheduler = scheduler
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
    from recycle_engine.config import Need

    process = SchedulerProcess(
        load_settings_file(config_path, Need.FLEXFACTOR, Need.NMI, Need.EMAIL), config_path
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        process.request_stop(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    process.run()
