"""The CRM pull's cursor and its rejected rows; the push's changes to deliver and their deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update

from recycle_engine.storage.models import Change, CrmCursor, CrmDelivery, CrmReject, JobRun
from recycle_engine.storage.upsert import insert_ignore

__all__ = [
    "DECLINES",
    "OPEN_STATES",
    "PUSH",
    "Delivery",
    "RejectedRow",
    "changes_since",
    "clear_rejects",
    "deliveries",
    "delivery_counts",
    "open_deliveries",
    "mark",
    "mark_sending",
    "running",
    "take_over",
    "queue_changes",
    "read_cursor",
    "recent_rejects",
    "save_cursor",
    "save_rejects",
]

DECLINES = "declines"  # cursor of the pull: end of the last window read
PUSH = "push"  # cursor of the push: when changes were last queued


@dataclass(frozen=True)
class RejectedRow:
    transaction_id: str
    reason: str
    row: str  # JSON, card numbers removed
    rejected_at: datetime
    run_id: str | None = None


def read_cursor(conn: Connection, name: str = DECLINES) -> datetime | None:
    """The end of the last window read in full, or None before the first pull."""
    return conn.execute(select(CrmCursor.window_end).where(CrmCursor.name == name)).scalar_one_or_none()


def save_cursor(
    conn: Connection, window_end: datetime, *, run_id: str, now: datetime, name: str = DECLINES
) -> None:
    values = {"window_end": window_end, "run_id": run_id, "updated_at": now}
    if conn.execute(update(CrmCursor).where(CrmCursor.name == name).values(**values)).rowcount == 0:
        conn.execute(insert(CrmCursor).values(name=name, **values))


def save_rejects(conn: Connection, rejects: Sequence[RejectedRow]) -> None:
    """Keep each rejected row once, by transaction id: a row refused again replaces its earlier reason."""
    if not rejects:
        return
    ids = [r.transaction_id for r in rejects]
    conn.execute(delete(CrmReject).where(CrmReject.transaction_id.in_(ids)))
    latest = {r.transaction_id: r for r in rejects}
    conn.execute(
        insert(CrmReject),
        [
            {
                "transaction_id": r.transaction_id,
                "reason": r.reason,
                "row": r.row,
                "run_id": r.run_id,
                "rejected_at": r.rejected_at,
            }
            for r in latest.values()
        ],
    )


def clear_rejects(conn: Connection, transaction_ids: Sequence[str]) -> None:
    """Forget the rejects of rows now accepted (fixed in the CRM and read again)."""
    for start in range(0, len(transaction_ids), 1000):
        conn.execute(
            delete(CrmReject).where(CrmReject.transaction_id.in_(transaction_ids[start : start + 1000]))
        )


def recent_rejects(conn: Connection, limit: int) -> list[RejectedRow]:
    rows = conn.execute(
        select(
            CrmReject.transaction_id, CrmReject.reason, CrmReject.row, CrmReject.rejected_at, CrmReject.run_id
        )
        .order_by(CrmReject.rejected_at.desc(), CrmReject.transaction_id)
        .limit(limit)
    ).all()
    return [RejectedRow(*row) for row in rows]


# The change outbox's deliveries

OPEN_STATES = ("PENDING", "SENDING", "RETRY")


@dataclass(frozen=True)
class Delivery:
    change_id: int
    entity: str
    entity_id: str
    field: str
    new_value: str | None
    endpoint: str | None
    params: str | None
    state: str
    attempts: int
    answer: str | None = None
    updated_at: datetime | None = None
    next_try_at: datetime | None = None
    run_id: str | None = None


def queue_changes(conn: Connection, rows: Sequence[dict[str, object]]) -> int:
    """Add deliveries for changes not queued before; returns how many are new."""
    if not rows:
        return 0
    return insert_ignore(conn, CrmDelivery, rows, ["change_id"])


def open_deliveries(conn: Connection, limit: int) -> list[Delivery]:
    """Open deliveries in change order (a later change of a purchase must land last)."""
    rows = conn.execute(
        select(*_DELIVERY_COLUMNS)
        .where(CrmDelivery.state.in_(OPEN_STATES))
        .order_by(CrmDelivery.change_id)
        .limit(limit)
    ).all()
    return [Delivery(*row) for row in rows]


def mark(conn: Connection, change_id: int, *, now: datetime, run_id: str, **values: object) -> None:
    conn.execute(
        update(CrmDelivery)
        .where(CrmDelivery.change_id == change_id)
        .values(updated_at=now, run_id=run_id, **values)
    )


def mark_sending(conn: Connection, change_ids: Sequence[int], *, now: datetime, run_id: str) -> int:
    """Record that a call is about to be made for each of these PENDING deliveries (one more attempt);
    returns how many were still PENDING (fewer: another push took some)."""
    return conn.execute(
        update(CrmDelivery)
        .where(CrmDelivery.change_id.in_(change_ids), CrmDelivery.state == "PENDING")
        .values(state="SENDING", attempts=CrmDelivery.attempts + 1, updated_at=now, run_id=run_id)
    ).rowcount


def take_over(conn: Connection, d: Delivery, *, now: datetime, run_id: str) -> bool:
    """Make this push the owner of a delivery left SENDING or RETRY, if nobody changed it since it
    was read; False when another push got there first."""
    return (
        conn.execute(
            update(CrmDelivery)
            .where(
                CrmDelivery.change_id == d.change_id,
                CrmDelivery.state == d.state,
                CrmDelivery.attempts == d.attempts,
                CrmDelivery.run_id.is_(None) if d.run_id is None else CrmDelivery.run_id == d.run_id,
            )
            .values(run_id=run_id, updated_at=now)
        ).rowcount
        == 1
    )


def running(conn: Connection, run_id: str | None) -> bool:
    """Whether that job run is still RUNNING (a dead process's runs are marked ABANDONED when the next
    run starts)."""
    if run_id is None:
        return False
    status = conn.execute(select(JobRun.status).where(JobRun.id == run_id)).scalar_one_or_none()
    return status == "RUNNING"


def deliveries(conn: Connection, states: Sequence[str], limit: int) -> list[Delivery]:
    stmt = select(*_DELIVERY_COLUMNS).order_by(CrmDelivery.change_id.desc()).limit(limit)
    if states:
        stmt = stmt.where(CrmDelivery.state.in_(states))
    return [Delivery(*row) for row in conn.execute(stmt).all()]


def delivery_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(CrmDelivery.state, func.count()).group_by(CrmDelivery.state)).all()
    return {str(state): int(n) for state, n in rows}


_DELIVERY_COLUMNS = (
    CrmDelivery.change_id,
    CrmDelivery.entity,
    CrmDelivery.entity_id,
    CrmDelivery.field,
    CrmDelivery.new_value,
    CrmDelivery.endpoint,
    CrmDelivery.params,
    CrmDelivery.state,
    CrmDelivery.attempts,
    CrmDelivery.answer,
    CrmDelivery.updated_at,
    CrmDelivery.next_try_at,
    CrmDelivery.run_id,
)


def changes_since(conn: Connection, start: datetime) -> Sequence[tuple[int, str, str, str, str | None]]:
    """(id, entity, entity_id, field, new_value) of the change rows that occurred at or after `start`,
    in id order."""
    return conn.execute(
        select(Change.id, Change.entity, Change.entity_id, Change.field, Change.new_value)
        .where(Change.occurred_at >= start)
        .order_by(Change.id)
    ).all()
