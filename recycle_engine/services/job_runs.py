"""Job run records: one row per run of submit, reconcile, report or import, with its counts.

A run is RUNNING until it finishes as SUCCEEDED, INCOMPLETE or FAILED. A run whose process died
(killed, host lost) never finishes itself: the next run to start, and `status`, mark it ABANDONED."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from recycle_engine.domain.night import Night
from recycle_engine.ports import Clock
from recycle_engine.storage import job_run_repo

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "ABANDON_AFTER",
    "abandon_dead_runs",
    "finish_run",
    "new_run_id",
    "pid_alive",
    "start_run",
    "wall_time",
]

# A run still RUNNING this long after it started is taken for dead wherever it ran (no night lasts a
# day); sooner than that only when it ran on this host and its process is gone.
ABANDON_AFTER: Final = timedelta(hours=24)


def wall_time(clock: Clock | None, night: Night) -> datetime:
    """When a job run starts or finishes: the wall clock, or the night's instant without one (tests)."""
    return clock.now() if clock is not None else night.at


def new_run_id(job: str) -> str:
    return f"{job}-{uuid.uuid4().hex[:12]}"


def start_run(
    engine: Engine, job: str, *, logical_at: datetime, now: datetime, run_id: str | None = None
) -> str:
    """Record a RUNNING job run and return its id; runs left RUNNING by dead processes are marked
    ABANDONED first."""
    run_id = run_id or new_run_id(job)
    with engine.begin() as conn:
        _abandon(conn, now=now, host=socket.gethostname(), alive=pid_alive)
        job_run_repo.insert_running_run(
            conn,
            run_id=run_id,
            job=job,
            logical_at=logical_at,
            now=now,
            host=socket.gethostname(),
            pid=os.getpid(),
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
        job_run_repo.finish_run_row(
            conn,
            run_id,
            now=now,
            status="FAILED" if error else "INCOMPLETE" if incomplete else "SUCCEEDED",
            counts_json=json.dumps(dict(counts), sort_keys=True),
            error=error,
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (signal 0 asks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    except OSError:
        return False
    return True


def abandon_dead_runs(
    engine: Engine,
    *,
    now: datetime,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> list[str]:
    """Mark ABANDONED every RUNNING run whose process on this host is gone, or that started more than
    ABANDON_AFTER before `now` wherever it ran; returns their ids."""
    with engine.begin() as conn:
        return _abandon(conn, now=now, host=host or socket.gethostname(), alive=alive)


def _abandon(conn: Connection, *, now: datetime, host: str, alive: Callable[[int], bool]) -> list[str]:
    running = job_run_repo.running_runs(conn)
    abandoned: list[str] = []
    for run in running:
        if run.started_at <= now - ABANDON_AFTER:
            reason = f"abandoned: still running {ABANDON_AFTER.total_seconds() / 3600:g} h after its start"
        elif run.host == host and run.pid is not None and run.pid != os.getpid() and not alive(run.pid):
            reason = f"abandoned: its process {run.pid} on {host} is gone"
        else:
            continue
        if job_run_repo.abandon_run(conn, run.id, now=now, reason=reason):
            abandoned.append(run.id)
    return abandoned
