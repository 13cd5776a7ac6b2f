"""The report's month and cohort figures aggregated straight from hand-offs, as the report did before
it read rollups: the reference the rollups must reproduce (tests only; they scan the whole range)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, case, func, literal, select, union_all

from recycle_engine.domain.states import Source, State
from recycle_engine.ports import ChargeResult
from recycle_engine.reports.ladder_queries import previous_month_first
from recycle_engine.reports.queries import ReportBounds, fetch, grouped
from recycle_engine.storage.models import Attempt, Decline, Handoff
from recycle_engine.storage.report_sql import (
    days_between,
    local_date,
    local_midnight,
    reason_key,
    slot_key,
    submitted,
    whole_days,
    within,
)


def _local_day(column: Any, bounds: ReportBounds) -> ColumnElement[str]:
    """The local date (ISO text) of an instant inside the cohort range, exact across DST changes."""
    days = bounds.cohort_days
    whens = [
        (column < local_midnight(d + timedelta(days=1), bounds.tz), literal(d.isoformat())) for d in days[:-1]
    ]
    if not whens:
        return literal(days[-1].isoformat())
    return case(*whens, else_=literal(days[-1].isoformat()))


def _later(bounds: ReportBounds) -> ColumnElement[bool]:
    """Final only after the report day: open as of its end."""
    return Handoff.outcome_at >= bounds.day_end


def _state(bounds: ReportBounds) -> ColumnElement[Any]:
    return case((_later(bounds), literal("SUBMITTED")), else_=Handoff.state)


def _reversal(bounds: ReportBounds) -> ColumnElement[Any]:
    flag = func.upper(Handoff.attention)
    return case((_later(bounds), None), (flag.in_(["REFUNDED", "CHARGEBACK"]), flag), else_=None)


def cohort_facts(conn: Connection, bounds: ReportBounds) -> pd.DataFrame:
    dialect = conn.dialect.name
    days = days_between(dialect, submitted(), Handoff.outcome_at)
    inner = select(
        _local_day(submitted(), bounds).label("cohort"),
        _state(bounds).label("state"),
        Handoff.currency,
        Handoff.amount_minor,
        case((_state(bounds) == "APPROVED", whole_days(dialect, days, up=True)), else_=None).label(
            "recovery_day"
        ),
        _reversal(bounds).label("reversal"),
    ).where(within(submitted(), bounds.cohort_start, bounds.day_end))
    return fetch(conn, grouped(inner, ["cohort", "state", "currency", "recovery_day", "reversal"]))


def decline_cohort_facts(conn: Connection, bounds: ReportBounds) -> pd.DataFrame:
    inner = (
        select(
            _local_day(Decline.declined_at, bounds).label("cohort"),
            _state(bounds).label("state"),
            Handoff.currency,
            _reversal(bounds).label("reversal"),
            Handoff.amount_minor,
        )
        .select_from(Handoff)
        .join(Decline, Decline.transaction_id == Handoff.transaction_id)
        .where(
            within(Decline.declined_at, bounds.cohort_start, bounds.day_end),
            submitted() < bounds.day_end,
        )
    )
    return fetch(conn, grouped(inner, ["cohort", "state", "currency", "reversal"]))


def breakdown(conn: Connection, bounds: ReportBounds, name: str) -> pd.DataFrame:
    key: dict[str, Any] = {
        "slot": slot_key(),
        "reason": reason_key(),
        "declining_gateway": Handoff.declining_gateway_id,
        "flexfactor_gateway": Handoff.gateway_id,
        "card_brand": Decline.card_brand,
        "card_bin": Decline.card_bin,
        "cycle": sa.cast(Handoff.billing_cycle, sa.String),
    }
    code = Decline.response_code if name == "reason" else literal(None, sa.String)
    inner = (
        select(
            key[name].label("key"),
            code.label("code"),
            _state(bounds).label("state"),
            Handoff.currency,
            Handoff.amount_minor,
        )
        .select_from(Handoff)
        .outerjoin(Decline, Decline.transaction_id == Handoff.transaction_id)
        .where(within(submitted(), bounds.month_start, bounds.day_end))
    )
    if name == "cycle":
        inner = inner.where(Handoff.source == "RECYCLE")
    return fetch(conn, grouped(inner, ["key", "code", "state", "currency"]))


def recoveries(conn: Connection, bounds: ReportBounds) -> pd.DataFrame:
    """The ladder's recoveries (ladder_queries.recoveries_stmt) read from every approved retry and
    hand-off of the range, as the report did before the recovery rollup (migration 0020)."""
    dialect = conn.dialect.name
    start = local_midnight(previous_month_first(bounds.day), bounds.tz)
    end = bounds.day_end

    def day_of(column: Any) -> Any:
        return local_date(column, bounds.tz, start=start, end=end, dialect=dialect).label("day")

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
    stmt = (
        select(
            *keys,
            func.count().label("n"),
            sa.cast(func.coalesce(func.sum(both.c.amount_minor), 0), sa.BigInteger).label("amount_minor"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    return fetch(conn, stmt)
