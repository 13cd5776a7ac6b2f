"""The PostgreSQL test databases: a database handed out again is as a fresh copy of the template."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PG_ADMIN_DSN
from tests.pg_databases import PgDatabases

pytestmark = pytest.mark.postgres

AN_ANOMALY = (
    "INSERT INTO anomalies (day, kind, reason, alerted, detected_at)"
    " VALUES (current_date, 'K', 'r', false, now()) RETURNING id"
)


def sql(name: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=name), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def exists(name: str) -> bool:
    return (name,) in sql("postgres", "SELECT datname FROM pg_database")


@pytest.fixture
def databases(pg_template: str) -> Iterator[PgDatabases]:
    databases = PgDatabases(PG_ADMIN_DSN, pg_template)
    yield databases
    databases.close()


def test_given_a_database_written_to_when_given_back_then_the_next_taker_finds_it_empty_with_fresh_ids(
    databases: PgDatabases,
) -> None:
    # given: rows written, and a connection left open holding a lock
    first = databases.take()
    fresh_id = sql(first, AN_ANOMALY)
    sql(first, AN_ANOMALY)
    held = psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=first))
    held.execute("LOCK TABLE anomalies")
    try:
        # when
        databases.give_back(first)
        again = databases.take()
        # then
        assert again == first
        assert sql(again, "SELECT count(*) FROM anomalies") == [(0,)]
        assert sql(again, AN_ANOMALY) == fresh_id
        assert sql(again, "SELECT count(*) FROM alembic_version") == [(1,)]
        databases.give_back(again)
    finally:
        held.close()


def test_given_a_database_whose_schema_a_test_changed_when_given_back_then_it_is_dropped_not_reused(
    databases: PgDatabases,
) -> None:
    # given
    changed = databases.take()
    sql(changed, "CREATE INDEX ix_extra ON anomalies (kind)")
    # when
    databases.give_back(changed)
    other = databases.take()
    # then
    assert other != changed
    assert not exists(changed)
    assert sql(other, "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_extra'") == [(0,)]
    databases.give_back(other)


def test_given_databases_given_back_when_closed_then_none_is_left(databases: PgDatabases) -> None:
    # given
    names = [databases.take() for _ in range(2)]
    for name in names:
        databases.give_back(name)
    # when
    databases.close()
    # then
    assert not [name for name in names if exists(name)]
