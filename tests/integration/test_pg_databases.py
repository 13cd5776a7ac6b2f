"""The PostgreSQL test databases: a database handed out again is as a fresh copy of the template."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PG_ADMIN_DSN
from tests.pg_databases import PgDatabases

pytestmark = pytest.mark.postgres


def sql(name: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=name), autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def databases(pg_template: str) -> PgDatabases:
    return PgDatabases(PG_ADMIN_DSN, pg_template)


def test_given_a_database_written_to_when_given_back_then_the_next_taker_finds_it_empty_with_fresh_ids(
    databases: PgDatabases,
) -> None:
    # given
    first = databases.take()
    fresh_id = sql(
        first,
        "INSERT INTO anomalies (day, kind, reason, alerted, detected_at) VALUES (current_date, 'K', 'r', false, now()) RETURNING id",
    )
    sql(
        first,
        "INSERT INTO anomalies (day, kind, reason, alerted, detected_at) VALUES (current_date, 'K', 'r', false, now())",
    )
    held = psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=first))  # left open, mid-transaction
    held.execute("LOCK TABLE anomalies")

    # when
    databases.give_back(first)
    taken = [databases.take() for _ in range(3)]  # the wiped one among fresh copies
    try:
        # then
        assert first in taken
        assert sql(first, "SELECT count(*) FROM anomalies") == [(0,)]
        again = sql(
            first,
            "INSERT INTO anomalies (day, kind, reason, alerted, detected_at) VALUES (current_date, 'K', 'r', false, now()) RETURNING id",
        )
        assert again == fresh_id
        assert sql(first, "SELECT version_num FROM alembic_version") == sql(
            taken[-1], "SELECT version_num FROM alembic_version"
        )
    finally:
        held.close()
        for name in taken:
            databases.give_back(name)
        databases.close()


def test_given_a_database_whose_schema_a_test_changed_when_given_back_then_it_is_never_handed_out_again(
    databases: PgDatabases,
) -> None:
    # given
    changed = databases.take()
    sql(changed, "CREATE INDEX ix_extra ON anomalies (kind)")

    # when
    databases.give_back(changed)
    taken = [databases.take() for _ in range(3)]
    try:
        # then
        assert changed not in taken
        for name in taken:
            assert sql(name, "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_extra'") == [(0,)]
    finally:
        for name in taken:
            databases.give_back(name)
        databases.close()
    names = sql("postgres", "SELECT datname FROM pg_database")
    assert (changed,) not in names
