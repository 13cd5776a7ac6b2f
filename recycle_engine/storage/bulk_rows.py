"""Set-based inserts of many rows: values bound once per column, then one driver-level statement.

SQLAlchemy's per-row parameter handling costs more than the database's own insert
(bench/import_benchmark.py). Here each value goes through its column type's bind processor once,
ahead of time if wanted (BoundRows can be built in another process), then: PostgreSQL (psycopg) COPYs
the rows into a temporary table and inserts from it; SQLite runs the statement, compiled once,
through the driver's executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Column, Connection, Dialect, MetaData, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.storage.types import UTCDateTime, sqlite_utc_text

__all__ = ["BoundRows", "OnConflict", "bind_rows", "dialect_insert", "insert_bound", "insert_columns"]

OnConflict = Callable[[Any], Any]  # a dialect insert -> the same insert with its ON CONFLICT clause


@dataclass(frozen=True)
class BoundRows:
    """Rows of one table ready for the driver: tuples of `keys`' values (in the table's column order),
    each already through its column type's bind processor for `dialect_name`."""

    table: str
    dialect_name: str
    keys: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def take(self, positions: Sequence[int]) -> BoundRows:
        """The rows at `positions`, in that order."""
        if len(positions) == len(self.rows):
            return self
        return BoundRows(self.table, self.dialect_name, self.keys, [self.rows[p] for p in positions])


def bind_rows(dialect: Dialect, model: Any, columns: Mapping[str, Sequence[Any]]) -> BoundRows:
    """Bind rows given column by column (equal-length lists) for `dialect`."""
    table: Table = model.__table__
    keys = tuple(c.name for c in table.columns if c.name in columns)
    if len(keys) != len(columns):
        raise ValueError(f"not columns of {table.name}: {', '.join(sorted(set(columns) - set(keys)))}")
    processed = []
    for key in keys:
        values = columns[key]
        process = _bind_processor(dialect, table.c[key].type)
        if process is not None and values and values.count(values[0]) == len(values):
            values = [process(values[0])] * len(values)  # a constant, such as imported_at
        elif process is not None:
            # Feeds repeat values (dates, flags): convert each distinct value once.
            converted: dict[Any, Any] = {}
            values = [converted[v] if v in converted else converted.setdefault(v, process(v)) for v in values]
        processed.append(values)
    return BoundRows(table.name, dialect.name, keys, list(zip(*processed, strict=True)))


def insert_columns(
    conn: Connection, model: Any, columns: Mapping[str, Sequence[Any]], on_conflict: OnConflict | None = None
) -> None:
    """INSERT rows given column by column as one set; see insert_bound."""
    insert_bound(conn, model, bind_rows(conn.dialect, model, columns), on_conflict)


def insert_bound(
    conn: Connection, model: Any, bound: BoundRows, on_conflict: OnConflict | None = None
) -> None:
    """INSERT bound rows as one set, with the ON CONFLICT clause `on_conflict` adds. Rows must not
    repeat a conflict key."""
    if not bound.rows:
        return
    table: Table = model.__table__
    if (bound.table, bound.dialect_name) != (table.name, conn.dialect.name):
        raise ValueError(
            f"rows bound for {bound.dialect_name} {bound.table}, not {conn.dialect.name} {table.name}"
        )
    keys = list(bound.keys)
    insert_into = dialect_insert(conn, model)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        staged = _copy_to_temporary_table(conn, table, keys, bound.rows)
        stmt = insert_into.from_select(keys, select(*staged.columns))
        conn.execute(on_conflict(stmt) if on_conflict else stmt)
        return
    stmt = on_conflict(insert_into) if on_conflict else insert_into
    compiled = stmt.compile(dialect=conn.dialect, column_keys=keys)
    if compiled.insert_prefetch or list(compiled.positiontup or ()) != keys:
        # Python-side defaults to fill, or parameters out of column order: not for bound rows.
        raise ValueError(f"{table.name}: the insert's parameters do not line up with the bound rows")
    conn.exec_driver_sql(compiled.string, bound.rows)


def dialect_insert(conn: Connection, model: Any) -> Any:
    """The dialect's INSERT (which knows ON CONFLICT) for `model`."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(model)


def _bind_processor(dialect: Dialect, column_type: Any) -> Callable[[Any], Any] | None:
    if dialect.name == "sqlite" and isinstance(column_type, UTCDateTime):
        return sqlite_utc_text  # SQLAlchemy's own formatter runs in Python, several times slower
    return cast(Callable[[Any], Any] | None, column_type.dialect_impl(dialect).bind_processor(dialect))


def _copy_to_temporary_table(
    conn: Connection, table: Table, keys: Sequence[str], rows: list[tuple[Any, ...]]
) -> Table:
    """A temporary table (dropped at commit) of `keys`' columns, filled by COPY."""
    staged = Table(f"staged_{table.name}", MetaData(), *(Column(key, table.c[key].type) for key in keys))
    names = ", ".join(f'"{key}"' for key in keys)
    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{staged.name}"')
    conn.exec_driver_sql(
        f'CREATE TEMPORARY TABLE "{staged.name}" ON COMMIT DROP AS SELECT {names} FROM "{table.name}" WITH NO DATA'
    )
    import psycopg  # only PostgreSQL comes here, and only through psycopg

    driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    with driver.cursor() as cursor, cursor.copy(f'COPY "{staged.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)
    return staged
