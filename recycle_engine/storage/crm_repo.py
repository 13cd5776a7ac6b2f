"""The CRM pull's cursor and its rejected rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from recycle_engine.storage.models import CrmCursor, CrmReject

__all__ = ["DECLINES", "RejectedRow", "read_cursor", "recent_rejects", "save_cursor", "save_rejects"]

DECLINES = "declines"


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


def recent_rejects(conn: Connection, limit: int) -> list[RejectedRow]:
    rows = conn.execute(
        select(
            CrmReject.transaction_id, CrmReject.reason, CrmReject.row, CrmReject.rejected_at, CrmReject.run_id
        )
        .order_by(CrmReject.rejected_at.desc(), CrmReject.transaction_id)
        .limit(limit)
    ).all()
    return [RejectedRow(*row) for row in rows]
