"""The Alembic history builds the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Base


def test_given_a_migrated_database_then_it_matches_the_models_exactly(db_url: str) -> None:
    # given
    engine = make_engine(db_url)
    # when
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    # then
    assert diff == []
    assert {"handoffs", "handoff_events", "subscriptions", "declines", "changes"} <= tables


def test_given_a_sqlite_database_then_it_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert mode == "wal"


def test_given_a_migrated_database_then_the_rollup_triggers_watch_handoffs(db_url: str) -> None:
    # given: a later migration that recreates `handoffs` (SQLite batch mode) would drop them silently
    engine = make_engine(db_url)
    # when
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            stmt = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = 'handoffs'::regclass"
        else:
            stmt = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'handoffs'"
        names = set(conn.exec_driver_sql(stmt).scalars())
    engine.dispose()
    # then
    assert names == {"trg_handoffs_rollup_insert", "trg_handoffs_rollup_update", "trg_handoffs_rollup_delete"}
