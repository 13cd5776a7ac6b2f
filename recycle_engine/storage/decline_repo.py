"""Declines storage: idempotent bulk inserts by transaction_id and the upserts and reads import needs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Final, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Select,
    String,
    Table,
    any_,
    bindparam,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute

from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.storage.models import Change, Customer, Decline, Order, Subscription
from recycle_engine.storage.types import UTCDateTime, sqlite_utc_text

__all__ = [
    "KnownOrder",
    "KnownSubscription",
    "append_changes",
    "bulk_insert",
    "insert_columns",
    "insert_new_declines",
    "known_orders",
    "known_subscriptions",
    "lock_for_import",
    "status_change",
    "upsert_customers",
    "upsert_orders",
    "upsert_subscriptions",
]

# Ids per lookup statement: keeps each JSON or array parameter, and the rows it returns, modest.
_IN_BATCH: Final = 20_000
OnConflict = Callable[[Any], Any]  # a dialect insert -> the same insert with its ON CONFLICT clause
# Any constant shared by every importer: PostgreSQL advisory lock key for "a declines import writes".
_IMPORT_LOCK_KEY: Final = 0x5EC1_DEC1
_DECLINED: Final = OrderStatus.DECLINED.value
# orders and customers columns -> the declines column each one is copied from
_ORDER_SOURCES: Final = {
    "id": "order_id", "latest_transaction_id": "transaction_id",
    **{c: c for c in (
        "order_type", "customer_id", "campaign_id", "product_id", "purchase_id", "billing_cycle",
        "completes_trial", "recurring_product", "shippable", "gateway_id", "amount_minor", "currency",
        "ip_address",
    )},
}  # fmt: skip
_CUSTOMER_SOURCES: Final = {
    "id": "customer_id", "updated_at": "declined_at",
    **{c: c for c in (
        "email", "phone", "first_name", "last_name", "address1", "address2", "city", "state", "zip", "country"
    )},
}  # fmt: skip
_ORDER_COLUMNS: Final = tuple(_ORDER_SOURCES)
_CUSTOMER_COLUMNS: Final = tuple(_CUSTOMER_SOURCES)


@dataclass(frozen=True)
class KnownOrder:
    """An order already stored, and when its latest known decline happened (None: not a feed decline)."""

    status: str
    latest_declined_at: datetime | None


@dataclass(frozen=True)
class KnownSubscription:
    """A subscription already stored, with the instant of the decline its recycle state came from."""

    status: str
    billing_cycle: int
    recycle_declined_at: datetime | None


def status_change(
    entity: str,
    entity_id: str,
    old: str | None,
    new: str,
    *,
    reason: str,
    source: str,
    run_id: str,
    now: datetime,
) -> dict[str, Any]:
    """A `changes` row recording a status move of an ORDER or a SUBSCRIPTION (old None: created)."""
    return {
        "entity": entity,
        "entity_id": entity_id,
        "field": "status",
        "old_value": old,
        "new_value": str(new),
        "reason": reason,
        "source": source,
        "handoff_id": None,
        "run_id": run_id,
        "occurred_at": now,
    }


def lock_for_import(conn: Connection) -> None:
    """Serialise importers for this transaction, so reading current state and upserting stay consistent.

    SQLite needs nothing: the engine opens every transaction with BEGIN IMMEDIATE, one writer at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMPORT_LOCK_KEY})


def insert_new_declines(conn: Connection, columns: Mapping[str, Sequence[Any]]) -> list[int]:
    """Insert the declines (declines-table columns, one list each) whose transaction id is not stored
    yet; returns their positions.

    Call after lock_for_import: with importers serialised, the ids read here stay true until commit.
    """
    ids = columns["transaction_id"]
    known: set[str] = set()
    for among in _among(conn, Decline.transaction_id, ids):
        known.update(conn.execute(select(Decline.transaction_id).where(among)).scalars())
    new = [position for position, value in enumerate(ids) if value not in known]
    if len(new) < len(ids):
        columns = {key: [values[p] for p in new] for key, values in columns.items()}
    insert_columns(
        conn, Decline, columns, lambda stmt: stmt.on_conflict_do_nothing(index_elements=["transaction_id"])
    )
    return new


def append_changes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append `changes` rows (the history and the CRM outbox)."""
    bulk_insert(conn, Change, rows)


def upsert_customers(conn: Connection, transaction_ids: Sequence[str]) -> None:
    """Insert or update the customers of these stored declines, copied in SQL. `updated_at` is the
    instant the data was true at the CRM (the decline's time), so data from an older decline never
    overwrites data from a newer one. At most one decline per customer."""
    source = select(*(Decline.__table__.c[c] for c in _CUSTOMER_SOURCES.values()))

    def newer_wins(stmt: Any) -> Any:
        changed = {c: stmt.excluded[c] for c in _CUSTOMER_COLUMNS if c != "id"}
        newer = Customer.updated_at <= stmt.excluded.updated_at
        return stmt.on_conflict_do_update(index_elements=["id"], set_=changed, where=newer)

    _copy_from_declines(conn, Customer, _CUSTOMER_COLUMNS, source, transaction_ids, newer_wins)


def known_orders(conn: Connection, ids: Sequence[str]) -> dict[str, KnownOrder]:
    """Stored orders among `ids`, locked (PostgreSQL) until the transaction ends."""
    found: dict[str, KnownOrder] = {}
    for among in _among(conn, Order.id, ids):
        stmt = (
            select(Order.id, Order.status, Decline.declined_at)
            .outerjoin(Decline, Decline.transaction_id == Order.latest_transaction_id)
            .where(among)
            .order_by(Order.id)
            .with_for_update(of=Order)
        )
        for order_id, status, declined_at in conn.execute(stmt):
            found[order_id] = KnownOrder(status=status, latest_declined_at=declined_at)
    return found


def upsert_orders(conn: Connection, transaction_ids: Sequence[str], *, now: datetime) -> None:
    """Insert or overwrite the orders of these stored declines, copied in SQL: DECLINED, with the
    decline's amount, gateway and id; `has_payment_token` is set only on insert. At most one decline
    per order."""
    copied = (Decline.__table__.c[c] for c in _ORDER_SOURCES.values())
    source = select(*copied, literal(_DECLINED), true(), literal(now, UTCDateTime()))
    keys = (*_ORDER_COLUMNS, "status", "has_payment_token", "updated_at")

    def overwrite(stmt: Any) -> Any:
        changed = {c: stmt.excluded[c] for c in keys if c not in ("id", "has_payment_token")}
        return stmt.on_conflict_do_update(index_elements=["id"], set_=changed)

    _copy_from_declines(conn, Order, keys, source, transaction_ids, overwrite)


def _copy_from_declines(
    conn: Connection,
    model: Any,
    keys: Sequence[str],
    source: Select[Any],
    transaction_ids: Sequence[str],
    on_conflict: OnConflict,
) -> None:
    """INSERT INTO model (keys) `source` for the declines of `transaction_ids`: the values never make
    the round trip through Python and the driver."""
    for among in _among(conn, Decline.transaction_id, transaction_ids):
        # The WHERE also settles SQLite's parsing ambiguity between a join's ON and ON CONFLICT.
        stmt = _dialect(conn).insert(model).from_select(list(keys), source.where(among))
        conn.execute(on_conflict(stmt))


def known_subscriptions(conn: Connection, ids: Sequence[str]) -> dict[str, KnownSubscription]:
    """Stored subscriptions among `ids`, locked (PostgreSQL) until the transaction ends."""
    found: dict[str, KnownSubscription] = {}
    for among in _among(conn, Subscription.id, ids):
        stmt = (
            select(Subscription.id, Subscription.status, Subscription.billing_cycle, Decline.declined_at)
            .outerjoin(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(among)
            .order_by(Subscription.id)
            .with_for_update(of=Subscription)
        )
        for sub_id, status, cycle, declined_at in conn.execute(stmt):
            found[sub_id] = KnownSubscription(
                status=status, billing_cycle=cycle, recycle_declined_at=declined_at
            )
    return found


def upsert_subscriptions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or overwrite subscriptions with the given columns (other columns keep their values)."""
    _upsert(conn, Subscription, rows, keep=())


def _upsert(conn: Connection, model: Any, rows: Sequence[Mapping[str, Any]], keep: Sequence[str]) -> None:
    def overwrite(stmt: Any) -> Any:
        changed = {c: stmt.excluded[c] for c in rows[0] if c != "id" and c not in keep}
        return stmt.on_conflict_do_update(index_elements=["id"], set_=changed)

    bulk_insert(conn, model, rows, overwrite)


def bulk_insert(
    conn: Connection, model: Any, rows: Sequence[Mapping[str, Any]], on_conflict: OnConflict | None = None
) -> None:
    """INSERT `rows` (all with the same keys) as one set; see insert_columns."""
    if rows:
        insert_columns(conn, model, {key: list(map(itemgetter(key), rows)) for key in rows[0]}, on_conflict)


def insert_columns(
    conn: Connection,
    model: Any,
    columns: Mapping[str, Sequence[Any]],
    on_conflict: OnConflict | None = None,
) -> None:
    """INSERT rows given column by column (equal-length lists) as one set, with the ON CONFLICT clause
    `on_conflict` adds.

    Rows must not repeat a conflict key. SQLAlchemy's per-row parameter handling costs more than the
    database's own insert (bench/import_benchmark.py), so each value goes through its column type's
    bind processor once, then: PostgreSQL (psycopg) COPYs the rows into a temporary table and inserts
    from it; SQLite runs the statement, compiled once, through the driver's executemany.
    """
    keys = list(columns)
    if not keys or not columns[keys[0]]:
        return
    insert_into = _dialect(conn).insert(model)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        staged = _copy_to_temporary_table(
            conn, model.__table__, keys, _processed_rows(conn, model.__table__, keys, columns)
        )
        stmt = insert_into.from_select(keys, select(*staged.columns))
        conn.execute(on_conflict(stmt) if on_conflict else stmt)
        return
    stmt = on_conflict(insert_into) if on_conflict else insert_into
    compiled = stmt.compile(dialect=conn.dialect, column_keys=keys)
    if compiled.insert_prefetch or compiled.positiontup is None:  # defaults to fill, or a named paramstyle
        names = list(columns)
        conn.execute(
            stmt, [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        )
        return
    conn.exec_driver_sql(
        compiled.string, _processed_rows(conn, model.__table__, compiled.positiontup, columns)
    )


def _processed_rows(
    conn: Connection, table: Table, keys: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """The rows as tuples of `keys`' values, each through its column type's bind processor."""
    processed = []
    for key in keys:
        values = columns[key]
        process = _bind_processor(conn, table.c[key].type)
        if process is not None and values.count(values[0]) == len(values):
            values = [process(values[0])] * len(values)  # a constant, such as imported_at
        elif process is not None:
            # Feeds repeat values (dates, flags): convert each distinct value once.
            converted: dict[Any, Any] = {}
            values = [converted[v] if v in converted else converted.setdefault(v, process(v)) for v in values]
        processed.append(values)
    return list(zip(*processed, strict=True))


def _bind_processor(conn: Connection, column_type: Any) -> Callable[[Any], Any] | None:
    if conn.dialect.name == "sqlite" and isinstance(column_type, UTCDateTime):
        return sqlite_utc_text  # SQLAlchemy's own formatter runs in Python, several times slower
    return cast(
        Callable[[Any], Any] | None, column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    )


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


def _dialect(conn: Connection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _among(
    conn: Connection, column: InstrumentedAttribute[str], ids: Sequence[str]
) -> Iterator[ColumnElement[bool]]:
    """Conditions `column IN ids`, sorted (locks are taken in one order), each with one parameter: an
    array on PostgreSQL, a JSON array read by json_each on SQLite. An IN list of thousands of bound
    parameters costs more to compile than the lookup itself (bench/import_benchmark.py)."""
    ordered = sorted(set(ids))
    if conn.dialect.name == "postgresql":
        yield column == any_(bindparam(None, ordered, type_=postgresql.ARRAY(String)))
        return
    for start in range(0, len(ordered), _IN_BATCH):
        batch = json.dumps(ordered[start : start + _IN_BATCH])
        each = func.json_each(bindparam(None, batch, type_=String)).table_valued("value")
        yield column.in_(select(each.c.value))
