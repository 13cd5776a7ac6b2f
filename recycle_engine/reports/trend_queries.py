"""SQL for the dashboard's trends: outcomes per day read from the daily rollups (never the hand-offs),
and the schedule versions with the instant each was first seen. Hand-offs per night and the rates by
cohort age come from the cohort facts of rollup_queries."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import func, select

from recycle_engine.reports.recovery import STATE_GROUPS
from recycle_engine.storage.models import CohortRollup, RecycleProfileVersion

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Select

    Query: TypeAlias = Select[*tuple[Any, ...]]

__all__ = ["FINAL_STATES", "TREND_DAYS", "outcomes_per_day_stmt", "versions_stmt"]

TREND_DAYS: Final = 60  # the dashboard's span: long enough for two months of closed 21-day cohorts
FINAL_STATES: Final = tuple(s for s, group in STATE_GROUPS.items() if group in ("recovered", "lost"))


def outcomes_per_day_stmt(first: date, last: date) -> Query:
    """Final outcomes reached on each local day from `first` to `last`, whatever the submission day:
    `day` (of the outcome), `state`, `currency`, `n` and `amount_minor`. Outcomes after `last` do not
    exist as of its end, so a past day reads as it did."""
    c = CohortRollup
    totals = [
        sa.cast(func.sum(c.handoffs), sa.BigInteger).label("n"),
        sa.cast(func.sum(c.amount_minor), sa.BigInteger).label("amount_minor"),
    ]
    keys = [c.outcome_day.label("day"), c.state, c.currency]
    return (
        select(*keys, *totals)
        .where(c.outcome_day >= first, c.outcome_day <= last, c.state.in_(FINAL_STATES))
        .group_by(*keys)
        .order_by(*keys)
    )


def versions_stmt(as_of: datetime) -> Query:
    """Every recycle schedule version first seen by `as_of`: `profile_id`, `version`, `first_seen_at`."""
    v = RecycleProfileVersion
    return (
        select(v.profile_id, v.version, v.first_seen_at)
        .where(v.first_seen_at <= as_of)
        .order_by(v.profile_id, v.first_seen_at, v.version)
    )
