"""SQL for the daily report's own day, open hand-offs and exceptions; each answer is a small DataFrame.

The month to date and the cohorts come from the daily rollups (rollup_queries.py): no statement here
reads more than the day, the open hand-offs, or the exceptions of the cohort range (through indexes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection, Row, Select, case, func, literal, select

from recycle_engine.domain.states import State
from recycle_engine.storage.models import CrmDelivery, Decline, Handoff, HandoffEvent, JobRun, WebhookDelivery
from recycle_engine.storage.report_sql import days_between, local_midnight, submitted, whole_days, within
from recycle_engine.storage.types import UTCDateTime

if TYPE_CHECKING:
    from typing import TypeAlias

    Query: TypeAlias = Select[*tuple[Any, ...]]

__all__ = ["EXCEPTION_KINDS", "ReportBounds", "activity_stmt", "detail_stmt", "fetch_detail"]
__all__ += [
    "exception_stmt",
    "fetch",
    "fetch_all",
    "grouped",
    "job_runs_stmt",
    "local_midnight",
    "nearing_expiry_stmt",
]
__all__ += ["open_by_age_stmt", "webhooks_stmt"]

EXCEPTION_ROW_LIMIT = 200  # rows listed per exception kind; the count is always the full count
NEARING_EXPIRY_DAYS = 3
FINAL_RATE_DAYS = 7  # closed submission cohorts the final rates are quoted over: a whole week
STUCK_AFTER = timedelta(hours=1)
_OPEN = [State.PENDING.value, State.SUBMITTED.value]


@dataclass(frozen=True)
class ReportBounds:
    """What a report for local day `day` covers; build it with `for_day`. Every instant is UTC.

    Cohorts reach back to the first of the month or a whole retry window, whichever is earlier, so
    the cohorts still in their window are always shown beside the month to date."""

    day: date
    tz: ZoneInfo
    now: datetime
    window_days: int
    month_first: date
    first_cohort: date
    day_start: datetime
    day_end: datetime
    month_start: datetime
    cohort_start: datetime

    @classmethod
    def for_day(cls, day: date, tz: ZoneInfo, now: datetime, *, window_days: int = 21) -> ReportBounds:
        month_first = day.replace(day=1)
        first_cohort = min(month_first, day - timedelta(days=window_days))
        return cls(
            *(day, tz, now, window_days, month_first, first_cohort),
            *(local_midnight(d, tz) for d in (day, day + timedelta(days=1), month_first, first_cohort)),
        )

    @property
    def as_of(self) -> datetime:
        """The instant the report reads the book at: the end of its day, or `now` while the day lasts.
        Nothing that happened later shows, so a past day re-rendered reads as it did."""
        return min(self.now, self.day_end)

    @property
    def closed_cohorts(self) -> tuple[date, date]:
        """The submission days the final rates are quoted over: the last FINAL_RATE_DAYS whose windows
        have closed and been settled by the end of the report day (recovery.is_closed)."""
        last = self.day - timedelta(days=self.window_days + 1)
        return last - timedelta(days=FINAL_RATE_DAYS - 1), last

    @property
    def cohort_days(self) -> list[date]:
        count = (self.day - self.first_cohort).days + 1
        return [self.first_cohort + timedelta(days=i) for i in range(count)]


def fetch(conn: Connection, stmt: Query) -> pd.DataFrame:
    """Run an aggregate statement and return its rows as a DataFrame (columns named by labels)."""
    result = conn.execute(stmt)
    return _frame(result.fetchall(), list(result.keys()))


def fetch_all(conn: Connection, stmts: Sequence[Query]) -> pd.DataFrame:
    """Run statements with the same labelled columns and return their rows as one DataFrame, so each
    column's type comes from all the rows (concatenating per-statement frames, some of them empty,
    left every column of type object)."""
    rows: list[Any] = []
    columns: list[str] = []
    for stmt in stmts:
        result = conn.execute(stmt)
        columns = list(result.keys())
        rows += result.fetchall()
    return _frame(rows, columns)


def _frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    # Plain tuples: pandas builds a frame from Row objects five times slower (it inspects each one).
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


# --- expressions ---------------------------------------------------------------------------------


def _cols(model: type[Any], names: str) -> list[Any]:
    return [getattr(model, n) for n in names.split()]


def _at(value: datetime) -> ColumnElement[datetime]:
    return literal(value, UTCDateTime())


def grouped(inner: Query, keys: list[str], *, amount: str | None = "amount_minor") -> Query:
    """GROUP BY the labelled columns of a subquery; PostgreSQL refuses to match computed keys otherwise."""
    sub = inner.subquery()
    cols: list[Any] = [sub.c[k] for k in keys]
    aggregates: list[Any] = [func.count().label("n")]
    if amount is not None:
        # PostgreSQL sums BIGINT as NUMERIC; cast back so pandas sees integers on both databases.
        aggregates.append(sa.cast(func.coalesce(func.sum(sub.c[amount]), 0), sa.BigInteger).label(amount))
    return select(*cols, *aggregates).group_by(*cols).order_by(*cols)


# --- recovery ------------------------------------------------------------------------------------


def activity_stmt(bounds: ReportBounds) -> Query:
    """Outcomes reached during the day, whatever the hand-off's age: the money that came in that day."""
    inner = select(*_cols(Handoff, "state currency amount_minor"), Handoff.late_outcome.label("late"))
    inner = inner.where(within(Handoff.outcome_at, bounds.day_start, bounds.day_end))
    return grouped(inner, ["state", "currency", "late"])


def _open_at(at: datetime) -> ColumnElement[bool]:
    """Open at instant `at`: submitted (or queued) before it, and not final before it. Written as an OR
    of two index ranges (open now; final since `at`), so a current report reads only open hand-offs
    and the outcomes of the hours since its day ended."""
    # submitted() < at, spelled so that no index serves it: the history before `at` is all of it.
    before = sa.or_(
        Handoff.submitted_at < at, sa.and_(Handoff.submitted_at.is_(None), Handoff.created_at < at)
    )
    return sa.and_(sa.or_(Handoff.state.in_(_OPEN), Handoff.outcome_at >= at), before)


def _state_at(at: datetime) -> ColumnElement[str]:
    """The state at instant `at`: final since then means open then, SUBMITTED if FlexFactor had
    accepted it, else still PENDING."""
    since = Handoff.outcome_at >= at
    accepted = sa.and_(Handoff.submitted_at.is_not(None), Handoff.submitted_at < at)
    return case(
        (sa.and_(since, accepted), literal(State.SUBMITTED.value)),
        (since, literal(State.PENDING.value)),
        else_=Handoff.state,
    )


def open_by_age_stmt(bounds: ReportBounds, dialect: str) -> Query:
    """Hand-offs open at the end of the report day (`as_of`) by whole days since submission then,
    state then and currency."""
    at = bounds.as_of
    age = whole_days(dialect, days_between(dialect, submitted(), _at(at)), up=False)
    inner = select(
        age.label("age_days"), _state_at(at).label("state"), *_cols(Handoff, "currency amount_minor")
    )
    inner = inner.where(_open_at(at))
    return grouped(inner, ["age_days", "state", "currency"])


def _row_columns(at: datetime) -> list[Any]:
    """A listed hand-off's columns, its state and outcome time as they were at `at`."""
    names = "order_id source gateway_id amount_minor currency created_at expires_at"
    return [
        Handoff.id.label("handoff_id"),
        *_cols(Handoff, names),
        _state_at(at).label("state"),
        case((Handoff.outcome_at < at, Handoff.outcome_at), else_=sa.null()).label("outcome_at"),
    ]


def nearing_expiry_stmt(bounds: ReportBounds) -> Query:
    """Hand-offs open at `as_of` whose window closes within three days of it, soonest first, with the
    full count."""
    at = bounds.as_of
    horizon = at + timedelta(days=NEARING_EXPIRY_DAYS)
    return (
        select(*_row_columns(at), func.count().over().label("total"))
        .where(_open_at(at), Handoff.expires_at >= at, Handoff.expires_at < horizon)
        .order_by(Handoff.expires_at, Handoff.id)
        .limit(EXCEPTION_ROW_LIMIT)
    )


# --- reconciliation ------------------------------------------------------------------------------

EXCEPTION_KINDS = ("PAST_EXPIRY", "FAILED", "ATTENTION", "LATE_APPROVAL", "STUCK_PENDING", "AMOUNT_MISMATCH")
AMOUNT_MISMATCH_EVENT = (
    "AMOUNT_MISMATCH"  # handoff_events.kind reconcile records (services/outcomes/reconcile.py)
)


def exception_stmt(bounds: ReportBounds, kind: str) -> Query:
    """Hand-offs of one exception kind, oldest first, each with the full count of its kind (or flag).

    FAILED hand-offs, late approvals and amount mismatches are listed for the cohort range; the open
    ones and the attention flags for as long as they last (flags are cleared when FlexFactor's status
    moves on)."""
    if kind == "AMOUNT_MISMATCH":
        return _amount_mismatch_stmt(bounds)
    if kind == "ATTENTION":
        return _flagged_stmt(bounds)
    detail: Any = literal(None)
    at = bounds.as_of
    if kind == "PAST_EXPIRY":
        where = [_open_at(bounds.as_of), Handoff.expires_at < bounds.as_of]
    elif kind == "FAILED":
        where = [
            Handoff.state == State.FAILED.value,
            within(Handoff.created_at, bounds.cohort_start, bounds.day_end),
        ]
        detail = Handoff.last_error
    elif kind == "LATE_APPROVAL":
        where = [
            # "= true", not "IS true": only the former can use the (late_outcome, outcome_at) index.
            Handoff.late_outcome == sa.true(),
            within(Handoff.outcome_at, bounds.cohort_start, bounds.day_end),
        ]
    elif kind == "STUCK_PENDING":
        # Still PENDING at `as_of`, its send started an hour before. A resend clears send_started_at,
        # so one resent since and settled is not listed in a re-render.
        # Open at `as_of` and PENDING then: PENDING now or final since. Narrower than _open_at's
        # "open now", so the index of its own filter skips the far more numerous SUBMITTED ones.
        pending_then = sa.or_(Handoff.state == State.PENDING.value, Handoff.outcome_at >= at)
        where = [
            pending_then,
            _open_at(at),
            _state_at(at) == State.PENDING.value,
            Handoff.send_started_at < at - STUCK_AFTER,
        ]
        detail = Handoff.last_error
    else:
        raise ValueError(f"unknown exception kind {kind!r}")
    # The count reads every match anyway, so the matches are found first, through the index of their
    # own filter, and only they are sorted. Left to itself, PostgreSQL may instead walk the creation
    # index over the whole history to avoid the sort (0.85 s of a 1.5 s report at 5,000,000 hand-offs).
    matches = (
        select(literal(kind).label("kind"), *_row_columns(at), detail.label("detail"))
        .where(*where)
        .cte(f"{kind.lower()}_matches")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        select(matches, func.count().over().label("total"))
        .order_by(matches.c.created_at, matches.c.handoff_id)
        .limit(EXCEPTION_ROW_LIMIT)
    )


def _flagged_stmt(bounds: ReportBounds) -> Query:
    """Flagged hand-offs made by the end of the report day, oldest first, each with the count of its
    flag. Refunds and chargebacks stay flagged for good, so they grow with the history: the rows come
    from the partial index of flagged hand-offs in creation order (stopping at the limit), the counts
    from the attention index alone; a window count would read every flagged row. A flag carries no
    time of its own: one raised after the report day on an older hand-off shows in a re-render."""
    flagged = sa.and_(Handoff.attention.is_not(None), Handoff.created_at < bounds.day_end)
    listed = (
        select(*_row_columns(bounds.as_of), Handoff.attention.label("detail"))
        .where(flagged)
        .order_by(Handoff.created_at, Handoff.id)
        .limit(EXCEPTION_ROW_LIMIT)
        .subquery("listed")
    )
    totals = (
        select(Handoff.attention.label("flag"), func.count().label("total"))
        .where(flagged)
        .group_by(Handoff.attention)
        .subquery("totals")
    )
    return (
        select(literal("ATTENTION").label("kind"), *listed.c, totals.c.total)
        .join(totals, totals.c.flag == listed.c.detail)
        .order_by(listed.c.created_at, listed.c.handoff_id)
    )


def _amount_mismatch_stmt(bounds: ReportBounds) -> Query:
    """Hand-offs whose FlexFactor order showed another amount than we handed off, found in the cohort
    range; the detail is the latest finding (both amounts), from the event reconcile recorded."""
    e = HandoffEvent
    found = (
        select(e.handoff_id, func.max(e.id).label("event_id"))
        .where(e.kind == AMOUNT_MISMATCH_EVENT, within(e.occurred_at, bounds.cohort_start, bounds.day_end))
        .group_by(e.handoff_id)
        .subquery()
    )
    return (
        select(
            literal("AMOUNT_MISMATCH").label("kind"),
            *_row_columns(bounds.as_of),
            e.detail.label("detail"),
            func.count().over().label("total"),
        )
        .select_from(found)
        .join(Handoff, Handoff.id == found.c.handoff_id)
        .join(e, e.id == found.c.event_id)
        .order_by(Handoff.created_at, Handoff.id)
        .limit(EXCEPTION_ROW_LIMIT)
    )


def webhooks_stmt(bounds: ReportBounds) -> Query:
    """The day's webhook deliveries by gateway, verdict, reason (as the webhook service journals it), duplicate."""
    inner = select(
        *_cols(WebhookDelivery, "gateway_id accepted"),
        func.coalesce(WebhookDelivery.reason, "").label("reason"),
        WebhookDelivery.is_duplicate.label("duplicate"),
    ).where(within(WebhookDelivery.received_at, bounds.day_start, bounds.day_end))
    return grouped(inner, ["gateway_id", "accepted", "reason", "duplicate"], amount=None)


def crm_refusals_stmt(bounds: ReportBounds) -> Query:
    """Changes the CRM refused, or that ran out of attempts, on the day (by state)."""
    return (
        select(CrmDelivery.state, func.count().label("n"))
        .where(CrmDelivery.state.in_(("REFUSED", "FAILED")))
        .where(within(CrmDelivery.updated_at, bounds.day_start, bounds.day_end))
        .group_by(CrmDelivery.state)
    )


def job_runs_stmt(bounds: ReportBounds, *, exclude_run: str | None = None) -> Query:
    """The day's job runs (a handful), in start order."""
    stmt: Query = (
        select(*_cols(JobRun, "id job started_at finished_at status counts error"))
        .where(within(JobRun.started_at, bounds.day_start, bounds.day_end))
        .order_by(JobRun.started_at, JobRun.id)
    )
    if exclude_run is not None:
        stmt = stmt.where(JobRun.id != exclude_run)
    return stmt


# --- detail rows ---------------------------------------------------------------------------------


_DETAIL_COLUMNS = (
    "source order_id purchase_id transaction_id slot attempt gateway_id declining_gateway_id amount_minor "
    "currency state outcome_source"
)
_DETAIL_TIMES = ("created_at", "submitted_at", "outcome_at", "expires_at")


def detail_stmt(bounds: ReportBounds, dialect: str) -> Query:
    """Every hand-off touched on the day (created, settled, or any event), with its decline reason.

    The hand-offs come from a UNION of three index range scans rather than one OR over three columns.
    On SQLite the union is of rowids, which the creation and outcome indexes hold: those two scans
    never read the table, and each hand-off's row is read once, by rowid, not found again by its id."""
    lo, hi = bounds.day_start, bounds.day_end
    if dialect == "sqlite":
        rowid: ColumnElement[int] = sa.literal_column(f"{Handoff.__tablename__}.rowid")
        touched = sa.union(
            select(rowid.label("id")).select_from(Handoff).where(within(Handoff.created_at, lo, hi)),
            select(rowid.label("id")).select_from(Handoff).where(within(Handoff.outcome_at, lo, hi)),
            select(rowid.label("id"))
            .select_from(HandoffEvent)
            .join(Handoff, Handoff.id == HandoffEvent.handoff_id)
            .where(within(HandoffEvent.occurred_at, lo, hi)),
        ).subquery()
        key: Any = rowid
    else:
        touched = sa.union(
            select(Handoff.id.label("id")).where(within(Handoff.created_at, lo, hi)),
            select(Handoff.id.label("id")).where(within(Handoff.outcome_at, lo, hi)),
            select(HandoffEvent.handoff_id.label("id")).where(within(HandoffEvent.occurred_at, lo, hi)),
        ).subquery()
        key = Handoff.id
    columns = [
        Handoff.id.label("submission_id"),
        *_cols(Handoff, _DETAIL_COLUMNS),
        # As the driver returns them (UTC text on SQLite): the CSV formats them a column at a time,
        # and the column type's conversion of each value cost more than the rest of the CSV.
        *(sa.type_coerce(getattr(Handoff, c), sa.String).label(c) for c in _DETAIL_TIMES),
        Decline.response_code.label("decline_code"),
        func.coalesce(func.nullif(Decline.display_message, ""), Decline.response_text).label(
            "decline_reason"
        ),
    ]
    decline = Decline.transaction_id == Handoff.transaction_id
    if dialect == "postgresql":
        # Each touched hand-off looked up by its key. As a plain join, PostgreSQL estimated the day's
        # few thousand look-ups dearer than reading every hand-off (0.2 s against 0.025 s at 1,000,000);
        # LIMIT keeps the lookup a lateral subquery, which the planner cannot turn into that join.
        row = (
            select(*columns)
            .select_from(Handoff)
            .outerjoin(Decline, decline)
            .where(Handoff.id == touched.c.id)
            .limit(1)
            .lateral("touched_handoff")
        )
        return (
            select(*row.c)
            .select_from(touched)
            .join(row, sa.true())
            .order_by(row.c.created_at, row.c.submission_id)
        )
    return (
        select(*columns)
        .select_from(touched)
        .join(Handoff, key == touched.c.id)
        .outerjoin(Decline, decline)
        .order_by(Handoff.created_at, Handoff.id)
    )


def fetch_detail(conn: Connection, bounds: ReportBounds, *, chunk_rows: int = 20_000) -> Iterator[Row[Any]]:
    """The detail rows, fetched `chunk_rows` at a time (a server-side cursor on PostgreSQL), so memory
    stays flat however busy the day."""
    result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
        detail_stmt(bounds, conn.dialect.name)
    )
    for part in result.partitions(chunk_rows):
        yield from part
