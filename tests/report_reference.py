"""The report's month and cohort figures aggregated straight from hand-offs, as the report did before
it read rollups: the reference the rollups must reproduce (tests only; they scan the whole range)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, case, func, literal, select

from recycle_engine.reports.queries import ReportBounds, fetch, grouped
from recycle_engine.storage.models import Decline, Handoff
from recycle_engine.storage.report_sql import (
    days_between,
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
