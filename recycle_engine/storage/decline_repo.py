"""Declines storage: idempotent bulk inserts by transaction_id and the upserts and reads import needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Insert, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.storage.models import Change, Customer, Decline, Order, Subscription

__all__ = [
    "KnownOrder",
    "KnownSubscription",
    "append_changes",
    "customer_from_decline",
    "execute_many",
    "insert_new_declines",
    "known_orders",
    "known_subscriptions",
    "lock_for_import",
    "order_from_decline",
    "status_change",
    "upsert_customers",
    "upsert_orders",
    "upsert_subscriptions",
]

# Keeps IN lists well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_BATCH: Final = 5_000
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
_order_values: Final = itemgetter(*_ORDER_SOURCES.values())
_CUSTOMER_COLUMNS: Final = tuple(_CUSTOMER_SOURCES)
_customer_values: Final = itemgetter(*_CUSTOMER_SOURCES.values())


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


def order_from_decline(decline: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """The orders row a feed decline implies: DECLINED, with the decline's amount, gateway and id."""
    row = dict(zip(_ORDER_COLUMNS, _order_values(decline), strict=True))
    row.update(status=_DECLINED, has_payment_token=True, updated_at=now)
    return row


def customer_from_decline(decline: Mapping[str, Any]) -> dict[str, Any]:
    """The customers row of a feed decline; `updated_at` is when the CRM saw this data (the decline)."""
    return dict(zip(_CUSTOMER_COLUMNS, _customer_values(decline), strict=True))


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


def insert_new_declines(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert declines whose transaction id is not stored yet; returns the ids inserted.

    Call after lock_for_import: with importers serialised, the ids read here stay true until commit.
    """
    known: set[str] = set()
    for batch in _batches(sorted(row["transaction_id"] for row in rows)):
        known.update(
            conn.execute(select(Decline.transaction_id).where(Decline.transaction_id.in_(batch))).scalars()
        )
    new = [row for row in rows if row["transaction_id"] not in known]
    stmt = _dialect(conn).insert(Decline).on_conflict_do_nothing(index_elements=[Decline.transaction_id])
    execute_many(conn, stmt, new)
    return {row["transaction_id"] for row in new}


def append_changes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append `changes` rows (the history and the CRM outbox)."""
    execute_many(conn, insert(Change), rows)


def upsert_customers(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or update customers. `updated_at` is the instant the data was true at the CRM (the
    decline's time), so data from an older decline never overwrites data from a newer one."""
    if not rows:
        return
    stmt = _dialect(conn).insert(Customer)
    changed = {c: stmt.excluded[c] for c in rows[0] if c != "id"}
    newer = Customer.updated_at <= stmt.excluded.updated_at
    execute_many(
        conn, stmt.on_conflict_do_update(index_elements=[Customer.id], set_=changed, where=newer), rows
    )


def known_orders(conn: Connection, ids: Sequence[str]) -> dict[str, KnownOrder]:
    """Stored orders among `ids`, locked (PostgreSQL) until the transaction ends."""
    found: dict[str, KnownOrder] = {}
    for batch in _batches(sorted(ids)):
        stmt = (
            select(Order.id, Order.status, Decline.declined_at)
            .outerjoin(Decline, Decline.transaction_id == Order.latest_transaction_id)
            .where(Order.id.in_(batch))
            .order_by(Order.id)
            .with_for_update(of=Order)
        )
        for order_id, status, declined_at in conn.execute(stmt):
            found[order_id] = KnownOrder(status=status, latest_declined_at=declined_at)
    return found


def upsert_orders(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or overwrite orders with the given columns; `has_payment_token` is set only on insert."""
    _upsert(conn, Order, rows, keep=("has_payment_token",))


def known_subscriptions(conn: Connection, ids: Sequence[str]) -> dict[str, KnownSubscription]:
    """Stored subscriptions among `ids`, locked (PostgreSQL) until the transaction ends."""
    found: dict[str, KnownSubscription] = {}
    for batch in _batches(sorted(ids)):
        stmt = (
            select(Subscription.id, Subscription.status, Subscription.billing_cycle, Decline.declined_at)
            .outerjoin(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(Subscription.id.in_(batch))
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
    if not rows:
        return
    stmt = _dialect(conn).insert(model)
    changed: dict[str, ColumnElement[Any]] = {
        c: stmt.excluded[c] for c in rows[0] if c != "id" and c not in keep
    }
    execute_many(conn, stmt.on_conflict_do_update(index_elements=[model.id], set_=changed), rows)


def execute_many(conn: Connection, stmt: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run an INSERT (or upsert) once per row in a single executemany; every row has the same keys.

    On SQLite the statement is compiled once and the rows reach the driver as tuples, each value passed
    through its column type's own bind processor (UTC datetimes, dates), because SQLAlchemy's per-row
    parameter handling costs more than SQLite's insert itself (bench/import_benchmark.py). PostgreSQL
    keeps SQLAlchemy's batched multi-row VALUES.
    """
    if not rows:
        return
    keys = list(rows[0])
    compiled = stmt.compile(dialect=conn.dialect, column_keys=keys)
    if conn.dialect.name != "sqlite" or compiled.positiontup is None or compiled.insert_prefetch:
        conn.execute(stmt, list(rows))
        return
    columns = []
    for name in compiled.positiontup:
        values = list(map(itemgetter(name), rows))
        process = compiled.binds[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is not None:
            # Feeds repeat instants (imported_at, updated_at): convert each distinct value once.
            converted: dict[Any, Any] = {}
            values = [converted[v] if v in converted else converted.setdefault(v, process(v)) for v in values]
        columns.append(values)
    conn.exec_driver_sql(compiled.string, list(zip(*columns, strict=True)))


def _dialect(conn: Connection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _batches(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _IN_BATCH):
        yield ids[start : start + _IN_BATCH]
