"""What `status` reads: job runs, open hand-offs by age, queues and counts, the scheduler's rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, case, column, func, inspect, select, table

from recycle_engine.storage.models import (
    CrmReject,
    Handoff,
    JobRun,
    OutcomeQueue,
    ProcessorCharge,
    SchedulerLease,
)

__all__ = [
    "crm_reject_count",
    "latest_run_per_job",
    "live_scheduler_leases",
    "open_handoffs_by_age",
    "outcome_queue_size",
    "recent_runs",
    "stored_next_run_times",
    "unanswered_charge_count",
]


def latest_run_per_job(conn: Connection) -> Sequence[Row[Any]]:
    """The newest job run of each job (a whole JobRun row), by job name."""
    ranked = select(
        JobRun,
        func.row_number()
        .over(partition_by=JobRun.job, order_by=(JobRun.started_at.desc(), JobRun.id.desc()))
        .label("rank"),
    ).subquery()
    return conn.execute(select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.job)).all()


def recent_runs(conn: Connection, limit: int) -> Sequence[Row[Any]]:
    """The `limit` newest job runs (whole JobRun rows), newest first."""
    return conn.execute(
        select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)
    ).all()


def open_handoffs_by_age(
    conn: Connection,
    now: datetime,
    *,
    open_states: Sequence[str],
    buckets: Sequence[tuple[str, int, int | None]],
) -> dict[str, int]:
    """Hand-offs in `open_states` counted by (label, first day, last day) age bucket at `now`; a bucket
    without any is absent. The last bucket takes every age past the others."""
    # Age in whole days: a hand-off is in "0-3" while now - created_at < 4 days, and so on. The
    # database groups, so a book of millions of hand-offs costs one indexed scan.
    whens = [
        (Handoff.created_at > now - timedelta(days=last + 1), label)
        for label, _first, last in buckets
        if last is not None
    ]
    bucket = case(*whens, else_=buckets[-1][0]).label("bucket")
    rows = conn.execute(select(bucket, func.count()).where(Handoff.state.in_(open_states)).group_by(bucket))
    return {label: int(n) for label, n in rows}


def stored_next_run_times(conn: Connection, jobstore_table: str) -> dict[str, float | None] | None:
    """Each stored job's next run time (epoch seconds) in the scheduler's job store, or None when no
    scheduler has created that table yet."""
    if not inspect(conn).has_table(jobstore_table):
        return None
    jobs = table(jobstore_table, column("id"), column("next_run_time"))
    return {
        str(job_id): None if ts is None else float(ts)
        for job_id, ts in conn.execute(select(jobs.c.id, jobs.c.next_run_time))
    }


def live_scheduler_leases(
    conn: Connection, now: datetime, *, active_name: str, standby_prefix: str
) -> Sequence[Row[Any]]:
    """Scheduler lease rows (whole SchedulerLease rows) still live at `now`, the active one's name or a
    standby's prefix, oldest acquired first."""
    return conn.execute(
        select(SchedulerLease)
        .where(SchedulerLease.expires_at > now)
        .where((SchedulerLease.name == active_name) | SchedulerLease.name.startswith(standby_prefix))
        .order_by(SchedulerLease.acquired_at)
    ).all()


def outcome_queue_size(conn: Connection) -> tuple[int, datetime | None]:
    """Final outcomes queued and not yet applied, and the oldest one's outcome time."""
    queued, oldest = conn.execute(select(func.count(), func.min(OutcomeQueue.outcome_at))).one()
    return int(queued), oldest


def unanswered_charge_count(conn: Connection) -> int:
    """Processor charges still PENDING: sent, with the answer lost."""
    return int(conn.execute(select(func.count()).where(ProcessorCharge.state == "PENDING")).scalar_one())


def crm_reject_count(conn: Connection) -> int:
    """CRM rows the import checks rejected."""
    return int(conn.execute(select(func.count()).select_from(CrmReject)).scalar_one())
