"""INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["insert_ignore"]


def insert_ignore(
    conn: Connection, model: Any, rows: Sequence[dict[str, Any]], conflict_cols: Sequence[str]
) -> int:
    """Insert rows, skipping those that collide on `conflict_cols`; returns how many were inserted."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(model).on_conflict_do_nothing(index_elements=list(conflict_cols))
    # rowcount is not reliable for executemany on every driver; RETURNING counts the rows really inserted.
    key = getattr(model, conflict_cols[0])
    result = conn.execute(stmt.returning(key), list(rows))
    return len(result.all())
