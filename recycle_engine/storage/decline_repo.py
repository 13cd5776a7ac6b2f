"""Declines storage: idempotent bulk inserts by transaction_id and the upserts and reads import needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, select, text
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.storage.models import Customer, Decline, Order, Subscription

__all__ = [
    "KnownOrder",
    "KnownSubscription",
    "customer_from_decline",
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
    copied = ("order_type", "customer_id", "campaign_id", "product_id", "purchase_id", "billing_cycle")
    flags = ("completes_trial", "recurring_product", "shippable", "gateway_id", "amount_minor", "currency")
    return {
        "id": decline["order_id"],
        **{c: decline[c] for c in (*copied, *flags, "ip_address")},
        "status": OrderStatus.DECLINED.value,
        "latest_transaction_id": decline["transaction_id"],
        "has_payment_token": True,
        "updated_at": now,
    }


def customer_from_decline(decline: Mapping[str, Any]) -> dict[str, Any]:
    """The customers row of a feed decline; `updated_at` is when the CRM saw this data (the decline)."""
    copied = ("email", "phone", "first_name", "last_name", "address1", "address2", "city", "state", "zip")
    return {
        "id": decline["customer_id"],
        **{c: decline[c] for c in (*copied, "country")},
        "updated_at": decline["declined_at"],
    }


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
    """Insert declines, skipping known transaction ids; returns the ids actually inserted."""
    if not rows:
        return set()
    stmt = (
        _dialect(conn)
        .insert(Decline)
        .on_conflict_do_nothing(index_elements=[Decline.transaction_id])
        .returning(Decline.transaction_id)
    )
    return set(conn.execute(stmt, list(rows)).scalars())


def upsert_customers(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or update customers. `updated_at` is the instant the data was true at the CRM (the
    decline's time), so data from an older decline never overwrites data from a newer one."""
    if not rows:
        return
    stmt = _dialect(conn).insert(Customer)
    changed = {c: stmt.excluded[c] for c in rows[0] if c != "id"}
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[Customer.id], set_=changed, where=Customer.updated_at <= stmt.excluded.updated_at
        ),
        list(rows),
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
    conn.execute(stmt.on_conflict_do_update(index_elements=[model.id], set_=changed), list(rows))


def _dialect(conn: Connection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _batches(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _IN_BATCH):
        yield ids[start : start + _IN_BATCH]
