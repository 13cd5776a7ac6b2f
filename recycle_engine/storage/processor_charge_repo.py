"""Processor charge rows (NMI): the rows of an attempt, their leases and answers, and the subscriptions
a charge takes off the ladder and puts back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, or_, select, update

from recycle_engine.storage.models import ProcessorCharge, Subscription

__all__ = [
    "ANSWERED",
    "PENDING",
    "charges_of_subscriptions",
    "lease_charge",
    "record_charge_attempt",
    "release_stale_charges",
    "take_off_selection",
]

PENDING = "PENDING"
ANSWERED = "ANSWERED"


def charges_of_subscriptions(conn: Connection, subscription_ids: Sequence[str]) -> list[Row[Any]]:
    """Every charge row (all columns) of these subscriptions."""
    return list(
        conn.execute(
            select(ProcessorCharge.__table__).where(ProcessorCharge.subscription_id.in_(subscription_ids))
        )
    )


def lease_charge(conn: Connection, charge_id: str, *, run_id: str, until: datetime, now: datetime) -> None:
    """Hand an existing charge row to `run_id` until `until`."""
    conn.execute(
        update(ProcessorCharge)
        .where(ProcessorCharge.id == charge_id)
        .values(claimed_by=run_id, claimed_until=until, updated_at=now)
    )


def take_off_selection(conn: Connection, subscription_ids: Sequence[str], *, now: datetime) -> None:
    """Clear the next attempt of these subscriptions while their charge is out."""
    conn.execute(
        update(Subscription)
        .where(Subscription.id.in_(subscription_ids))
        .values(next_attempt=None, next_attempt_on=None, updated_at=now)
    )


def record_charge_attempt(
    conn: Connection,
    charge_id: str,
    *,
    sends: int,
    lookups: int,
    now: datetime,
    answer: tuple[str, str] | None,
    error: str | None,
) -> None:
    """Add a run's sends and lookups to a charge and write its answer (result, response text), which
    ends its lease; without one, the error is kept and the lease stays."""
    values: dict[str, object] = {
        "sends": ProcessorCharge.sends + sends,
        "lookups": ProcessorCharge.lookups + lookups,
        "updated_at": now,
    }
    if answer is None:
        # The lease stays: a run starting meanwhile must not read a fresh absence as final.
        values["last_error"] = error
    else:
        values |= {
            "state": ANSWERED,
            "result": answer[0],
            "response_text": answer[1],
            "claimed_until": None,
        }
    conn.execute(update(ProcessorCharge).where(ProcessorCharge.id == charge_id).values(values))


def release_stale_charges(conn: Connection, *, at: datetime, now: datetime) -> int:
    """Put back on the ladder, where it stood, the subscription of every charge PENDING with no live
    lease at `at`, and release that charge; how many."""
    stale = and_(
        ProcessorCharge.state == PENDING,
        or_(ProcessorCharge.claimed_until.is_(None), ProcessorCharge.claimed_until <= at),
    )
    rows = conn.execute(
        select(
            ProcessorCharge.id,
            ProcessorCharge.subscription_id,
            ProcessorCharge.resume_attempt,
            ProcessorCharge.resume_on,
        ).where(stale)
    ).all()
    for r in rows:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == r.subscription_id, Subscription.next_attempt_on.is_(None))
            .values(next_attempt=r.resume_attempt, next_attempt_on=r.resume_on, updated_at=now)
        )
        conn.execute(
            update(ProcessorCharge)
            .where(ProcessorCharge.id == r.id)
            .values(claimed_by=None, claimed_until=None, updated_at=now)
        )
    return len(rows)
