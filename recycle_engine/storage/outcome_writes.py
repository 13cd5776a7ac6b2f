"""A chunk of recycle outcomes written in a fixed number of set-based statements, and dequeued.

The outcomes go once into a temporary table (COPY on PostgreSQL, plain tuples on SQLite); every
purchase, order, fulfillment and change-row write is then one UPDATE ... FROM or INSERT ... SELECT over
it, where row-by-row executemany spent most of its time per row in the driver and the SQL layer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.domain.outcomes import OrderStatus, PurchaseStatus
from recycle_engine.storage.models import Change, Fulfillment, Handoff, Order, OutcomeQueue, Subscription
from recycle_engine.storage.types import UTCDateTime

__all__ = ["LATE_APPROVAL_UNAPPLIED", "RecycleOutcome", "apply_recycle_outcomes"]

LATE_APPROVAL_UNAPPLIED: Final = "LATE_APPROVAL_UNAPPLIED"


class RecycleOutcome(NamedTuple):
    """What one queued outcome does, as staged for apply_recycle_outcomes (fields in staging order).

    `kind`: A = approved, the purchase moves on; F = failed, RECYCLE_FAILED; L = late approval the
    purchase cannot take (flagged on the hand-off); N = no effect here (a new sale's writes are made
    row by row). Only A and F use the purchase fields."""

    handoff_id: str
    kind: str
    subscription_id: str | None
    order_id: str | None
    product_id: str | None
    paid_cycle: int | None  # the cycle the approval paid
    next_bill_on: str | None  # ISO date
    next_bill_text: str | None  # the same, for the change row (a date column reads back per dialect)
    price_minor: int | None  # recurring price from now on
    gateway_id: str | None  # gateway of the next scheduled rebill
    old_status: str | None
    cause: str | None  # RECYCLE_FAILED cause
    old_cause: str | None  # the purchase's cause before this outcome: an approval clears it
    source: str  # how the outcome reached us: the change rows' source
    shippable: bool


_STAGING = Table(
    "outcome_staging",
    MetaData(),
    # No primary key: rows keep the order they are inserted in (SQLite's rowid), which
    # _fill_staging makes the purchase-id order, so that updates walk each index in key order.
    Column("handoff_id", String(64)),
    Column("kind", String(1)),
    Column("subscription_id", String(64)),
    Column("order_id", String(64)),
    Column("product_id", String(64)),
    Column("paid_cycle", Integer),
    Column("next_bill_on", Date),
    Column("next_bill_text", String(10)),
    Column("price_minor", BigInteger),
    Column("gateway_id", String(64)),
    Column("old_status", String(32)),
    Column("cause", String(32)),
    Column("old_cause", String(32)),
    Column("source", String(16)),
    Column("shippable", Boolean),
    prefixes=["TEMPORARY"],
)
assert tuple(c.name for c in _STAGING.columns) == RecycleOutcome._fields


def apply_recycle_outcomes(
    conn: Connection,
    outcomes: Sequence[RecycleOutcome],
    *,
    now: datetime,
    run_id: str | None,
    reasons: tuple[str, str] = ("FLEXFACTOR_APPROVED", "FLEXFACTOR_FAILED"),
) -> None:
    """Write what the outcomes do and dequeue their hand-offs, in the caller's transaction: the rows
    apply_approvals and apply_failures would write. On error the transaction rolls back, the temporary
    table and the dequeue with it."""
    if not outcomes:
        return
    s = _STAGING
    kinds = {o.kind for o in outcomes}
    s.create(conn)
    _fill_staging(conn, outcomes)
    approved = s.c.kind == "A"
    if kinds & {"A", "F"}:
        _write_purchases(conn, now=now)
    if "A" in kinds:
        conn.execute(
            update(Order)
            .where(Order.id == s.c.order_id, approved)
            .values(status=OrderStatus.COMPLETE.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        _insert_fulfillments(conn, now=now)
    if kinds & {"A", "F"}:
        # After the fulfillments: a HOLD change row names a record this chunk created.
        _insert_changes(conn, reasons, now=now, run_id=run_id)
    if "L" in kinds:
        conn.execute(
            update(Handoff)
            .where(Handoff.id == s.c.handoff_id, s.c.kind == "L")
            .values(attention=LATE_APPROVAL_UNAPPLIED)
            .execution_options(synchronize_session=False)
        )
    # Applied: out of the queue in this transaction (no hand-off row is written for it). A join on
    # PostgreSQL (DELETE ... USING, sized by the chunk's row count), a semi-join where SQLite lacks one.
    queued = OutcomeQueue.handoff_id
    dequeued = (
        queued == s.c.handoff_id if conn.dialect.name == "postgresql" else queued.in_(select(s.c.handoff_id))
    )
    conn.execute(delete(OutcomeQueue).where(dequeued))
    s.drop(conn)


def _write_purchases(conn: Connection, *, now: datetime) -> None:
    """Approved purchases ACTIVE at their next cycle, failed ones RECYCLE_FAILED: one pass."""
    s = _STAGING
    approved = s.c.kind == "A"

    def if_approved(value: Any, otherwise: Any) -> ColumnElement[Any]:
        return case((approved, value), else_=otherwise)

    conn.execute(
        update(Subscription)
        .where(Subscription.id == s.c.subscription_id, s.c.kind.in_(("A", "F")))
        .values(
            status=if_approved(PurchaseStatus.ACTIVE.value, PurchaseStatus.RECYCLE_FAILED.value),
            billing_cycle=if_approved(s.c.paid_cycle + 1, Subscription.billing_cycle),
            next_bill_on=if_approved(s.c.next_bill_on, Subscription.next_bill_on),
            price_minor=if_approved(s.c.price_minor, Subscription.price_minor),
            gateway_id=if_approved(s.c.gateway_id, Subscription.gateway_id),
            failure_cause=s.c.cause,  # None for an approval
            next_attempt=None,
            next_attempt_on=None,
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


# As create_fulfillments: a HOLD record needs a shippable item with both an order and a product.
def _held() -> tuple[ColumnElement[bool], ...]:
    s = _STAGING
    return (
        s.c.kind == "A",
        s.c.shippable.is_(True),
        func.coalesce(s.c.order_id, "") != "",
        func.coalesce(s.c.product_id, "") != "",
    )


def _created_here(now: datetime) -> ColumnElement[bool]:
    """The HOLD record a staged approval created in this chunk: its unique key, hand-off and time."""
    s = _STAGING
    return and_(
        Fulfillment.order_id == s.c.order_id,
        Fulfillment.product_id == s.c.product_id,
        Fulfillment.billing_cycle == s.c.paid_cycle,
        Fulfillment.handoff_id == s.c.handoff_id,
        Fulfillment.created_at == literal(now, UTCDateTime()),
    )


def _insert_fulfillments(conn: Connection, *, now: datetime) -> None:
    s = _STAGING
    upsert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    conn.execute(
        upsert(Fulfillment)
        .from_select(
            ["order_id", "purchase_id", "billing_cycle", "product_id", "status", "handoff_id", "created_at"],
            select(
                s.c.order_id,
                s.c.subscription_id,
                s.c.paid_cycle,
                s.c.product_id,
                literal("HOLD"),
                s.c.handoff_id,
                literal(now, UTCDateTime()),
            ).where(*_held()),
        )
        .on_conflict_do_nothing(index_elements=["order_id", "product_id", "billing_cycle"])
    )


def _fill_staging(conn: Connection, outcomes: Sequence[RecycleOutcome]) -> None:
    """The outcomes into the staging table at the lowest cost per row each database offers: binding
    a dozen values per row through the SQL layer cost more than the chunk's other writes together."""
    rows = sorted(outcomes, key=lambda o: o.subscription_id or "")
    columns = ", ".join(RecycleOutcome._fields)
    if conn.dialect.name == "postgresql":
        # COPY: no statement per row, and each value converted once, by the driver.
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            with cursor.copy(f"COPY outcome_staging ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # The chunk's size and mix for the planner (hash joins where it is large against a table),
            # sampled on one column: statistics of every column cost more than the statement they help.
            cursor.execute("ANALYZE outcome_staging (kind)")
        return
    marks = ", ".join("?" for _ in RecycleOutcome._fields)
    conn.exec_driver_sql(f"INSERT INTO outcome_staging ({columns}) VALUES ({marks})", rows)


def _changes_of(entity: str, entity_id: Any, field: str, old: Any, new: Any, reason: str) -> Select[Any]:
    s = _STAGING
    return select(
        literal(entity).label("entity"),
        entity_id.label("entity_id"),
        literal(field).label("field"),
        old.label("old_value"),
        new.label("new_value"),
        literal(reason).label("reason"),
        s.c.source.label("source"),
        s.c.handoff_id.label("handoff_id"),
    )


def _insert_changes(conn: Connection, reasons: tuple[str, str], *, now: datetime, run_id: str | None) -> None:
    """Every change row of the chunk in one statement: what apply_approvals, create_fulfillments and
    apply_failures record for each purchase, order and HOLD record."""
    s = _STAGING
    approved, sub, paid = s.c.kind == "A", s.c.subscription_id, s.c.paid_cycle
    parts = [
        _changes_of("SUBSCRIPTION", sub, "status", s.c.old_status, literal("ACTIVE"), reasons[0]).where(
            approved
        ),
        _changes_of(
            "SUBSCRIPTION", sub, "billing_cycle", cast(paid, Text), cast(paid + 1, Text), reasons[0]
        ).where(approved),
        _changes_of("SUBSCRIPTION", sub, "next_bill_on", null(), s.c.next_bill_text, reasons[0]).where(
            approved
        ),
        _changes_of("SUBSCRIPTION", sub, "gateway_id", null(), s.c.gateway_id, reasons[0]).where(approved),
        # A revived purchase (a late rescue of one our settlement failed): the CRM clears its cause.
        _changes_of("SUBSCRIPTION", sub, "failure_cause", s.c.old_cause, null(), reasons[0]).where(
            approved, s.c.old_cause.is_not(None)
        ),
        _changes_of(
            "ORDER",
            s.c.order_id,
            "status",
            literal(str(OrderStatus.DECLINED)),
            literal("COMPLETE"),
            reasons[0],
        ).where(approved, func.coalesce(s.c.order_id, "") != ""),
        # As create_fulfillments does: a change row per HOLD record created, none for one already there.
        _changes_of("FULFILLMENT", s.c.order_id, "status", null(), literal("HOLD"), "FULFILLMENT_CREATED")
        .join(Fulfillment, _created_here(now))
        .where(*_held()),
        _changes_of(
            "SUBSCRIPTION",
            sub,
            "status",
            s.c.old_status,
            literal(PurchaseStatus.RECYCLE_FAILED.value),
            reasons[1],
        ).where(s.c.kind == "F"),
        _changes_of("SUBSCRIPTION", sub, "failure_cause", null(), s.c.cause, reasons[1]).where(
            s.c.kind == "F"
        ),
    ]
    rows = union_all(*parts).subquery()
    conn.execute(
        insert(Change).from_select(
            [*(c.name for c in rows.c), "run_id", "occurred_at"],
            select(*rows.c, literal(run_id, String()), literal(now, UTCDateTime())),
        )
    )
