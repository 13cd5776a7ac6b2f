"""SQL expressions the report and its rollups share: local days, day counts, breakdown keys."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import ColumnElement, case, func, literal
from sqlalchemy.dialects.postgresql import INTERVAL

from recycle_engine.domain.states import Source
from recycle_engine.storage.models import Decline, Handoff
from recycle_engine.storage.types import UTCDateTime

__all__ = [
    "days_between",
    "local_date",
    "local_midnight",
    "reason_key",
    "slot_key",
    "submitted",
    "utc_offsets",
    "whole_days",
    "within",
]


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which local date `day` begins in `tz`."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def within(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    """start <= column < end: a half-open range an index on `column` can serve."""
    return sa.and_(column >= start, column < end)


def submitted(h: type[Handoff] = Handoff) -> ColumnElement[datetime]:
    # A hand-off is written just before it is sent; FAILED ones never get a submission time.
    return func.coalesce(h.submitted_at, h.created_at)


def days_between(dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """Fractional days from `start` to `end`; SQLite has no interval type, so it counts Julian days."""
    if dialect == "postgresql":
        return sa.extract("epoch", end - start) / 86400.0
    return func.julianday(end) - func.julianday(start)


def whole_days(dialect: str, days: ColumnElement[Any], *, up: bool) -> ColumnElement[Any]:
    """Days rounded up (day N of the window) or down (age); PostgreSQL's CAST rounds, SQLite's truncates."""
    if dialect == "postgresql":
        return sa.cast(func.ceil(days) if up else func.floor(days), sa.Integer)
    truncated = sa.cast(days, sa.Integer)
    if not up:
        return truncated
    return truncated + case((days > truncated, 1), else_=0)


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def utc_offsets(tz: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The offsets (seconds) `tz` keeps from UTC over [start, end], as (in force from, offset), oldest first.

    Walks a day at a time and bisects each change to the second (zones change at whole seconds)."""

    def offset(second: int) -> int:
        moment = datetime.fromtimestamp(second, UTC).astimezone(tz)
        delta = moment.utcoffset()
        assert delta is not None  # a ZoneInfo always has an offset
        return int(delta.total_seconds())

    first = _epoch(start)
    spans = [(start, offset(first))]
    day = 86_400
    for lo in range(first, _epoch(end) + 1, day):
        hi = lo + day
        if offset(hi) == spans[-1][1]:
            continue
        while hi - lo > 1:  # offset(lo) is the current one, offset(hi) the next
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if offset(mid) == spans[-1][1] else (lo, mid)
        spans.append((datetime.fromtimestamp(hi, UTC), offset(hi)))
    return spans


def _shifted_date(column: Any, seconds: int, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        wall = func.timezone("UTC", column) + sa.cast(literal(f"{seconds} seconds"), INTERVAL)
        return sa.cast(wall, sa.Date)
    # SQLite keeps instants as UTC text; date() shifts it and keeps the YYYY-MM-DD a Date column stores.
    return func.date(column, f"{seconds:+d} seconds", type_=sa.Date)


def local_date(
    column: Any, tz: ZoneInfo, *, start: datetime, end: datetime, dialect: str
) -> ColumnElement[Any]:
    """The local date in `tz` of an instant column, exact across DST changes for instants in [start, end].

    The offsets come from Python's zone data (as every local midnight of the report does), newest
    first: most rows are recent, so most stop at the first WHEN. Instants before `start` take the
    offset in force at `start`."""
    spans = utc_offsets(tz, start, end)
    dates = [(since, _shifted_date(column, seconds, dialect)) for since, seconds in spans]
    if len(dates) == 1:
        return dates[0][1]
    whens = [(column >= literal(since, UTCDateTime()), expr) for since, expr in reversed(dates[1:])]
    return case(*whens, else_=dates[0][1])


def slot_key() -> ColumnElement[str]:
    """The slot of a recycle hand-off ("(none)" if unknown), else its source (RERUN, CASCADE)."""
    return case(
        (Handoff.source == Source.RECYCLE.value, func.coalesce(Handoff.slot, "(none)")), else_=Handoff.source
    )


def reason_key() -> ColumnElement[str]:
    # Display text after mapping wins over the processor's text; pandas case-folds it fully later.
    return func.lower(func.coalesce(func.nullif(Decline.display_message, ""), Decline.response_text))
