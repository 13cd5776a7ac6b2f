"""SQL for money recovered by every rung of the ladder, by local day of recovery, method and attempt.

Ordinary retries on the declining gateway are approved `transactions`, read through their covering index
(migration 0011); FlexFactor, reruns and cascades are approved hand-offs, dated by their outcome and
read from their rollup (migration 0020). Both over the previous month's first day to the report's day:
a few thousand rows whatever the size of the history."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import func, literal, select, union_all

from recycle_engine.ports import ChargeResult
from recycle_engine.reports.queries import ReportBounds
from recycle_engine.storage.models import Attempt, RecoveryRollup
from recycle_engine.storage.report_sql import local_date, local_midnight, within

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Select

    Query: TypeAlias = Select[*tuple[Any, ...]]

__all__ = ["METHODS", "previous_month_first", "recoveries_stmt"]

# Each way a declined payment is recovered, in the order the ladder reaches them, with its label.
METHODS: Final = {
    "retry": "Ordinary retry on the declining gateway",
    "flexfactor": "FlexFactor hand-off",
    "rerun": "Rerun of a declined initial sale",
    "cascade": "Cascade (real time)",
}


def previous_month_first(day: date) -> date:
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def recoveries_stmt(b: ReportBounds, dialect: str) -> Query:
    """Recoveries from the first of the previous month to the end of the report's day: count and
    amount by local day of recovery (`day`), `method` (METHODS), `attempt` (NULL for reruns and
    cascades) and currency. Only what was recovered by the end of the day counts, so a past day
    re-rendered reads as it did.

    Approved hand-offs come from their rollup (report_recovery_rollups, by local day of approval, kept
    current by the refresh every report makes first); approved retries straight from their index."""
    first = previous_month_first(b.day)
    start = local_midnight(first, b.tz)
    end = b.day_end
    day = local_date(Attempt.occurred_at, b.tz, start=start, end=end, dialect=dialect)
    retries = select(
        day.label("day"),
        literal("retry").label("method"),
        Attempt.attempt.label("attempt"),
        Attempt.currency.label("currency"),
        literal(1, sa.BigInteger).label("n"),
        Attempt.amount_minor.label("amount_minor"),
    ).where(Attempt.result == ChargeResult.APPROVED.value, within(Attempt.occurred_at, start, end))
    r = RecoveryRollup
    handoffs = select(
        r.outcome_day.label("day"),
        r.method.label("method"),
        r.attempt.label("attempt"),
        r.currency.label("currency"),
        r.recoveries.label("n"),
        r.amount_minor.label("amount_minor"),
    ).where(r.outcome_day >= first, r.outcome_day <= b.day)
    both = union_all(retries, handoffs).subquery()
    keys = [both.c.day, both.c.method, both.c.attempt, both.c.currency]
    # PostgreSQL sums BIGINT as NUMERIC; cast back so pandas sees integers on both databases.
    return (
        select(
            *keys,
            sa.cast(func.sum(both.c.n), sa.BigInteger).label("n"),
            sa.cast(func.coalesce(func.sum(both.c.amount_minor), 0), sa.BigInteger).label("amount_minor"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
