"""Job run records: a finish stamped by the clock at the finish, and runs whose process died marked ABANDONED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, insert, select

from recycle_engine.services.job_runs import abandon_dead_runs, finish_run, start_run
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import JobRun
from tests.factories import SANDBOX_ENV, a_settings_file

STARTED = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)


class SteppingClock:
    """A clock that moves `step` on each reading, as a run's real time does."""

    def __init__(self, at: datetime, step: timedelta) -> None:
        self.at, self.step = at, step

    def now(self) -> datetime:
        self.at += self.step
        return self.at


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def _running(engine: Engine, run_id: str, *, started: datetime, host: str, pid: int | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(JobRun).values(
                id=run_id,
                job="submit",
                logical_at=started,
                started_at=started,
                status="RUNNING",
                host=host,
                pid=pid,
            )
        )


def _runs(engine: Engine) -> dict[str, tuple[str, datetime | None, str | None]]:
    with engine.connect() as conn:
        return {r.id: (r.status, r.finished_at, r.error) for r in conn.execute(select(JobRun))}


def test_given_a_run_that_takes_time_when_it_finishes_then_finished_at_is_read_at_the_finish(
    db_url: str,
) -> None:
    # given
    engine = make_engine(db_url)
    clock = SteppingClock(STARTED, timedelta(minutes=7))
    run_id = start_run(engine, "submit", logical_at=STARTED, now=clock.now())

    # when
    finish_run(engine, run_id, now=clock.now(), counts={"sent": 1})

    # then
    with engine.connect() as conn:
        row = conn.execute(select(JobRun.started_at, JobRun.finished_at, JobRun.status)).one()
    assert row.finished_at - row.started_at == timedelta(minutes=7)
    assert row.status == "SUCCEEDED"
    engine.dispose()


def test_given_runs_left_running_when_the_next_run_starts_then_the_dead_and_the_day_old_are_abandoned(
    db_url: str,
) -> None:
    # given: one killed on this host, one a day old on another host, one alive here, one recent elsewhere
    engine = make_engine(db_url)
    here = socket.gethostname()
    now = STARTED + timedelta(hours=1)
    _running(engine, "killed", started=STARTED, host=here, pid=_dead_pid())
    _running(engine, "day-old", started=now - timedelta(hours=25), host="other-host", pid=1)
    _running(engine, "alive", started=STARTED, host=here, pid=os.getppid())
    _running(engine, "elsewhere", started=STARTED, host="other-host", pid=_dead_pid())

    # when
    new = start_run(engine, "submit", logical_at=now, now=now)

    # then
    runs = _runs(engine)
    assert {k: v[0] for k, v in runs.items()} == {
        "killed": "ABANDONED",
        "day-old": "ABANDONED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        new: "RUNNING",
    }
    assert runs["killed"][1] == now
    assert "is gone" in str(runs["killed"][2])
    assert "24 h" in str(runs["day-old"][2])
    assert abandon_dead_runs(engine, now=now) == []  # nothing more to mark
    engine.dispose()


def test_given_a_killed_run_when_status_looks_then_it_shows_the_run_abandoned(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    engine = make_engine(sqlite_url)
    _running(
        engine,
        "submit-killed",
        started=datetime.now(UTC) - timedelta(minutes=5),
        host=socket.gethostname(),
        pid=_dead_pid(),
    )
    path = a_settings_file(tmp_path, db_url=sqlite_url)
    from recycle_engine.cli import main

    # when
    result = CliRunner().invoke(main, ["status", "--config", str(path)], env=SANDBOX_ENV)

    # then
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "submit-killed" in line)
    assert "ABANDONED" in line
    assert "is gone" in line
    assert _runs(engine)["submit-killed"][0] == "ABANDONED"
    engine.dispose()
