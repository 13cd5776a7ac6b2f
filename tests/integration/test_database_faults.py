"""Database faults on real databases: a SQLite file locked past its busy timeout, a disk I/O error, a
damaged file, PostgreSQL on a closed port and a lost connection. Each is a StorageError subclass at the
storage edge and one line from the command line, exit code 1, no traceback (one at DEBUG)."""

from __future__ import annotations

import os
import resource
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, text

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.cli import main
from recycle_engine.errors import DatabaseBusy, DatabaseDiskError, DatabaseUnreachable
from recycle_engine.services.job_runs import start_run
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Decline, JobRun
from tests.integration.test_import_declines import FLEXFACTOR_ENV, SETTINGS_YAML, a_decline, write_feed


def settings_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS_YAML.format(db_url=db_url), encoding="utf-8")
    return path


def import_cli(tmp_path: Path, db_url: str, *options: str) -> tuple[int, str]:
    """`import declines` of a two-row feed through the command line: (exit code, its output)."""
    feed = write_feed(tmp_path / "feed.csv", [a_decline(), a_decline(transaction_id="T-2")])
    config = settings_file(tmp_path, db_url)
    result = CliRunner(env=FLEXFACTOR_ENV).invoke(
        main, [*options, "import", "declines", str(feed), "--config", str(config)]
    )
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture
def locked_sqlite(sqlite_url: str) -> Iterator[str]:
    """A migrated SQLite file another connection holds the write lock of, until the test ends."""
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield sqlite_url
    holder.rollback()
    holder.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_given_a_sqlite_file_locked_past_the_timeout_when_a_run_starts_then_database_busy_names_it(
    locked_sqlite: str, clock: FixedClock
) -> None:
    # given
    engine = make_engine(f"{locked_sqlite}?timeout=0.2")
    # when
    with pytest.raises(DatabaseBusy) as caught:
        start_run(engine, "import", logical_at=clock.now(), now=clock.now())
    engine.dispose()
    # then
    message = str(caught.value)
    assert locked_sqlite in message
    assert "0.2 s busy timeout" in message
    assert "?timeout=" in message


def test_given_a_locked_sqlite_file_when_importing_from_the_command_line_then_one_line_and_exit_1(
    tmp_path: Path, locked_sqlite: str
) -> None:
    # when
    code, output = import_cli(tmp_path, f"{locked_sqlite}?timeout=0.2")
    # then
    assert code == 1
    assert "Traceback" not in output
    assert len(error_lines(output)) == 1
    assert error_lines(output)[0].startswith(f"error: database {locked_sqlite} is locked")


@pytest.mark.parametrize("command", [["run", "submit"], ["run", "reconcile"], ["status"], ["db", "upgrade"]])
def test_given_a_locked_sqlite_file_when_any_command_runs_then_one_line_and_exit_1(
    tmp_path: Path, locked_sqlite: str, command: list[str]
) -> None:
    # given
    config = settings_file(tmp_path, f"{locked_sqlite}?timeout=0.1")
    # when
    result = CliRunner(env=FLEXFACTOR_ENV).invoke(main, [*command, "--config", str(config)])
    # then
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert line.startswith(f"error: database {locked_sqlite} is locked")


def test_given_a_locked_sqlite_file_when_run_at_debug_level_then_the_traceback_is_logged(
    tmp_path: Path, locked_sqlite: str
) -> None:
    # when
    code, output = import_cli(tmp_path, f"{locked_sqlite}?timeout=0.1", "--log-level", "DEBUG")
    # then
    assert code == 1
    assert "Traceback" in output
    assert "database is locked" in output  # the driver's error, chained as the cause


def test_given_the_lock_released_when_importing_again_then_the_state_is_intact_and_the_feed_is_stored(
    tmp_path: Path, sqlite_url: str
) -> None:
    # given: a first import refused by a lock
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    refused, _ = import_cli(tmp_path, f"{sqlite_url}?timeout=0.1")
    holder.rollback()
    holder.close()
    # when
    code, output = import_cli(tmp_path, sqlite_url)
    # then
    assert (refused, code) == (1, 0), output
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert sorted(conn.scalars(select(Decline.transaction_id))) == ["T-1", "T-2"]
        assert [r.status for r in conn.execute(select(JobRun))] == ["SUCCEEDED"]
    engine.dispose()


def test_given_a_disk_that_refuses_writes_when_importing_then_a_disk_error_line_and_exit_1(
    tmp_path: Path, sqlite_url: str
) -> None:
    # given: the process may not grow any file past 64 KiB more than the database, so the write-ahead
    # log of a 3,000-row import fails with SQLite's "disk I/O error"
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    limit = database.stat().st_size + 64 * 1024
    rows = [a_decline(transaction_id=f"T-{n}", order_id=f"O-{n}", purchase_id=f"P-{n}") for n in range(3000)]
    feed = write_feed(tmp_path / "feed.csv", rows)
    config = settings_file(tmp_path, sqlite_url)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # when
    done = subprocess.run(
        [sys.executable, "-m", "recycle_engine", "import", "declines", str(feed), "--config", str(config)],
        env={**os.environ, **FLEXFACTOR_ENV},
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=120,
        check=False,
    )
    # then
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert error_lines(done.stderr) == [line for line in done.stderr.splitlines() if line.startswith("error")]
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: database {sqlite_url} failed on disk (disk I/O error)")
    assert str(database.parent) in line


def test_given_a_damaged_sqlite_file_when_a_run_starts_then_database_disk_error(
    tmp_path: Path, clock: FixedClock
) -> None:
    # given
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database, " * 512)
    engine = make_engine(f"sqlite:///{damaged}")
    # when / then
    with pytest.raises(DatabaseDiskError, match="file is not a database"):
        start_run(engine, "import", logical_at=clock.now(), now=clock.now())
    engine.dispose()


@pytest.mark.postgres
def test_given_postgresql_on_a_closed_port_when_importing_from_the_command_line_then_one_line_and_exit_1(
    tmp_path: Path, closed_port: int, pg_template: str
) -> None:
    # when
    url = f"postgresql+psycopg://recycler:s3cret-pw@127.0.0.1:{closed_port}/recycle"
    code, output = import_cli(tmp_path, url)
    # then
    assert code == 1
    assert "Traceback" not in output
    (line,) = error_lines(output)
    assert line.startswith(
        f"error: cannot reach database postgresql+psycopg://recycler:***@127.0.0.1:{closed_port}"
    )
    assert "Connection refused" in line
    assert "s3cret-pw" not in output


@pytest.mark.postgres
def test_given_a_postgresql_connection_terminated_mid_command_when_it_queries_then_database_unreachable(
    pg_url: str,
) -> None:
    # given
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # when
        with pytest.raises(DatabaseUnreachable) as caught:
            conn.execute(text("SELECT 1"))
    # then: the message names the database and the pool recovers on the next connection
    assert str(caught.value).startswith("lost the connection to database postgresql+psycopg://")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


def test_given_a_mapped_engine_on_a_closed_port_when_healthz_is_asked_then_it_answers_503(
    tmp_path: Path, closed_port: int
) -> None:
    # given
    from recycle_engine.web.webhook_app import create_app, serving
    from tests.integration.test_webhook_service import T0, a_settings

    engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{closed_port}/none")
    settings = a_settings(tmp_path, "sqlite:///unused.db")
    # when
    with serving(create_app(settings, engine, FixedClock(T0))) as url:
        answer = requests.get(f"{url}/healthz", timeout=10)
    engine.dispose()
    # then
    assert (answer.status_code, answer.json()["database"]) == (503, "down")
