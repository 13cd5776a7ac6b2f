"""SQL for money recovered by every rung of the ladder, by local day of recovery, method and attempt.

Ordinary retries on the declining gateway are approved `transactions`; FlexFactor, reruns and cascades
are approved hand-offs, dated by their outcome. Both are read through covering indexes (migration 0011)
over the previous month's first day to the report's day: a few thousand grouped rows whatever the
size of the history."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import case, func, literal, select, union_all

from recycle_engine.domain.states import Source, State
from recycle_engine.ports import ChargeResult
from recycle_engine.reports.queries import ReportBounds
from recycle_engine.storage.models import Attempt, Handoff
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
    re-rendered reads as it did."""
    start = local_midnight(previous_month_first(b.day), b.tz)
    end = b.day_end

    def day_of(column: Any) -> Any:
        return local_date(column, b.tz, start=start, end=end, dialect=dialect).label("day")

    retries = select(
        day_of(Attempt.occurred_at),
        literal("retry").label("method"),
        Attempt.attempt.label("attempt"),
        Attempt.currency.label("currency"),
        Attempt.amount_minor.label("amount_minor"),
    ).where(Attempt.result == ChargeResult.APPROVED.value, within(Attempt.occurred_at, start, end))
    method = case(
        (Handoff.source == Source.RERUN.value, literal("rerun")),
        (Handoff.source == Source.CASCADE.value, literal("cascade")),
        else_=literal("flexfactor"),
    )
    handoffs = select(
        day_of(Handoff.outcome_at),
        method.label("method"),
        case((Handoff.source == Source.RECYCLE.value, Handoff.attempt), else_=None).label("attempt"),
        Handoff.currency.label("currency"),
        Handoff.amount_minor.label("amount_minor"),
    ).where(Handoff.state == State.APPROVED.value, within(Handoff.outcome_at, start, end))
    both = union_all(retries, handoffs).subquery()
    keys = [both.c.day, both.c.method, both.c.attempt, both.c.currency]
    return (
        select(
            *keys,
            func.count().label("n"),
            # PostgreSQL sums BIGINT as NUMERIC; cast back so pandas sees integers on both databases.
            sa.cast(func.coalesce(func.sum(both.c.amount_minor), 0), sa.BigInteger).label("amount_minor"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
