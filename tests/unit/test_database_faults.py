"""storage.faults: which driver errors are database faults, and what their one line says; the SQLite
busy timeout read from `?timeout=` in database.url."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from sqlalchemy.engine import make_url

from recycle_engine.config import load_settings
from recycle_engine.config.values import DEFAULT_SQLITE_TIMEOUT_S, sqlite_busy_timeout
from recycle_engine.errors import (
    ConfigError,
    DatabaseBusy,
    DatabaseDiskError,
    DatabaseUnreachable,
    StorageError,
)
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.faults import DatabaseTarget, database_fault

SQLITE = DatabaseTarget.of(make_url("sqlite:////var/lib/recycle/recycle.db?timeout=5"), 5.0)
POSTGRES = DatabaseTarget.of(make_url("postgresql+psycopg://app:pw-secret@db.internal:5432/recycle"))


def sqlite_error(kind: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
    error = kind(message)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("error", "kind", "start"),
    [
        (
            sqlite_error(sqlite3.OperationalError, "database is locked", 5),
            DatabaseBusy,
            "database sqlite:////var/lib/recycle/recycle.db is locked: another process held it past the 5 s",
        ),
        (
            sqlite_error(sqlite3.OperationalError, "disk I/O error", 778),  # SQLITE_IOERR_WRITE
            DatabaseDiskError,
            "database sqlite:////var/lib/recycle/recycle.db failed on disk (disk I/O error); check free "
            "space, permissions and the disk under /var/lib/recycle",
        ),
        (
            sqlite_error(sqlite3.OperationalError, "database or disk is full", 13),
            DatabaseDiskError,
            "database",
        ),
        (
            sqlite_error(sqlite3.DatabaseError, "database disk image is malformed", 11),
            DatabaseDiskError,
            "data",
        ),
        (
            sqlite_error(sqlite3.OperationalError, "unable to open database file", 14),
            DatabaseUnreachable,
            "cannot open database sqlite:////var/lib/recycle/recycle.db (unable to open database file)",
        ),
        (sqlite3.OperationalError("database is locked"), DatabaseBusy, "database"),  # no code: by its text
    ],
)
def test_given_a_sqlite_fault_when_classified_then_its_kind_and_line_name_the_file(
    error: sqlite3.Error, kind: type[StorageError], start: str
) -> None:
    # when
    fault = database_fault(error, SQLITE)
    # then
    assert type(fault) is kind
    assert str(fault).startswith(start)
    assert "\n" not in str(fault)


@pytest.mark.parametrize(
    ("error", "disconnect", "kind", "start"),
    [
        (
            psycopg.OperationalError(
                'connection failed: connection to server at "10.0.0.5", port 5432 failed'
            ),
            False,
            DatabaseUnreachable,
            "cannot reach database postgresql+psycopg://app:***@db.internal:5432/recycle (connection failed",
        ),
        (
            psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
            True,
            DatabaseUnreachable,
            "lost the connection to database postgresql+psycopg://app:***@db.internal:5432/recycle",
        ),
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            True,
            DatabaseUnreachable,
            "lost",
        ),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), False, DatabaseBusy, "database"),
        (psycopg.errors.DiskFull("could not extend file"), False, DatabaseDiskError, "database"),
    ],
)
def test_given_a_postgresql_fault_when_classified_then_its_kind_and_line_name_the_database_without_password(
    error: psycopg.Error, disconnect: bool, kind: type[StorageError], start: str
) -> None:
    # when
    fault = database_fault(error, POSTGRES, is_disconnect=disconnect)
    # then
    assert type(fault) is kind
    assert str(fault).startswith(start)
    assert "pw-secret" not in str(fault)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
        psycopg.errors.UndefinedTable('relation "job_runs" does not exist'),
        sqlite_error(sqlite3.IntegrityError, "UNIQUE constraint failed: declines.transaction_id", 2067),
        sqlite_error(sqlite3.OperationalError, "no such table: job_runs", 1),
    ],
)
def test_given_an_error_that_is_not_a_database_fault_when_classified_then_it_stays_the_callers(
    error: Exception,
) -> None:
    # when / then
    assert database_fault(error, POSTGRES if isinstance(error, psycopg.Error) else SQLITE) is None


@pytest.mark.parametrize(
    ("url", "seconds"),
    [
        ("sqlite:////tmp/a.db", DEFAULT_SQLITE_TIMEOUT_S),
        ("sqlite:////tmp/a.db?timeout=2.5", 2.5),
        ("sqlite:////tmp/a.db?timeout=0", 0.0),
        ("sqlite:////tmp/a.db?timeout=600", 600.0),
    ],
)
def test_given_a_sqlite_url_when_its_busy_timeout_is_read_then_timeout_seconds_or_30(
    url: str, seconds: float
) -> None:
    # when / then
    assert sqlite_busy_timeout(make_url(url)) == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "86401", "nan"])
def test_given_a_bad_timeout_when_loaded_then_config_check_names_database_url(
    tmp_path: Path, value: str
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            timezone: UTC
            database: {{url: "sqlite:///recycle.db?timeout={value}"}}
            gateways: []
            """),
        encoding="utf-8",
    )
    # when
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    # then
    assert [p.path for p in caught.value.problems] == ["database.url"]
    assert f"timeout={value} must be seconds" in caught.value.problems[0].message
    with pytest.raises(ConfigError):
        make_engine(f"sqlite:///{tmp_path}/a.db?timeout={value}")


def test_given_a_timeout_in_the_url_when_an_engine_is_made_then_sqlite_waits_that_long(
    tmp_path: Path,
) -> None:
    # given
    engine = make_engine(f"sqlite:///{tmp_path}/a.db?timeout=2.5")
    # when
    with engine.connect() as conn:
        busy_ms = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    engine.dispose()
    # then
    assert busy_ms == 2500
