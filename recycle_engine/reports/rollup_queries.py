"""SQL over the daily rollups: the month to date, the breakdowns and the cohorts, a few thousand rows
whatever the size of the history (services/reporting/rollups.py keeps them current)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, Final

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Connection, case, func, literal, select

from recycle_engine.domain.states import State
from recycle_engine.reports.queries import ReportBounds, fetch
from recycle_engine.storage.models import BreakdownRollup, CohortRollup

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Select

    Query: TypeAlias = Select[*tuple[Any, ...]]

__all__ = [
    "BREAKDOWNS",
    "SAVES",
    "breakdowns_stmt",
    "cohort_facts_stmt",
    "decline_cohort_stmt",
    "fetch_cohorts",
]

# The breakdown tables of the report, in order, with their titles (rollup_repo.BREAKDOWN_NAMES keys).
BREAKDOWNS: Final = {
    "slot": "Slot",
    "reason": "Decline reason",
    "declining_gateway": "Declining gateway",
    "flexfactor_gateway": "FlexFactor gateway",
    "card_brand": "Card brand",
    "card_bin": "Card BIN",
}
SAVES: Final = "cycle"  # the rollups' breakdown of recycle hand-offs by billing cycle: the saves table


def _totals(n: Any, amount: Any) -> list[Any]:
    # PostgreSQL sums BIGINT as NUMERIC; cast back so pandas sees integers on both databases.
    return [
        sa.cast(func.sum(n), sa.BigInteger).label("n"),
        sa.cast(func.sum(amount), sa.BigInteger).label("amount_minor"),
    ]


def _as_of(rollup: type[CohortRollup] | type[BreakdownRollup], bounds: ReportBounds) -> dict[str, Any]:
    """The rollup's state, recovery day and reversal as they stood at the end of the report day: a
    hand-off that became final later was still open then (a past day re-rendered reads as it did)."""
    later = rollup.outcome_day > bounds.day
    then: dict[str, Any] = {"state": case((later, literal(State.SUBMITTED.value)), else_=rollup.state)}
    if rollup is CohortRollup:
        then["recovery_day"] = case((later, sa.null()), else_=CohortRollup.recovery_day)
        then["reversal"] = case((later, sa.null()), else_=CohortRollup.reversal)
    return then


def cohort_facts_stmt(bounds: ReportBounds, days: tuple[date, date] | None = None) -> Query:
    """Hand-offs submitted in the cohort range by local submission day (`cohort`), state, currency, day
    of the window recovered on (`recovery_day`, approvals only) and reversal (REFUNDED or CHARGEBACK),
    each as of the end of the report day; `days` (first, last) instead of the cohort range."""
    c = CohortRollup
    then = _as_of(c, bounds)
    first, last = days or (bounds.first_cohort, bounds.day)
    inner = (
        select(c.day.label("cohort"), then["state"].label("state"), c.currency, c.handoffs, c.amount_minor)
        .add_columns(then["recovery_day"].label("recovery_day"), then["reversal"].label("reversal"))
        .where(c.day >= first, c.day <= last)
        .subquery()
    )
    keys = [inner.c[k] for k in ("cohort", "state", "currency", "recovery_day", "reversal")]
    return select(*keys, *_totals(inner.c.handoffs, inner.c.amount_minor)).group_by(*keys).order_by(*keys)


def decline_cohort_stmt(bounds: ReportBounds) -> Query:
    """Hand-offs submitted up to the report day for the declines of the cohort range, by local decline
    day (`cohort`), state, currency and reversal as of the end of the report day; hand-offs with no
    decline on record are left out."""
    c = CohortRollup
    then = _as_of(c, bounds)
    inner = (
        select(c.decline_day.label("cohort"), then["state"].label("state"), c.currency)
        .add_columns(then["reversal"].label("reversal"), c.handoffs, c.amount_minor)
        .where(c.decline_day >= bounds.first_cohort, c.decline_day <= bounds.day, c.day <= bounds.day)
        .subquery()
    )
    keys = [inner.c[k] for k in ("cohort", "state", "currency", "reversal")]
    return select(*keys, *_totals(inner.c.handoffs, inner.c.amount_minor)).group_by(*keys).order_by(*keys)


def breakdowns_stmt(bounds: ReportBounds, days: tuple[date, date] | None = None) -> Query:
    """Month-to-date hand-offs of every breakdown of the report (BREAKDOWNS) and of the recycle saves
    ("cycle": recycle hand-offs only, no reruns or cascades, by billing cycle as text), by breakdown,
    key (`key`, plus the response code for reasons), state as of the end of the report day and
    currency: one statement for all seven. `days` (first, last) instead of the month to date."""
    b = BreakdownRollup
    first, last = days or (bounds.month_first, bounds.day)
    inner = (
        select(b.breakdown, b.breakdown_key.label("key"), b.code, _as_of(b, bounds)["state"].label("state"))
        .add_columns(b.currency, b.handoffs, b.amount_minor)
        .where(b.breakdown.in_([*BREAKDOWNS, SAVES]), b.day >= first, b.day <= last)
        .subquery()
    )
    keys = [inner.c[k] for k in ("breakdown", "key", "code", "state", "currency")]
    return select(*keys, *_totals(inner.c.handoffs, inner.c.amount_minor)).group_by(*keys).order_by(*keys)


def fetch_cohorts(conn: Connection, stmt: Query) -> pd.DataFrame:
    """Cohort rows with the day as ISO text, as the pandas transforms key and sort them."""
    frame = fetch(conn, stmt)
    frame["cohort"] = [d.isoformat() for d in frame["cohort"]]
    return frame
