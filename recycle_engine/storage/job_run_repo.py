"""Job run rows: recording a run's start and finish, and the RUNNING runs a dead process left."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Row, insert, select, update

from recycle_engine.storage.models import JobRun

__all__ = ["abandon_run", "finish_run_row", "insert_running_run", "running_runs"]


def insert_running_run(
    conn: Connection, *, run_id: str, job: str, logical_at: datetime, now: datetime, host: str, pid: int
) -> None:
    """Write a new RUNNING job run started at `now`."""
    conn.execute(
        insert(JobRun).values(
            id=run_id,
            job=job,
            logical_at=logical_at,
            started_at=now,
            status="RUNNING",
            host=host,
            pid=pid,
        )
    )


def finish_run_row(
    conn: Connection, run_id: str, *, now: datetime, status: str, counts_json: str, error: str | None
) -> None:
    """Close a run with its final status, counts (JSON text) and error."""
    conn.execute(
        update(JobRun)
        .where(JobRun.id == run_id)
        .values(finished_at=now, status=status, counts=counts_json, error=error)
    )


def running_runs(conn: Connection) -> Sequence[Row[str, str | None, int | None, datetime]]:
    """(id, host, pid, started_at) of every run still RUNNING."""
    return conn.execute(
        select(JobRun.id, JobRun.host, JobRun.pid, JobRun.started_at).where(JobRun.status == "RUNNING")
    ).all()


def abandon_run(conn: Connection, run_id: str, *, now: datetime, reason: str) -> bool:
    """Mark a run ABANDONED with its reason, only if it is still RUNNING (it may have finished since it
    was read); whether it was."""
    done = conn.execute(
        update(JobRun)
        .where(JobRun.id == run_id, JobRun.status == "RUNNING")
        .values(status="ABANDONED", finished_at=now, error=reason)
    )
    return bool(done.rowcount)
