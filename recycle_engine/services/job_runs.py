"""Job run records: one row per run of submit, reconcile, report or import, with its counts."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Engine, insert, update

from recycle_engine.storage.models import JobRun

__all__ = ["finish_run", "new_run_id", "start_run"]


def new_run_id(job: str) -> str:
    return f"{job}-{uuid.uuid4().hex[:12]}"


def start_run(
    engine: Engine, job: str, *, logical_at: datetime, now: datetime, run_id: str | None = None
) -> str:
    """Record a RUNNING job run and return its id."""
    run_id = run_id or new_run_id(job)
    with engine.begin() as conn:
        conn.execute(
            insert(JobRun).values(
                id=run_id,
                job=job,
                logical_at=logical_at,
                started_at=now,
                status="RUNNING",
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        )
    return run_id


def finish_run(
    engine: Engine,
    run_id: str,
    *,
    now: datetime,
    counts: Mapping[str, int | float | str],
    error: str | None = None,
    incomplete: bool = False,
) -> None:
    """Close a run as SUCCEEDED, FAILED with its error, or INCOMPLETE (it ended normally but left work
    undone, such as hand-offs FlexFactor's rate limit kept from being sent)."""
    with engine.begin() as conn:
        conn.execute(
            update(JobRun)
            .where(JobRun.id == run_id)
            .values(
                finished_at=now,
                status="FAILED" if error else "INCOMPLETE" if incomplete else "SUCCEEDED",
                counts=json.dumps(dict(counts), sort_keys=True),
                error=error,
            )
        )
