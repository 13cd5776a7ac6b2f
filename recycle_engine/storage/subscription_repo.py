"""Subscription and order state writes: ladder steps, failures, approvals and recycle outcomes in bulk,
each with its change rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from operator import itemgetter
from typing import Any, TypedDict

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    text,
    union_all,
    update,
)

from recycle_engine.domain.outcomes import OrderStatus, PurchaseStatus
from recycle_engine.storage.models import Change, Fulfillment, Handoff, Order, OutcomeQueue, Subscription
from recycle_engine.storage.types import UTCDateTime

__all__ = [
    "Approval",
    "LATE_APPROVAL_UNAPPLIED",
    "LadderStep",
    "RecycleFailure",
    "RecycleOutcome",
    "apply_approvals",
    "apply_failures",
    "apply_ladder_steps",
    "apply_recycle_outcomes",
    "record_changes",
]


@dataclass(frozen=True)
class LadderStep:
    """An attempt ran and declined softly (or its hand-off failed): book the next attempt."""

    subscription_id: str
    attempt: int
    ran_on: date
    next_attempt: int
    next_attempt_on: date


@dataclass(frozen=True)
class RecycleFailure:
    subscription_id: str
    cause: str
    old_status: str = PurchaseStatus.RECYCLE_BILLING
    handoff_id: str | None = None  # the FlexFactor hand-off whose outcome failed it, if any
    source: str | None = None  # how that outcome reached us; None: the source the caller passes


@dataclass(frozen=True)
class Approval:
    """A recycled rebill was paid: move the purchase to its next cycle."""

    subscription_id: str
    order_id: str | None
    product_id: str | None
    billing_cycle: int  # the cycle that was paid
    next_bill_on: date | None
    price_minor: int  # recurring price from now on
    gateway_id: str  # gateway of the next scheduled rebill
    shippable: bool
    handoff_id: str | None = None
    old_status: str = PurchaseStatus.RECYCLE_BILLING
    source: str | None = None  # how the approval reached us; None: the source the caller passes


def record_changes(conn: Connection, rows: Sequence[dict[str, object]]) -> None:
    """Append change rows (the history and the CRM outbox) in one statement."""
    if rows:
        conn.execute(insert(Change), list(rows))


def _change(
    entity: str,
    entity_id: str,
    field: str,
    old: object,
    new: object,
    *,
    reason: str,
    source: str,
    now: datetime,
    run_id: str | None,
    handoff_id: str | None = None,
) -> dict[str, object]:
    return {
        "entity": entity,
        "entity_id": entity_id,
        "field": field,
        "old_value": None if old is None else str(old),
        "new_value": None if new is None else str(new),
        "reason": reason,
        "source": source,
        "handoff_id": handoff_id,
        "run_id": run_id,
        "occurred_at": now,
    }


def apply_ladder_steps(
    conn: Connection, steps: Sequence[LadderStep], *, now: datetime, run_id: str | None
) -> None:
    if not steps:
        return
    conn.execute(
        update(Subscription)
        .where(Subscription.id == bindparam("b_id"))
        .values(
            recycle_last_attempt=bindparam("b_attempt"),
            recycle_last_ran_on=bindparam("b_ran_on"),
            next_attempt=bindparam("b_next"),
            next_attempt_on=bindparam("b_next_on"),
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
        [
            {
                "b_id": s.subscription_id,
                "b_attempt": s.attempt,
                "b_ran_on": s.ran_on,
                "b_next": s.next_attempt,
                "b_next_on": s.next_attempt_on,
            }
            for s in steps
        ],
    )


def apply_failures(
    conn: Connection,
    failures: Sequence[RecycleFailure],
    *,
    now: datetime,
    run_id: str | None,
    reason: str,
    source: str,
) -> None:
    """RECYCLE_FAILED with its cause; recycling stops."""
    if not failures:
        return
    conn.execute(
        update(Subscription)
        .where(Subscription.id == bindparam("b_id"))
        .values(
            status=PurchaseStatus.RECYCLE_FAILED.value,
            failure_cause=bindparam("b_cause"),
            next_attempt=None,
            next_attempt_on=None,
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
        [{"b_id": f.subscription_id, "b_cause": f.cause} for f in failures],
    )
    record_changes(
        conn,
        [
            _change(
                "SUBSCRIPTION",
                f.subscription_id,
                "status",
                f.old_status,
                f"{PurchaseStatus.RECYCLE_FAILED}:{f.cause}",
                reason=reason,
                source=f.source or source,
                now=now,
                run_id=run_id,
                handoff_id=f.handoff_id,
            )
            for f in failures
        ],
    )


def apply_approvals(
    conn: Connection,
    approvals: Sequence[Approval],
    *,
    now: datetime,
    run_id: str | None,
    reason: str,
    source: str,
) -> int:
    """ACTIVE at the next cycle, paid order COMPLETE, HOLD fulfillments; returns fulfillments created."""
    if not approvals:
        return 0
    conn.execute(
        update(Subscription)
        .where(Subscription.id == bindparam("b_id"))
        .values(
            status=PurchaseStatus.ACTIVE.value,
            billing_cycle=bindparam("b_cycle"),
            next_bill_on=bindparam("b_next_bill"),
            price_minor=bindparam("b_price"),
            gateway_id=bindparam("b_gateway"),
            failure_cause=None,
            next_attempt=None,
            next_attempt_on=None,
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
        [
            {
                "b_id": a.subscription_id,
                "b_cycle": a.billing_cycle + 1,
                "b_next_bill": a.next_bill_on,
                "b_price": a.price_minor,
                "b_gateway": a.gateway_id,
            }
            for a in approvals
        ],
    )
    orders = [a for a in approvals if a.order_id]
    if orders:
        conn.execute(
            update(Order)
            .where(Order.id == bindparam("b_id"))
            .values(status=OrderStatus.COMPLETE.value, updated_at=now)
            .execution_options(synchronize_session=False),
            [{"b_id": a.order_id} for a in orders],
        )
    changes: list[dict[str, object]] = []
    for a in approvals:
        change = partial(
            _change,
            reason=reason,
            source=a.source or source,
            now=now,
            run_id=run_id,
            handoff_id=a.handoff_id,
        )
        sub = a.subscription_id
        changes.append(change("SUBSCRIPTION", sub, "status", a.old_status, "ACTIVE"))
        changes.append(change("SUBSCRIPTION", sub, "billing_cycle", a.billing_cycle, a.billing_cycle + 1))
        changes.append(change("SUBSCRIPTION", sub, "next_bill_on", None, a.next_bill_on))
        changes.append(change("SUBSCRIPTION", sub, "gateway_id", None, a.gateway_id))
        if a.order_id:
            changes.append(change("ORDER", a.order_id, "status", OrderStatus.DECLINED, "COMPLETE"))
    record_changes(conn, changes)
    created = 0
    # One call per source, so that each HOLD record's change row names the news that created it.
    for item_source in dict.fromkeys(a.source or source for a in approvals if a.shippable):
        created += create_fulfillments(
            conn,
            [
                (a.order_id, a.subscription_id, a.billing_cycle, a.product_id, a.handoff_id)
                for a in approvals
                if a.shippable and (a.source or source) == item_source
            ],
            now=now,
            run_id=run_id,
            source=item_source,
        )
    return created


def create_fulfillments(
    conn: Connection,
    items: Sequence[tuple[str | None, str | None, int, str | None, str | None]],
    *,
    now: datetime,
    run_id: str | None,
    source: str,
) -> int:
    """One HOLD record per shippable item and cycle, never twice (the unique key holds the line)."""
    from recycle_engine.storage.upsert import insert_ignore

    rows = [
        {
            "order_id": order_id,
            "purchase_id": purchase_id,
            "billing_cycle": cycle,
            "product_id": product_id,
            "status": "HOLD",
            "handoff_id": handoff_id,
            "created_at": now,
        }
        for order_id, purchase_id, cycle, product_id, handoff_id in items
        if order_id and product_id
    ]
    if not rows:
        return 0
    created = insert_ignore(conn, Fulfillment, rows, ["order_id", "product_id", "billing_cycle"])
    record_changes(
        conn,
        [
            _change(
                "FULFILLMENT",
                str(r["order_id"]),
                "status",
                None,
                "HOLD",
                reason="FULFILLMENT_CREATED",
                source=source,
                now=now,
                run_id=run_id,
                handoff_id=r["handoff_id"],  # type: ignore[arg-type]
            )
            for r in rows
        ],
    )
    return created


# --- recycle outcomes, set-based ---------------------------------------------------------------------


class RecycleOutcome(TypedDict):
    """What one final RECYCLE hand-off does, as staged for apply_recycle_outcomes.

    `kind`: A = approved, the purchase moves on; F = failed, RECYCLE_FAILED; L = late approval the
    purchase cannot take (flagged on the hand-off); N = no effect. Only A and F use the purchase fields."""

    seq: int  # order within the chunk: change rows keep it
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
    source: str  # how the outcome reached us: the change rows' source
    shippable: bool


LATE_APPROVAL_UNAPPLIED = "LATE_APPROVAL_UNAPPLIED"

_STAGING = Table(
    "outcome_staging",
    MetaData(),
    # No primary key: rows keep the order they are inserted in (SQLite's rowid), which
    # _fill_staging makes the purchase-id order, so that updates walk each index in key order.
    Column("seq", Integer),
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
    Column("source", String(16)),
    Column("shippable", Boolean),
    prefixes=["TEMPORARY"],
)


def apply_recycle_outcomes(
    conn: Connection,
    outcomes: Sequence[RecycleOutcome],
    *,
    now: datetime,
    run_id: str | None,
    reasons: tuple[str, str] = ("FLEXFACTOR_APPROVED", "FLEXFACTOR_FAILED"),
) -> None:
    """Write a chunk of recycle outcomes in a fixed number of set-based statements, and dequeue each
    hand-off: the rows apply_approvals and apply_failures would write, in the same order.

    The outcomes go once into a temporary table; every purchase, order, fulfillment, change-row and
    hand-off write is then one UPDATE ... FROM or INSERT ... SELECT over it, where row-by-row
    executemany spent most of its time per row in the driver and the SQL layer. On error the caller's
    transaction rolls back, the temporary table and the dequeue with it."""
    if not outcomes:
        return
    s = _STAGING
    s.create(conn)
    _fill_staging(conn, outcomes)
    approved, failed = s.c.kind == "A", s.c.kind == "F"
    conn.execute(
        update(Subscription)
        .where(Subscription.id == s.c.subscription_id, approved)
        .values(
            status=PurchaseStatus.ACTIVE.value,
            billing_cycle=s.c.paid_cycle + 1,
            next_bill_on=s.c.next_bill_on,
            price_minor=s.c.price_minor,
            gateway_id=s.c.gateway_id,
            failure_cause=None,
            next_attempt=None,
            next_attempt_on=None,
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    conn.execute(
        update(Subscription)
        .where(Subscription.id == s.c.subscription_id, failed)
        .values(
            status=PurchaseStatus.RECYCLE_FAILED.value,
            failure_cause=s.c.cause,
            next_attempt=None,
            next_attempt_on=None,
            open_handoff_id=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    conn.execute(
        update(Order)
        .where(Order.id == s.c.order_id, approved)
        .values(status=OrderStatus.COMPLETE.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    _insert_changes(conn, _approval_changes(reasons[0]), now=now, run_id=run_id)
    # As create_fulfillments: a record needs both an order and a product.
    held = (
        approved,
        s.c.shippable.is_(True),
        func.coalesce(s.c.order_id, "") != "",
        func.coalesce(s.c.product_id, "") != "",
    )
    # Imported here, as create_fulfillments does: every command imports this module, few apply outcomes.
    from sqlalchemy.dialects import postgresql, sqlite

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
            ).where(*held),
        )
        .on_conflict_do_nothing(index_elements=["order_id", "product_id", "billing_cycle"])
    )
    # As create_fulfillments does: a change row per shippable item handed in.
    hold = _changes_of("FULFILLMENT", s.c.order_id, "status", null(), literal("HOLD"), "FULFILLMENT_CREATED")
    _insert_changes(conn, [hold.where(*held)], now=now, run_id=run_id)
    failure = _changes_of(
        "SUBSCRIPTION",
        s.c.subscription_id,
        "status",
        s.c.old_status,
        literal(f"{PurchaseStatus.RECYCLE_FAILED}:") + s.c.cause,
        reasons[1],
    )
    _insert_changes(conn, [failure.where(failed)], now=now, run_id=run_id)
    # Applied: out of the queue, in this transaction (the hand-off rows themselves are not written).
    conn.execute(delete(OutcomeQueue).where(OutcomeQueue.handoff_id.in_(select(s.c.handoff_id))))
    # Apart: writing `attention` on every row would rewrite its index entry for each of them.
    conn.execute(
        update(Handoff)
        .where(Handoff.id == s.c.handoff_id, s.c.kind == "L")
        .values(attention=LATE_APPROVAL_UNAPPLIED)
        .execution_options(synchronize_session=False)
    )
    s.drop(conn)


def _fill_staging(conn: Connection, outcomes: Sequence[RecycleOutcome]) -> None:
    """The outcomes into the staging table, at the lowest cost per row each database offers.

    Binding a dozen values per row through the SQL layer cost more than the chunk's other writes
    together: PostgreSQL takes the chunk as one JSON document, SQLite's driver takes plain tuples."""
    columns = [c.name for c in _STAGING.columns]
    outcomes = sorted(outcomes, key=lambda o: o["subscription_id"] or "")
    if conn.dialect.name == "postgresql":
        # The staging table's own row type names and converts each field (ISO dates to date).
        conn.execute(
            text(
                "INSERT INTO outcome_staging SELECT * FROM json_populate_recordset(NULL::outcome_staging, :rows)"
            ),
            {"rows": json.dumps(outcomes, separators=(",", ":"))},
        )
        return
    marks = ", ".join("?" for _ in columns)
    values = itemgetter(*columns)
    conn.exec_driver_sql(
        f"INSERT INTO outcome_staging ({', '.join(columns)}) VALUES ({marks})", [values(o) for o in outcomes]
    )


def _changes_of(
    entity: str, entity_id: Any, field: str, old: Any, new: Any, reason: str, order: int = 0
) -> Select[Any]:
    """Change rows from the staged outcomes (plus seq and order, to keep apply_approvals' row order)."""
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
        s.c.seq.label("seq"),
        literal(order).label("ord"),
    )


def _approval_changes(reason: str) -> list[Select[Any]]:
    s, approved = _STAGING, _STAGING.c.kind == "A"
    sub = s.c.subscription_id
    return [
        _changes_of("SUBSCRIPTION", sub, "status", s.c.old_status, literal("ACTIVE"), reason, 0).where(
            approved
        ),
        _changes_of(
            "SUBSCRIPTION",
            sub,
            "billing_cycle",
            cast(s.c.paid_cycle, Text),
            cast(s.c.paid_cycle + 1, Text),
            reason,
            1,
        ).where(approved),
        _changes_of("SUBSCRIPTION", sub, "next_bill_on", null(), s.c.next_bill_text, reason, 2).where(
            approved
        ),
        _changes_of("SUBSCRIPTION", sub, "gateway_id", null(), s.c.gateway_id, reason, 3).where(approved),
        _changes_of(
            "ORDER",
            s.c.order_id,
            "status",
            literal(str(OrderStatus.DECLINED)),
            literal("COMPLETE"),
            reason,
            4,
        ).where(approved, func.coalesce(s.c.order_id, "") != ""),
    ]


def _insert_changes(
    conn: Connection, parts: Sequence[Select[Any]], *, now: datetime, run_id: str | None
) -> None:
    rows = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    conn.execute(
        insert(Change).from_select(
            [
                "entity",
                "entity_id",
                "field",
                "old_value",
                "new_value",
                "reason",
                "source",
                "handoff_id",
                "run_id",
                "occurred_at",
            ],
            select(
                rows.c.entity,
                rows.c.entity_id,
                rows.c.field,
                rows.c.old_value,
                rows.c.new_value,
                rows.c.reason,
                rows.c.source,
                rows.c.handoff_id,
                literal(run_id, String()),
                literal(now, UTCDateTime()),
            ),
        )
    )
