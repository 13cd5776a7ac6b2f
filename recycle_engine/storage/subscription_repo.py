"""Subscription and order state writes: ladder steps, failures and approvals in bulk, each with its
change rows (recycle outcomes set-based: storage.outcome_writes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    insert,
    select,
    update,
)

from recycle_engine.domain.outcomes import OrderStatus, PurchaseStatus
from recycle_engine.storage.bulk_rows import update_columns
from recycle_engine.storage.models import Change, Fulfillment, Order, Subscription

__all__ = [
    "Approval",
    "LadderStep",
    "RecycleFailure",
    "apply_approvals",
    "apply_failures",
    "apply_ladder_steps",
    "attempts_due_before",
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
    update_columns(
        conn,
        Subscription,
        "id",
        {
            "id": [s.subscription_id for s in steps],
            "recycle_last_attempt": [s.attempt for s in steps],
            "recycle_last_ran_on": [s.ran_on for s in steps],
            "next_attempt": [s.next_attempt for s in steps],
            "next_attempt_on": [s.next_attempt_on for s in steps],
        },
        {"open_handoff_id": None, "updated_at": now},
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
    # The status is the domain's own word; the cause is a change of its own (the CRM outbox).
    record_changes(
        conn,
        [
            _change(
                "SUBSCRIPTION",
                f.subscription_id,
                field,
                old,
                new,
                reason=reason,
                source=f.source or source,
                now=now,
                run_id=run_id,
                handoff_id=f.handoff_id,
            )
            for f in failures
            for field, old, new in (
                ("status", f.old_status, PurchaseStatus.RECYCLE_FAILED.value),
                ("failure_cause", None, f.cause),
            )
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
    cleared = _causes(conn, [a.subscription_id for a in approvals])
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
        if sub in cleared:
            changes.append(change("SUBSCRIPTION", sub, "failure_cause", cleared[sub], None))
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


_IDS_PER_READ = 1000  # well under SQLite's bound-parameter limit


def _causes(conn: Connection, subscription_ids: Sequence[str]) -> dict[str, str]:
    """The failure causes an approval clears, by purchase: the CRM must drop them too."""
    found: dict[str, str] = {}
    for start in range(0, len(subscription_ids), _IDS_PER_READ):
        ids = subscription_ids[start : start + _IDS_PER_READ]
        stmt = select(Subscription.id, Subscription.failure_cause).where(
            Subscription.id.in_(ids), Subscription.failure_cause.is_not(None)
        )
        found.update((sub, cause) for sub, cause in conn.execute(stmt) if cause is not None)
    return found


def create_fulfillments(
    conn: Connection,
    items: Sequence[tuple[str | None, str | None, int, str | None, str | None]],
    *,
    now: datetime,
    run_id: str | None,
    source: str,
) -> int:
    """One HOLD record per shippable item and cycle, never twice (the unique key holds the line), with
    a change row for each record created; returns how many were created."""
    from recycle_engine.storage.upsert import inserted_keys

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
    key = ("order_id", "product_id", "billing_cycle")
    created = inserted_keys(conn, Fulfillment, rows, key)
    changes = []
    for r in rows:
        # An item the unique key skipped has its record already, and its change row with it.
        if (r["order_id"], r["product_id"], r["billing_cycle"]) not in created:
            continue
        created.discard((r["order_id"], r["product_id"], r["billing_cycle"]))
        changes.append(
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
        )
    record_changes(conn, changes)
    return len(changes)


def attempts_due_before(conn: Connection, day: date) -> tuple[int, date | None]:
    """How many recycling subscriptions with no open hand-off have their next attempt due before `day`,
    and the earliest such due date."""
    stmt = select(func.count(), func.min(Subscription.next_attempt_on)).where(
        Subscription.status == PurchaseStatus.RECYCLE_BILLING.value,
        Subscription.next_attempt_on < day,
        Subscription.open_handoff_id.is_(None),
    )
    count, oldest = conn.execute(stmt).one()
    return int(count), oldest
