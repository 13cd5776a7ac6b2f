"""Set-based writes of many rows: values bound once per column, then one driver-level statement.

SQLAlchemy's per-row parameter handling costs more than the database's own work
(bench/import_benchmark.py, bench/submit_benchmark.py). Here each value goes through its column
type's bind processor once, ahead of time if wanted (BoundRows can be built in another process),
then: on PostgreSQL (psycopg) the rows are COPYed, straight into the table for a plain insert, or into
a temporary table that one INSERT ... SELECT or UPDATE ... FROM reads; on SQLite the statement,
compiled once, runs through the driver's executemany. (Arrays through unnest() were tried: psycopg
dumps array parameters element by element in Python, which cost more than the rows' own insert.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Column, Connection, Dialect, MetaData, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.storage.types import UTCDateTime, sqlite_utc_text

__all__ = [
    "BoundRows",
    "OnConflict",
    "bind_rows",
    "columns_of",
    "dialect_insert",
    "insert_bound",
    "insert_columns",
    "insert_returning",
    "insert_rows",
    "update_columns",
]

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


def columns_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows given as dicts (all with the same keys), column by column."""
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def insert_rows(
    conn: Connection, model: Any, rows: Sequence[Mapping[str, Any]], on_conflict: OnConflict | None = None
) -> None:
    """INSERT rows given as dicts (all with the same keys) as one set; see insert_bound."""
    if rows:
        insert_columns(conn, model, columns_of(rows), on_conflict)


def insert_bound(
    conn: Connection, model: Any, bound: BoundRows, on_conflict: OnConflict | None = None
) -> None:
    """INSERT bound rows as one set, with the ON CONFLICT clause `on_conflict` adds. Rows must not
    repeat a conflict key."""
    if not bound.rows:
        return
    table = _checked_table(conn, model, bound)
    if conn.dialect.name == "postgresql":
        if on_conflict is None:
            _copy(conn, table.name, bound.keys, bound.rows)
            return
        staged = _staged(conn, table, bound)
        conn.execute(
            on_conflict(dialect_insert(conn, model).from_select(list(bound.keys), select(*staged.c)))
        )
        return
    stmt = on_conflict(dialect_insert(conn, model)) if on_conflict else dialect_insert(conn, model)
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(bound.keys))
    if compiled.insert_prefetch or tuple(compiled.positiontup or ()) != bound.keys:
        # Python-side defaults to fill, or parameters out of column order: not for bound rows.
        raise ValueError(f"{table.name}: the insert's parameters do not line up with the bound rows")
    conn.exec_driver_sql(compiled.string, bound.rows)


def insert_returning(
    conn: Connection,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    on_conflict: OnConflict,
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """INSERT rows given as dicts, with `on_conflict`; the `returning` columns of the rows inserted."""
    if not rows:
        return []
    table: Table = model.__table__
    keys = [table.c[k] for k in returning]
    if conn.dialect.name == "postgresql":
        bound = bind_rows(conn.dialect, model, columns_of(rows))
        staged = _staged(conn, table, bound)
        stmt = on_conflict(dialect_insert(conn, model).from_select(list(bound.keys), select(*staged.c)))
        return [tuple(row) for row in conn.execute(stmt.returning(*keys))]
    # SQLite's executemany returns no rows: SQLAlchemy batches the rows into multi-row statements.
    stmt = on_conflict(dialect_insert(conn, model))
    return [tuple(row) for row in conn.execute(stmt.returning(*keys), list(rows))]


def update_columns(
    conn: Connection,
    model: Any,
    key: str,
    columns: Mapping[str, Sequence[Any]],
    constants: Mapping[str, Any] | None = None,
) -> None:
    """UPDATE the rows whose `key` is in columns[key]: each gets its own values of the other columns,
    and all get the same `constants`."""
    bound = bind_rows(conn.dialect, model, columns)
    if not bound.rows:
        return
    table = _checked_table(conn, model, bound)
    fixed = dict(constants or {})
    if conn.dialect.name == "postgresql":
        source = _staged(conn, table, bound)
        changed = {c: source.c[c] for c in bound.keys if c != key}
        conn.execute(update(table).where(table.c[key] == source.c[key]).values({**changed, **fixed}))
        return
    names = [c for c in bound.keys if c != key]
    fixed_values = bind_rows(conn.dialect, model, {c: [v] for c, v in fixed.items()}).rows[0] if fixed else ()
    sets = ", ".join(f'"{c}" = ?' for c in (*names, *fixed))
    sql = f'UPDATE "{table.name}" SET {sets} WHERE "{key}" = ?'
    at = {c: i for i, c in enumerate(bound.keys)}
    order = [at[c] for c in names]
    conn.exec_driver_sql(sql, [(*(row[i] for i in order), *fixed_values, row[at[key]]) for row in bound.rows])


def _checked_table(conn: Connection, model: Any, bound: BoundRows) -> Table:
    table: Table = model.__table__
    if (bound.table, bound.dialect_name) != (table.name, conn.dialect.name):
        raise ValueError(
            f"rows bound for {bound.dialect_name} {bound.table}, not {conn.dialect.name} {table.name}"
        )
    return table


def dialect_insert(conn: Connection, model: Any) -> Any:
    """The dialect's INSERT (which knows ON CONFLICT) for `model`."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(model)


def _bind_processor(dialect: Dialect, column_type: Any) -> Callable[[Any], Any] | None:
    if dialect.name == "sqlite" and isinstance(column_type, UTCDateTime):
        return sqlite_utc_text  # SQLAlchemy's own formatter runs in Python, several times slower
    return cast(Callable[[Any], Any] | None, column_type.dialect_impl(dialect).bind_processor(dialect))


def _staged(conn: Connection, table: Table, bound: BoundRows) -> Table:
    """A temporary table (dropped at commit) of the bound rows' columns, filled by COPY."""
    staged = Table(f"staged_{table.name}", MetaData(), *(Column(k, table.c[k].type) for k in bound.keys))
    names = ", ".join(f'"{k}"' for k in bound.keys)
    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{staged.name}"')
    conn.exec_driver_sql(
        f'CREATE TEMPORARY TABLE "{staged.name}" ON COMMIT DROP AS SELECT {names} FROM "{table.name}" WITH NO DATA'
    )
    _copy(conn, staged.name, bound.keys, bound.rows)
    return staged


def _copy(conn: Connection, table_name: str, keys: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    import psycopg  # only PostgreSQL comes here, and only through psycopg

    names = ", ".join(f'"{k}"' for k in keys)
    driver = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    with driver.cursor() as cursor, cursor.copy(f'COPY "{table_name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)
