"""INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from recycle_engine.storage.bulk_rows import insert_returning

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
    # rowcount is not reliable for executemany on every driver; RETURNING names the rows really inserted.
    ignore = functools.partial(_do_nothing, conflict_cols=list(conflict_cols))
    return set(insert_returning(conn, model, rows, ignore, conflict_cols))


def _do_nothing(stmt: Any, *, conflict_cols: list[str]) -> Any:
    return stmt.on_conflict_do_nothing(index_elements=conflict_cols)
