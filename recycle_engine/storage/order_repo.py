"""Orders with their latest decline, and the new-sale hand-offs (rerun, cascade) written for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from recycle_engine.domain.states import OPEN_STATES, Event, OutcomeSource, State
from recycle_engine.storage.handoff_repo import insert_created
from recycle_engine.storage.models import Decline, Handoff, Order

__all__ = [
    "HandoffView",
    "OrderDecline",
    "existing_handoff",
    "handoff_views",
    "insert_handoff",
    "open_handoff_id",
    "order_with_latest_decline",
]

_ORDER_COLUMNS = (
    Order.id.label("order_id"),
    Order.order_type,
    Order.status.label("order_status"),
    Order.purchase_id.label("order_purchase_id"),
    Order.ip_address.label("order_ip_address"),
    Order.recurring_product.label("order_recurring_product"),
    Order.completes_trial.label("order_completes_trial"),
    Order.latest_transaction_id,
)


@dataclass(frozen=True, repr=False)
class OrderDecline:
    """An order and the decline that last declined it (`decline` is None when no decline is stored).

    `decline` holds the declines row as a mapping of column name to value; it carries card data
    (a vault token), so this object never prints it."""

    order_id: str
    order_type: str
    status: str
    purchase_id: str | None
    ip_address: str | None
    recurring_product: bool
    completes_trial: bool
    decline: Mapping[str, Any] | None

    def __repr__(self) -> str:
        txn = self.decline["transaction_id"] if self.decline else None
        return f"OrderDecline(order_id={self.order_id!r}, status={self.status!r}, transaction_id={txn!r})"


@dataclass(frozen=True)
class HandoffView:
    """Where one hand-off stands and what it did to its order, read back after sending."""

    handoff_id: str
    state: str
    vendor_status: str | None
    was_sent: bool  # False: the request never left us (still PENDING and unmarked)
    last_error: str | None
    order_id: str
    order_status: str | None
    has_payment_token: bool | None


def order_with_latest_decline(conn: Connection, order_id: str, *, lock: bool = False) -> OrderDecline | None:
    """The order `order_id` and its latest decline, or None for an unknown order.

    The latest decline is the one the order row names (`latest_transaction_id`, kept by the import),
    else the order's most recent decline by `declined_at`. `lock` takes the order row FOR UPDATE on
    PostgreSQL, so that two reruns or cascades of one order queue behind each other."""
    stmt = select(*_ORDER_COLUMNS).where(Order.id == order_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    decline = None
    if row.latest_transaction_id:
        decline = conn.execute(
            select(Decline).where(Decline.transaction_id == row.latest_transaction_id)
        ).one_or_none()
    if decline is None:
        decline = conn.execute(
            select(Decline)
            .where(Decline.order_id == order_id)
            .order_by(Decline.declined_at.desc(), Decline.transaction_id.desc())
            .limit(1)
        ).one_or_none()
    return OrderDecline(
        order_id=row.order_id,
        order_type=row.order_type,
        status=row.order_status,
        purchase_id=row.order_purchase_id,
        ip_address=row.order_ip_address,
        recurring_product=bool(row.order_recurring_product),
        completes_trial=bool(row.order_completes_trial),
        decline=None if decline is None else _decline_mapping(decline),
    )


def _decline_mapping(row: Any) -> dict[str, Any]:
    # A Core connection returns the entity's columns, not a Decline object.
    return dict(row._mapping)


def open_handoff_id(conn: Connection, order_id: str) -> str | None:
    """An open (PENDING or SUBMITTED) hand-off of any source for the order, if there is one."""
    return conn.execute(
        select(Handoff.id)
        .where(Handoff.order_id == order_id, Handoff.state.in_([s.value for s in OPEN_STATES]))
        .order_by(Handoff.created_at)
        .limit(1)
    ).scalar_one_or_none()


def existing_handoff(conn: Connection, dedupe_key: str) -> tuple[str, str] | None:
    """(id, state) of the hand-off already written under `dedupe_key`, if any."""
    row = conn.execute(
        select(Handoff.id, Handoff.state).where(Handoff.dedupe_key == dedupe_key)
    ).one_or_none()
    return None if row is None else (row.id, row.state)


def insert_handoff(conn: Connection, row: Mapping[str, Any], *, now: datetime) -> None:
    """Write one PENDING hand-off and its CREATED event; the unique dedupe_key refuses a second one."""
    event = {
        "handoff_id": row["id"],
        "kind": Event.CREATED.value,
        "source": OutcomeSource.RESPONSE.value,
        "amount_minor": row["amount_minor"],
        "idempotency_key": row["idempotency_key"],
        "occurred_at": now,
    }
    insert_created(conn, [row], [event])


def handoff_views(conn: Connection, handoff_ids: Sequence[str]) -> dict[str, HandoffView]:
    """Each hand-off's state, and its order's status and payment-token flag, by hand-off id."""
    if not handoff_ids:
        return {}
    rows = conn.execute(
        select(
            Handoff.id,
            Handoff.state,
            Handoff.vendor_status,
            Handoff.send_started_at,
            Handoff.last_error,
            Handoff.order_id,
            Order.status.label("order_status"),
            Order.has_payment_token,
        )
        .outerjoin(Order, Order.id == Handoff.order_id)
        .where(Handoff.id.in_(list(handoff_ids)))
    )
    return {
        r.id: HandoffView(
            handoff_id=r.id,
            state=r.state,
            vendor_status=r.vendor_status,
            was_sent=r.send_started_at is not None or r.state != State.PENDING.value,
            last_error=r.last_error,
            order_id=r.order_id,
            order_status=r.order_status,
            has_payment_token=r.has_payment_token,
        )
        for r in rows
    }
