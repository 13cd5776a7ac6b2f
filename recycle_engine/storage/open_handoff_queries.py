"""Open hand-offs as reconcile reads them: those due for a look, and those whose window has closed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, func, or_, select

from recycle_engine.domain.states import OPEN_STATES
from recycle_engine.storage.models import Handoff

__all__ = ["OPEN_COLUMNS", "due_for_poll", "expired_open_ids", "lock_expired_open"]

# id, gateway_id, state, flexfactor_order_id, expires_at, poll_count, amount_minor, currency,
# submitted_at, and sent_at: the first send, or the send in progress when first_sent_at is unknown.
OPEN_COLUMNS = (
    Handoff.id,
    Handoff.gateway_id,
    Handoff.state,
    Handoff.flexfactor_order_id,
    Handoff.expires_at,
    Handoff.poll_count,
    Handoff.amount_minor,
    Handoff.currency,
    Handoff.submitted_at,
    func.coalesce(Handoff.first_sent_at, Handoff.send_started_at).label("sent_at"),
)


def due_for_poll(conn: Connection, now: datetime, limit: int) -> list[RowMapping]:
    """OPEN_COLUMNS of up to `limit` open hand-offs FlexFactor knows whose next look is due or whose
    window has closed at `now`, next look first."""
    stmt = (
        select(*OPEN_COLUMNS)
        .where(
            Handoff.state.in_([s.value for s in OPEN_STATES]),
            Handoff.flexfactor_order_id.is_not(None),
            or_(Handoff.next_poll_at <= now, Handoff.expires_at <= now),
        )
        .order_by(Handoff.next_poll_at)
        .limit(limit)
    )
    return [r._mapping for r in conn.execute(stmt)]


def expired_open_ids(conn: Connection, now: datetime) -> list[str]:
    """Ids of the open hand-offs whose window closed by `now`."""
    return list(
        conn.execute(
            select(Handoff.id).where(
                Handoff.state.in_([s.value for s in OPEN_STATES]), Handoff.expires_at <= now
            )
        ).scalars()
    )


def lock_expired_open(conn: Connection, handoff_id: str, now: datetime) -> dict[str, Any] | None:
    """OPEN_COLUMNS of the hand-off if it is still open with its window closed at `now` (None if it was
    settled since), locked on PostgreSQL until the caller's transaction ends."""
    stmt = select(*OPEN_COLUMNS).where(
        Handoff.id == handoff_id,
        Handoff.state.in_([s.value for s in OPEN_STATES]),
        Handoff.expires_at <= now,
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)
