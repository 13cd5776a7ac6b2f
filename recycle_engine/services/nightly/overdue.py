"""Attempts due long ago: a run that finds them fires them without delay, so it says so first.

A feed imported months late (the sample feed, a restored backup, a scheduler stopped for weeks) puts
subscriptions whose next attempt fell due long before tonight into the night's selection; they are
charged or handed off at once. That is usually intended, but never silently."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from recycle_engine.domain.night import Night
from recycle_engine.storage.subscription_repo import attempts_due_before

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["OVERDUE_DAYS", "Overdue", "find_overdue", "warn_overdue"]

log = logging.getLogger(__name__)

OVERDUE_DAYS = 7  # an attempt due more than this many days before the run's local date is "long overdue"


@dataclass(frozen=True)
class Overdue:
    count: int  # attempts due more than `days` days before `today`
    oldest: date  # the earliest of their due dates
    today: date
    days: int

    def sentence(self) -> str:
        late = (self.today - self.oldest).days
        return (
            f"{self.count:,} attempts fell due more than {self.days} days before {self.today.isoformat()}, "
            f"the oldest on {self.oldest.isoformat()} ({late} days ago); this run makes them now"
        )


def find_overdue(engine: Engine, *, night: Night, days: int = OVERDUE_DAYS) -> Overdue | None:
    """The recycling subscriptions the run of `night` selects whose attempt was due over `days` days
    before its local date."""
    today = night.today
    with engine.connect() as conn:
        count, oldest = attempts_due_before(conn, today - timedelta(days=days))
    if not count or oldest is None:
        return None
    return Overdue(count=int(count), oldest=oldest, today=today, days=days)


def warn_overdue(engine: Engine, *, night: Night, days: int = OVERDUE_DAYS) -> Overdue | None:
    """Log a warning when the run of `night` finds long-overdue attempts; returns what it found."""
    found = find_overdue(engine, night=night, days=days)
    if found is not None:
        log.warning(
            found.sentence(),
            extra={"overdue": found.count, "oldest_due": found.oldest.isoformat(), "days": found.days},
        )
    return found
