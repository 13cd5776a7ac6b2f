"""Declines storage: idempotent bulk inserts by transaction_id and the upserts and reads import needs."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Select,
    String,
    any_,
    bindparam,
    func,
    literal,
    null,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import InstrumentedAttribute

from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.storage.bulk_rows import (
    BoundRows,
    OnConflict,
    bind_rows,
    dialect_insert,
    insert_bound,
    insert_columns,
)
from recycle_engine.storage.models import Change, Customer, Decline, Order, Subscription
from recycle_engine.storage.types import UTCDateTime

__all__ = [
    "ChangeStamp",
    "KnownOrder",
    "KnownSubscription",
    "StatusChanges",
    "append_orders_created",
    "append_status_changes",
    "bind_declines",
    "insert_new_declines",
    "known_orders",
    "known_subscriptions",
    "lock_for_import",
    "text_widths",
    "upsert_customers",
    "upsert_orders",
    "upsert_subscriptions",
]

# Ids per lookup statement: keeps each JSON or array parameter, and the rows it returns, modest.
_IN_BATCH: Final = 20_000
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
    failure_cause: str | None = None


@dataclass
class StatusChanges:
    """Status moves of orders and subscriptions, gathered column by column for `changes`."""

    entity: list[str] = field(default_factory=list)
    entity_id: list[str] = field(default_factory=list)
    field_name: list[str] = field(default_factory=list)
    old_value: list[str | None] = field(default_factory=list)
    new_value: list[str | None] = field(default_factory=list)

    def add(
        self, entity: str, entity_id: str, old: str | None, new: str | None, *, field_name: str = "status"
    ) -> None:
        """A move of ORDER or SUBSCRIPTION `entity_id`'s `field_name` from `old` (None: created) to `new`."""
        self.entity.append(entity)
        self.entity_id.append(entity_id)
        self.field_name.append(field_name)
        self.old_value.append(old)
        self.new_value.append(new)


@dataclass(frozen=True)
class ChangeStamp:
    """What every change of one import shares: why, from where, in which run, when."""

    reason: str
    source: str
    run_id: str
    now: datetime


def lock_for_import(conn: Connection) -> None:
    """Serialise importers for this transaction, so reading current state and upserting stay consistent.

    SQLite needs nothing: the engine opens every transaction with BEGIN IMMEDIATE, one writer at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMPORT_LOCK_KEY})


def text_widths(columns: Collection[str]) -> dict[str, int]:
    """The widths, in characters, of the declines table's bounded text columns among `columns`
    (PostgreSQL refuses longer text); unbounded and non-text columns are left out."""
    return {
        c.name: c.type.length
        for c in Decline.__table__.columns
        if c.name in columns and isinstance(c.type, String) and c.type.length
    }


def bind_declines(dialect: Dialect, columns: Mapping[str, Sequence[Any]]) -> BoundRows:
    """Declines rows (declines-table columns, one list each) bound for `dialect`, ready to insert."""
    return bind_rows(dialect, Decline, columns)


def insert_new_declines(conn: Connection, transaction_ids: Sequence[str], declines: BoundRows) -> list[int]:
    """Insert the bound declines whose transaction id (`transaction_ids`, row by row) is not stored
    yet; returns their positions.

    Call after lock_for_import: with importers serialised, the ids read here stay true until commit.
    """
    known: set[str] = set()
    for among in _among(conn, Decline.transaction_id, transaction_ids):
        known.update(conn.execute(select(Decline.transaction_id).where(among)).scalars())
    new = [position for position, value in enumerate(transaction_ids) if value not in known]
    insert_bound(
        conn,
        Decline,
        declines.take(new),
        lambda stmt: stmt.on_conflict_do_nothing(index_elements=["transaction_id"]),
    )
    return new


def append_status_changes(conn: Connection, changes: StatusChanges, stamp: ChangeStamp) -> None:
    """Append status moves to `changes` (the history and the CRM outbox)."""
    n = len(changes.entity)
    columns: dict[str, Sequence[Any]] = {
        "entity": changes.entity,
        "entity_id": changes.entity_id,
        "field": changes.field_name,
        "old_value": changes.old_value,
        "new_value": changes.new_value,
        **{key: [value] * n for key, value in _stamp_values(stamp).items()},
    }
    insert_columns(conn, Change, columns)


def append_orders_created(conn: Connection, transaction_ids: Sequence[str], stamp: ChangeStamp) -> None:
    """Append to `changes` the creation, as DECLINED, of the orders of these stored declines (copied
    in SQL, like the orders themselves)."""
    stamped = {
        key: literal(value, Change.__table__.c[key].type) for key, value in _stamp_values(stamp).items()
    }
    source = select(
        literal("ORDER"), Decline.order_id, literal("status"), null(), literal(_DECLINED), *stamped.values()
    )
    keys = ("entity", "entity_id", "field", "old_value", "new_value", *stamped)
    _copy_from_declines(conn, Change, keys, source, transaction_ids)


def _stamp_values(stamp: ChangeStamp) -> dict[str, Any]:
    return {
        "reason": stamp.reason,
        "source": stamp.source,
        "handoff_id": None,
        "run_id": stamp.run_id,
        "occurred_at": stamp.now,
    }


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
    on_conflict: OnConflict | None = None,
) -> None:
    """INSERT INTO model (keys) `source` for the declines of `transaction_ids`: the values never make
    the round trip through Python and the driver."""
    for among in _among(conn, Decline.transaction_id, transaction_ids):
        # The WHERE also settles SQLite's parsing ambiguity between a join's ON and ON CONFLICT.
        stmt = dialect_insert(conn, model).from_select(list(keys), source.where(among))
        conn.execute(on_conflict(stmt) if on_conflict else stmt)


def known_subscriptions(conn: Connection, ids: Sequence[str]) -> dict[str, KnownSubscription]:
    """Stored subscriptions among `ids`, locked (PostgreSQL) until the transaction ends."""
    found: dict[str, KnownSubscription] = {}
    for among in _among(conn, Subscription.id, ids):
        stmt = (
            select(
                Subscription.id,
                Subscription.status,
                Subscription.billing_cycle,
                Decline.declined_at,
                Subscription.failure_cause,
            )
            .outerjoin(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(among)
            .order_by(Subscription.id)
            .with_for_update(of=Subscription)
        )
        for sub_id, status, cycle, declined_at, cause in conn.execute(stmt):
            found[sub_id] = KnownSubscription(
                status=status, billing_cycle=cycle, recycle_declined_at=declined_at, failure_cause=cause
            )
    return found


def upsert_subscriptions(conn: Connection, columns: Mapping[str, Sequence[Any]]) -> None:
    """Insert or overwrite subscriptions, given column by column (other columns keep their values)."""

    def overwrite(stmt: Any) -> Any:
        changed = {c: stmt.excluded[c] for c in columns if c != "id"}
        return stmt.on_conflict_do_update(index_elements=["id"], set_=changed)

    insert_columns(conn, Subscription, columns, overwrite)


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
