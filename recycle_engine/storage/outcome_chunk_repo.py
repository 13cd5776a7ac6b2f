"""A chunk of queued outcomes as applying reads and writes it: the queue rows locked with their
purchases, the new sales' orders, and the set-based writes to orders and subscriptions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    Row,
    bindparam,
    cast,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute

from recycle_engine.storage.models import Order, OutcomeQueue, Subscription

__all__ = ["clear_payment_tokens", "lock_queued_outcomes", "orders_with", "write_order_results"]


def _one_of(conn: Connection, column: InstrumentedAttribute[str], ids: Sequence[str]) -> ColumnElement[bool]:
    """`column` among `ids`, passed as one JSON array: a chunk may hold more ids than either database
    takes bound parameters (and binding each one costs more than the lookup)."""
    table = (
        func.json_array_elements_text(cast(literal(json.dumps(list(ids))), JSON))
        if conn.dialect.name == "postgresql"
        else func.json_each(literal(json.dumps(list(ids))))
    ).table_valued("value")
    return column.in_(select(table.c.value))


def lock_queued_outcomes(conn: Connection, ids: Sequence[str]) -> Sequence[Any]:
    """The outcomes of `ids` still queued, each with its purchase (outer join), their queue rows locked
    on PostgreSQL (skipping those another transaction holds), in no particular order: handoff_id,
    source, state, order_id, purchase_id, declining_gateway_id, amount_minor, outcome_at (as the driver
    gives it), outcome_source, billing_cycle, then the subscription's status, open_handoff_id,
    billing_cycle, billing_interval_days, price_minor, shippable, product_id, recycle_profile_id,
    recycle_profile_version and failure_cause."""
    stmt = (
        select(
            OutcomeQueue.handoff_id,
            OutcomeQueue.source,
            OutcomeQueue.state,
            OutcomeQueue.order_id,
            OutcomeQueue.purchase_id,
            OutcomeQueue.declining_gateway_id,
            OutcomeQueue.amount_minor,
            # Read as the driver gives it, made a UTC instant only where a date is needed (approvals).
            type_coerce(OutcomeQueue.outcome_at, DateTime(timezone=True)),
            OutcomeQueue.outcome_source,
            OutcomeQueue.billing_cycle,
            Subscription.status,
            Subscription.open_handoff_id,
            Subscription.billing_cycle,
            Subscription.billing_interval_days,
            Subscription.price_minor,
            Subscription.shippable,
            Subscription.product_id,
            Subscription.recycle_profile_id,
            Subscription.recycle_profile_version,
            Subscription.failure_cause,
        )
        .outerjoin(Subscription, Subscription.id == OutcomeQueue.purchase_id)
        .where(_one_of(conn, OutcomeQueue.handoff_id, ids))
    )
    if conn.dialect.name == "postgresql":
        # The queue rows only: news queued for one of them meanwhile waits for this transaction, and
        # the row read is the news as it stands (a late APPROVED that replaced EXPIRED, say).
        stmt = stmt.with_for_update(of=OutcomeQueue, skip_locked=True)
    return conn.execute(stmt).all()


def orders_with(conn: Connection, order_ids: Sequence[str], fields: Sequence[str]) -> list[Row[Any]]:
    """(id, *fields) of these orders."""
    stmt = select(Order.id, *(getattr(Order, name) for name in fields)).where(
        _one_of(conn, Order.id, order_ids)
    )
    return list(conn.execute(stmt))


def clear_payment_tokens(conn: Connection, purchase_ids: Sequence[str], *, now: datetime) -> None:
    """Mark these subscriptions as rebilling without a stored payment token, in one executemany."""
    conn.execute(
        update(Subscription)
        .where(Subscription.id == bindparam("b_id"))
        .values(has_payment_token=False, updated_at=now)
        .execution_options(synchronize_session=False),
        [{"b_id": purchase_id} for purchase_id in purchase_ids],
    )


def write_order_results(conn: Connection, updates: Sequence[dict[str, object]], *, now: datetime) -> None:
    """Write each order's status and whether it keeps a payment token ({"b_id", "b_status",
    "b_token"}), in one executemany."""
    conn.execute(
        update(Order)
        .where(Order.id == bindparam("b_id"))
        .values(status=bindparam("b_status"), has_payment_token=bindparam("b_token"), updated_at=now)
        .execution_options(synchronize_session=False),
        updates,
    )
