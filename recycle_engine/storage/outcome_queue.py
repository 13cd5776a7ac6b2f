"""The queue of final hand-off outcomes waiting to be applied to orders and purchases.

A row is written in the transaction that moves a hand-off into a final outcome state (evaluate answer,
webhook, poll, lookup, expiry settlement) and deleted in the transaction that applies it
(services.outcomes.applying): an outcome is applied once, and a crash between the two leaves it queued."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection, String, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from recycle_engine.domain.states import State
from recycle_engine.storage.models import Handoff, OutcomeQueue
from recycle_engine.storage.types import UTCDateTime

__all__ = ["OUTCOME_STATES", "Pending", "QueuedNews", "enqueue", "news_of", "pending", "queued", "queued_by"]

# The final states whose outcome reaches orders and purchases (FAILED: never accepted, nothing to apply).
OUTCOME_STATES: Final = (
    State.APPROVED.value,
    State.DECLINED.value,
    State.EXPIRED.value,
    State.CANCELLED.value,
)
_NEWS: Final = ("state", "outcome_at", "outcome_source")
# Copied from the hand-off, which never changes them once written.
_FACTS: Final = ("source", "order_id", "purchase_id", "declining_gateway_id", "amount_minor", "billing_cycle")


class QueuedNews(NamedTuple):
    handoff_id: str
    state: str
    outcome_at: datetime
    outcome_source: str | None  # None: the one the hand-off row holds


def news_of(handoff_id: str, values: Mapping[str, Any], now: datetime) -> QueuedNews | None:
    """The news in new values for a hand-off, if they move it to a final outcome state."""
    state = values.get("state")
    if state not in OUTCOME_STATES:
        return None
    return QueuedNews(handoff_id, state, values.get("outcome_at") or now, values.get("outcome_source"))


def enqueue(conn: Connection, outcomes: Iterable[QueuedNews]) -> None:
    """Queue the news of hand-offs about to be written in a final outcome state.

    Call it before the state write, in the same transaction: a hand-off already in that state is not
    queued again (a repeat of the same news, or news another writer recorded first), and on PostgreSQL
    the row lock taken here orders this writer after any other. Queued news that the new state replaces
    (EXPIRED, then a late APPROVED) is replaced."""
    params = [
        {"b_id": n.handoff_id, "b_state": n.state, "b_at": n.outcome_at, "b_source": n.outcome_source}
        for n in outcomes
        if n.state in OUTCOME_STATES
    ]
    if not params:
        return
    new_state = bindparam("b_state", type_=String())
    changing = select(
        Handoff.id,
        new_state,
        bindparam("b_at", type_=UTCDateTime()),
        func.coalesce(bindparam("b_source", type_=String()), Handoff.outcome_source),
        *(getattr(Handoff, name) for name in _FACTS),
    ).where(Handoff.id == bindparam("b_id"), Handoff.state != new_state)
    is_pg = conn.dialect.name == "postgresql"
    if is_pg:
        changing = changing.with_for_update()
    upsert = (postgresql if is_pg else sqlite).insert(OutcomeQueue)
    stmt = upsert.from_select(["handoff_id", *_NEWS, *_FACTS], changing)
    stmt = stmt.on_conflict_do_update(
        index_elements=["handoff_id"], set_={name: stmt.excluded[name] for name in _NEWS}
    )
    conn.execute(stmt, params)


class Pending(NamedTuple):
    handoff_id: str
    purchase_id: str | None
    order_id: str


def pending(conn: Connection, handoff_ids: Sequence[str] | None = None) -> list[Pending]:
    """Queued outcomes (of `handoff_ids`, if given), oldest first."""
    q = OutcomeQueue
    stmt = select(q.handoff_id, q.purchase_id, q.order_id).order_by(q.outcome_at, q.handoff_id)
    if handoff_ids is not None:
        stmt = stmt.where(q.handoff_id.in_(list(handoff_ids)))
    return list(map(Pending._make, conn.execute(stmt).all()))


def queued(conn: Connection, handoff_ids: Sequence[str]) -> set[str]:
    """Those of `handoff_ids` whose outcome is still to apply (readers: a final hand-off not queued
    has had its outcome applied)."""
    return {p.handoff_id for p in pending(conn, handoff_ids)}


def queued_by(conn: Connection, outcome_source: str) -> list[str]:
    """Hand-offs whose outcome from `outcome_source` (e.g. WEBHOOK) is still to apply, oldest first."""
    q = OutcomeQueue
    stmt = select(q.handoff_id).where(q.outcome_source == outcome_source).order_by(q.outcome_at, q.handoff_id)
    return list(conn.execute(stmt).scalars())
