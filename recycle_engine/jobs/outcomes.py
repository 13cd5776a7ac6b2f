"""Scheduler job events -> job_runs rows and alerts: failed, missed and overrun runs."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from sqlalchemy import Engine, insert, select, update

from recycle_engine.adapters.alerts import send_alert
from recycle_engine.ports import Clock
from recycle_engine.services.job_runs import new_run_id
from recycle_engine.storage.models import JobRun

__all__ = ["JobOutcomes"]

# The scheduler's logger: these lines were logged from recycle_engine/jobs/schedule.py and keep its name.
log = logging.getLogger("recycle_engine.jobs.schedule")


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
