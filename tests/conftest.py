"""Shared fixtures: the vendor fixtures, a fixed clock, database URLs over SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recycle_engine.adapters.clock import FixedClock
from tests.pg_databases import PgDatabases

ROOT = Path(__file__).resolve().parents[1]


# The vendor fixtures live in the repository (their origins: tests/fixtures/SOURCES.md).
FIXTURES = ROOT / "tests" / "fixtures" / "flexfactor"


def load_fixture(name: str) -> dict[str, Any]:
    """A vendor artifact from tests/fixtures/flexfactor, unchanged."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 6, 10, 6, 0, tzinfo=UTC))


# --- databases -------------------------------------------------------------------------------
# Every database test runs on SQLite and on PostgreSQL. The schema always comes from the Alembic
# migrations: a template is migrated once per session and each test gets a fresh copy (a SQLite file
# copy; a PostgreSQL copy, or one wiped back to a fresh copy's state: tests/pg_databases.py).


PG_ADMIN_DSN = os.environ.get(
    "RECYCLE_ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_HOST_URL = os.environ.get("RECYCLE_ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recycle_engine.storage.db import upgrade

    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not _pg_available():
        if os.environ.get("RECYCLE_ENGINE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here but not reachable at {PG_ADMIN_DSN}")
        pytest.skip(f"PostgreSQL NOT REACHABLE at {PG_ADMIN_DSN}: PostgreSQL tests skipped")
    import psycopg

    from recycle_engine.storage.db import upgrade

    name = f"re_tmpl_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(f"{PG_HOST_URL}/{name}")
    databases = _PG_DATABASES[name] = PgDatabases(PG_ADMIN_DSN, name)
    try:
        yield name
    finally:
        del _PG_DATABASES[name]
        databases.close()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_PG_DATABASES: dict[str, PgDatabases] = {}  # by template


def _fresh_sqlite(template: Path, tmp_path: Path) -> str:
    path = tmp_path / "recycle.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def _fresh_pg(template: str) -> Iterator[str]:
    databases = _PG_DATABASES[template]
    name = databases.take()
    try:
        yield f"{PG_HOST_URL}/{name}"
    finally:
        databases.give_back(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        yield _fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
    else:
        yield from _fresh_pg(request.getfixturevalue("pg_template"))


@pytest.fixture
def twin_db_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A second fresh database of the same kind as `db_url`, for comparing two ways of doing one thing."""
    if db_url.startswith("sqlite"):
        folder = tmp_path / "twin"
        folder.mkdir()
        yield _fresh_sqlite(request.getfixturevalue("sqlite_template"), folder)
    else:
        yield from _fresh_pg(request.getfixturevalue("pg_template"))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A freshly migrated SQLite database only (for tests that need no PostgreSQL variant)."""
    return _fresh_sqlite(sqlite_template, tmp_path)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A freshly migrated PostgreSQL database only."""
    yield from _fresh_pg(pg_template)


@pytest.fixture
def pg_twin_url(pg_template: str) -> Iterator[str]:
    """A second fresh PostgreSQL database, for comparing two ways of running one night."""
    yield from _fresh_pg(pg_template)
