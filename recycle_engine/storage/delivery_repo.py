"""Report deliveries: one row per report day and channel, claimed before a send and closed after it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from recycle_engine.storage.models import ReportDelivery

__all__ = [
    "FAILED",
    "SENDING",
    "SENT",
    "DeliveryRow",
    "claim_delivery",
    "finish_delivery",
    "recent_deliveries",
    "record_failed_send",
]

SENDING, SENT, FAILED = "SENDING", "SENT", "FAILED"


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    day: date
    channel: str
    state: str
    recipients: str
    attempts: int
    last_error: str | None
    started_at: datetime
    finished_at: datetime | None


def _row(r: Any) -> DeliveryRow:
    return DeliveryRow(
        r.id, r.day, r.channel, r.state, r.recipients, r.attempts, r.last_error, r.started_at, r.finished_at
    )


def _find(conn: Connection, day: date, channel: str) -> Any:
    return conn.execute(
        select(ReportDelivery).where(ReportDelivery.day == day, ReportDelivery.channel == channel)
    ).first()


def claim_delivery(
    conn: Connection, *, day: date, channel: str, recipients: str, run_id: str | None, now: datetime
) -> tuple[int, DeliveryRow | None]:
    """Mark day `day` on `channel` SENDING and return (its row id, None); when it was SENT already,
    return (its id, the row) and change nothing: a rerun of the report job never sends a day twice.

    A FAILED or SENDING row (an earlier run failed, or died mid-send) is taken over; its attempts go on."""
    existing = _find(conn, day, channel)
    if existing is None:
        values = {
            "day": day,
            "channel": channel,
            "state": SENDING,
            "recipients": recipients,
            "attempts": 0,
            "run_id": run_id,
            "started_at": now,
        }
        try:
            with conn.begin_nested():
                new_id = conn.execute(
                    insert(ReportDelivery).values(**values).returning(ReportDelivery.id)
                ).scalar_one()
            return int(new_id), None
        except IntegrityError:  # another run claimed the day in between
            existing = _find(conn, day, channel)
            assert existing is not None
    if existing.state == SENT:
        return existing.id, _row(existing)
    conn.execute(
        update(ReportDelivery)
        .where(ReportDelivery.id == existing.id)
        .values(state=SENDING, recipients=recipients, run_id=run_id, started_at=now, finished_at=None)
    )
    return existing.id, None


def record_failed_send(conn: Connection, delivery_id: int, *, error: str) -> None:
    """One send failed (it will be retried or the delivery closed as FAILED)."""
    conn.execute(
        update(ReportDelivery)
        .where(ReportDelivery.id == delivery_id)
        .values(attempts=ReportDelivery.attempts + 1, last_error=error)
    )


def finish_delivery(conn: Connection, delivery_id: int, *, sent: bool, now: datetime) -> None:
    """Close the delivery: SENT (one more attempt, the one that went through) or FAILED."""
    values: dict[str, object] = {"state": SENT if sent else FAILED, "finished_at": now}
    if sent:
        values["attempts"] = ReportDelivery.attempts + 1
    conn.execute(update(ReportDelivery).where(ReportDelivery.id == delivery_id).values(**values))


def recent_deliveries(conn: Connection, limit: int = 3) -> list[DeliveryRow]:
    """The latest deliveries, newest report day first (the table holds one row per day and channel)."""
    rows = conn.execute(
        select(ReportDelivery).order_by(ReportDelivery.day.desc(), ReportDelivery.channel).limit(limit)
    )
    return [_row(r) for r in rows]
