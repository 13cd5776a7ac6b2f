"""The webhook inbox: accepted deliveries acknowledged to FlexFactor and waiting to be applied."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, delete, func, insert, select

from recycle_engine.storage.models import WebhookDelivery, WebhookInbox

__all__ = ["Backlog", "InboxRow", "backlog", "next_rows", "put", "take"]


class InboxRow(NamedTuple):
    delivery_id: int
    gateway_id: str
    received_at: datetime
    body: str | None  # the verified body as the delivery journal holds it


class Backlog(NamedTuple):
    waiting: int
    oldest_received_at: datetime | None


def put(conn: Connection, *, delivery_id: int, gateway_id: str, received_at: datetime) -> None:
    """Queue an accepted delivery for applying; call it in the transaction that journals the delivery."""
    conn.execute(
        insert(WebhookInbox).values(delivery_id=delivery_id, gateway_id=gateway_id, received_at=received_at)
    )


def next_rows(conn: Connection, limit: int, *, after: int = 0) -> list[InboxRow]:
    """Up to `limit` waiting deliveries with ids above `after`, in the order they arrived."""
    stmt = (
        select(
            WebhookInbox.delivery_id, WebhookInbox.gateway_id, WebhookInbox.received_at, WebhookDelivery.body
        )
        .join(WebhookDelivery, WebhookDelivery.id == WebhookInbox.delivery_id)
        .where(WebhookInbox.delivery_id > after)
        .order_by(WebhookInbox.delivery_id)
        .limit(limit)
    )
    return [InboxRow(*row) for row in conn.execute(stmt)]


def take(conn: Connection, delivery_id: int) -> bool:
    """Remove a delivery from the inbox in the transaction that applies it; False if another writer
    already took it (the delete waits for that writer's commit on PostgreSQL, and SQLite has one writer)."""
    stmt = (
        delete(WebhookInbox)
        .where(WebhookInbox.delivery_id == delivery_id)
        .returning(WebhookInbox.delivery_id)
    )
    return conn.execute(stmt).scalar_one_or_none() is not None


def backlog(conn: Connection) -> Backlog:
    """How many deliveries wait in the inbox, and when the oldest of them arrived."""
    waiting, oldest = conn.execute(
        select(func.count(), func.min(WebhookInbox.received_at)).select_from(WebhookInbox)
    ).one()
    return Backlog(int(waiting), oldest)
