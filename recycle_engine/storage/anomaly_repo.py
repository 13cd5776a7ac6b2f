"""The numbers the anomaly checks read, and the anomalies found, as the report lists them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Select, and_, case, exists, func, insert, literal, or_, select

from recycle_engine.domain.anomalies import Anomaly
from recycle_engine.domain.states import Event, Source, State
from recycle_engine.storage.models import Handoff, HandoffEvent, JobRun, NightAnomaly, WebhookDelivery

__all__ = [
    "unresolved_handoffs",
    "DueWindow",
    "anomalies_stmt",
    "handoffs_by_day",
    "job_succeeded_within",
    "record_anomalies",
    "send_errors",
    "submit_nights",
    "unsent_by_gateway",
    "webhook_facts",
]


@dataclass(frozen=True)
class DueWindow:
    """A job was last due on local day `due_on`; a successful run started in [start, end) covers it."""

    job: str
    due_on: date
    start: datetime  # local midnight of `due_on`, in UTC
    end: datetime  # the job's next fire after that one


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def handoffs_by_day(conn: Connection, days: Sequence[date], tz: ZoneInfo) -> dict[date, int]:
    """Hand-offs made on each local day of `days` (consecutive, ascending); cascades are real time, not nightly."""
    if not days:
        return {}
    start, end = _midnight(days[0], tz), _midnight(days[-1] + timedelta(days=1), tz)
    # One CASE over local midnights groups by local day exactly, across DST changes, in the database.
    day_of = case(
        *[
            (Handoff.created_at < _midnight(d + timedelta(days=1), tz), literal(d.isoformat()))
            for d in days[:-1]
        ],
        else_=literal(days[-1].isoformat()),
    ).label("day")
    inner = (
        select(day_of)
        .where(Handoff.created_at >= start, Handoff.created_at < end, Handoff.source != Source.CASCADE.value)
        .subquery()
    )
    found = {
        date.fromisoformat(str(r.day)): int(r.n)
        for r in conn.execute(select(inner.c.day, func.count().label("n")).group_by(inner.c.day))
    }
    return {d: found.get(d, 0) for d in days}


def submit_nights(conn: Connection, days: Sequence[date], tz: ZoneInfo) -> set[date]:
    """The local days among `days` on which a submit run succeeded (only those count as history)."""
    if not days:
        return set()
    start, end = _midnight(min(days), tz), _midnight(max(days) + timedelta(days=1), tz)
    started = conn.execute(
        select(JobRun.started_at).where(
            JobRun.job == "submit",
            JobRun.status == "SUCCEEDED",
            JobRun.started_at >= start,
            JobRun.started_at < end,
        )
    ).scalars()
    return {s.astimezone(tz).date() for s in started} & set(days)


def send_errors(conn: Connection, day: date, tz: ZoneInfo) -> tuple[int, int]:
    """(sent, errors) over the day's non-cascade hand-offs a request went out for.

    An error is a hand-off FlexFactor refused (FAILED after sending) or whose answer was lost (an
    UNKNOWN event), counted once. A hand-off that failed before sending (bad data) is ours, not theirs."""
    lost = exists().where(HandoffEvent.handoff_id == Handoff.id, HandoffEvent.kind == Event.UNKNOWN.value)
    error = case((or_(Handoff.state == State.FAILED.value, lost), 1), else_=0)
    row = conn.execute(
        select(func.count().label("sent"), func.coalesce(func.sum(error), 0).label("errors")).where(
            Handoff.created_at >= _midnight(day, tz),
            Handoff.created_at < _midnight(day + timedelta(days=1), tz),
            Handoff.source != Source.CASCADE.value,
            Handoff.send_started_at.is_not(None),
        )
    ).one()
    return int(row.sent), int(row.errors)


def unsent_by_gateway(conn: Connection) -> dict[str, int]:
    """PENDING hand-offs never sent (no request started, or FlexFactor confirmed it absent), per gateway."""
    rows = conn.execute(
        select(Handoff.gateway_id, func.count())
        .where(
            Handoff.state == State.PENDING.value,
            Handoff.send_started_at.is_(None),
            Handoff.flexfactor_order_id.is_(None),
        )
        .group_by(Handoff.gateway_id)
    )
    return {str(g): int(n) for g, n in rows}


def unresolved_handoffs(conn: Connection, now: datetime, *, age: timedelta) -> int:
    """Hand-offs sent (maybe) at least `age` before `now` that are still PENDING: their answer was lost
    and no look-up has settled them since. Read through the state index: PENDING rows are few."""
    return int(
        conn.execute(
            select(func.count()).where(
                Handoff.state == State.PENDING.value,
                Handoff.send_started_at.is_not(None),
                Handoff.first_sent_at.is_not(None),
                Handoff.first_sent_at <= now - age,
            )
        ).scalar_one()
    )


def webhook_facts(
    conn: Connection, now: datetime, *, pending_age: timedelta
) -> tuple[int, datetime | None, int]:
    """(deliveries refused in the 24 hours before `now`, the latest delivery, hand-offs SUBMITTED for `pending_age`)."""
    refused = conn.execute(
        select(func.count()).where(
            WebhookDelivery.accepted.is_(False),
            WebhookDelivery.received_at >= now - timedelta(hours=24),
            WebhookDelivery.received_at < now,
        )
    ).scalar_one()
    last = conn.execute(
        select(func.max(WebhookDelivery.received_at)).where(WebhookDelivery.received_at <= now)
    ).scalar_one()
    waiting = conn.execute(
        select(func.count()).where(
            Handoff.state == State.SUBMITTED.value,
            func.coalesce(Handoff.submitted_at, Handoff.created_at) <= now - pending_age,
        )
    ).scalar_one()
    return int(refused), last, int(waiting)


def job_succeeded_within(conn: Connection, windows: Iterable[DueWindow]) -> dict[str, bool]:
    """Per job whose window the engine was around for: did a run of it succeed in that window?

    A window that starts before the engine's first recorded job run is left out: nothing could have
    run then (a new install is not a missed job)."""
    first = conn.execute(select(func.min(JobRun.started_at))).scalar_one()
    found: dict[str, bool] = {}
    for w in windows:
        if first is None or first > w.start:
            continue
        hit = conn.execute(
            select(
                exists().where(
                    and_(
                        JobRun.job == w.job,
                        JobRun.status == "SUCCEEDED",
                        JobRun.started_at >= w.start,
                        JobRun.started_at < w.end,
                    )
                )
            )
        ).scalar_one()
        found[w.job] = bool(hit)
    return found


def record_anomalies(
    conn: Connection,
    anomalies: Sequence[Anomaly],
    alerted: Sequence[bool],
    *,
    day: date,
    now: datetime,
    run_id: str | None,
) -> None:
    rows: list[dict[str, Any]] = [
        {
            "day": day,
            "kind": a.kind.value,
            "subject": a.subject or None,
            "reason": a.reason,
            "alerted": sent,
            "run_id": run_id,
            "detected_at": now,
        }
        for a, sent in zip(anomalies, alerted, strict=True)
    ]
    if rows:
        conn.execute(insert(NightAnomaly), rows)


def anomalies_stmt(start: datetime, end: datetime) -> Select[date, str, str | None, str, bool, datetime]:
    """The anomalies found in [start, end), in the order they were found."""
    a = NightAnomaly
    return (
        select(a.day, a.kind, a.subject, a.reason, a.alerted, a.detected_at)
        .where(a.detected_at >= start, a.detected_at < end)
        .order_by(a.detected_at, a.id)
    )
