"""The rows the exports stream: every hand-off in creation order, and the change outbox by id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Executable, Row, select

from recycle_engine.storage.models import Change, Handoff

__all__ = ["changes_since", "handoffs_in_creation_order"]


def _stream(engine: Engine, stmt: Executable, batch: int) -> Iterator[Row[Any]]:
    with engine.connect() as conn:
        # yield_per streams: PostgreSQL uses a server-side cursor, so memory stays flat on any book.
        yield from conn.execution_options(yield_per=batch).execute(stmt)


def handoffs_in_creation_order(engine: Engine, *, batch: int) -> Iterator[Row[Any]]:
    """Every hand-off by (created_at, id), `batch` rows fetched at a time: id, source, order_id,
    purchase_id, transaction_id, gateway_id, slot, attempt, amount_minor, currency, submitted_at,
    expires_at, flexfactor_order_id, state, outcome_at, outcome_source, last_error."""
    stmt = select(
        Handoff.id,
        Handoff.source,
        Handoff.order_id,
        Handoff.purchase_id,
        Handoff.transaction_id,
        Handoff.gateway_id,
        Handoff.slot,
        Handoff.attempt,
        Handoff.amount_minor,
        Handoff.currency,
        Handoff.submitted_at,
        Handoff.expires_at,
        Handoff.flexfactor_order_id,
        Handoff.state,
        Handoff.outcome_at,
        Handoff.outcome_source,
        Handoff.last_error,
    ).order_by(Handoff.created_at, Handoff.id)
    return _stream(engine, stmt, batch)


def changes_since(engine: Engine, *, since: datetime, after_id: int | None, batch: int) -> Iterator[Row[Any]]:
    """Change rows with occurred_at at or after `since` (and id above `after_id`) in id order, `batch`
    rows fetched at a time."""
    stmt = select(
        Change.id,
        Change.entity,
        Change.entity_id,
        Change.field,
        Change.old_value,
        Change.new_value,
        Change.reason,
        Change.source,
        Change.handoff_id,
        Change.occurred_at,
    ).where(Change.occurred_at >= since)
    if after_id is not None:
        stmt = stmt.where(Change.id > after_id)
    return _stream(engine, stmt.order_by(Change.id), batch)
