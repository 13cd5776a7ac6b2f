"""INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["insert_ignore", "inserted_keys"]


def insert_ignore(
    conn: Connection, model: Any, rows: Sequence[dict[str, Any]], conflict_cols: Sequence[str]
) -> int:
    """Insert rows, skipping those that collide on `conflict_cols`; returns how many were inserted."""
    return len(inserted_keys(conn, model, rows, conflict_cols))


def inserted_keys(
    conn: Connection, model: Any, rows: Sequence[dict[str, Any]], conflict_cols: Sequence[str]
) -> set[tuple[Any, ...]]:
    """Insert rows, skipping those that collide on `conflict_cols`; the `conflict_cols` values of the
    rows really inserted."""
    if not rows:
        return set()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(model).on_conflict_do_nothing(index_elements=list(conflict_cols))
    # rowcount is not reliable for executemany on every driver; RETURNING names the rows really inserted.
    keys = [getattr(model, name) for name in conflict_cols]
    result = conn.execute(stmt.returning(*keys), list(rows))
    return {tuple(row) for row in result}
