"""The check after each nightly run: gather the night's numbers, apply the anomaly rules, record and alert."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from recycle_engine.config import Settings
from recycle_engine.domain.anomalies import Anomaly, NightFacts, check_night_facts, unsent_anomaly
from recycle_engine.storage import webhook_inbox
from recycle_engine.storage.anomaly_repo import (
    DueWindow,
    handoffs_by_day,
    job_succeeded_within,
    record_anomalies,
    send_errors,
    submit_nights,
    unresolved_handoffs,
    unsent_by_gateway,
    webhook_facts,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "Alert",
    "DueWindow",
    "alert_and_record",
    "check_night",
    "night_facts",
    "count_unsent",
    "record_unsent",
]

log = logging.getLogger(__name__)

Alert = Callable[[Anomaly], bool]  # tells the alert hook; True when it confirmed


def night_facts(
    settings: Settings, engine: Engine, *, day: date, now: datetime, due: Sequence[DueWindow] = ()
) -> NightFacts:
    """The numbers of night `day` (a local date) as of `now`."""
    t, tz = settings.anomalies, settings.timezone
    trailing = [day - timedelta(days=n) for n in range(t.history_nights, 0, -1)]
    with engine.connect() as conn:
        counts = handoffs_by_day(conn, [*trailing, day], tz)
        ran = submit_nights(conn, trailing, tz)
        sent, errors = send_errors(conn, day, tz)
        refused, last_webhook, waiting = webhook_facts(
            conn, now, pending_age=timedelta(hours=t.pending_age_hours)
        )
        succeeded = job_succeeded_within(conn, due)
        unresolved = unresolved_handoffs(conn, now, age=timedelta(hours=t.pending_age_hours))
        inbox = webhook_inbox.backlog(conn)
    return NightFacts(
        handoffs=counts[day],
        history=[counts[d] for d in trailing if d in ran],
        sent=sent,
        errors=errors,
        refused_webhooks=refused,
        last_webhook_at=last_webhook,
        old_submitted=waiting,
        jobs_due={w.job: w.due_on for w in due if w.job in succeeded},
        jobs_succeeded=succeeded,
        unresolved=unresolved,
        inbox_waiting=inbox.waiting,
        inbox_oldest_at=inbox.oldest_received_at,
    )


def check_night(
    settings: Settings, engine: Engine, *, day: date, now: datetime, due: Sequence[DueWindow] = ()
) -> list[Anomaly]:
    """Every anomaly of night `day` as of `now`. Read-only.

    `due` says when each scheduled job was last due (the scheduler's cron reading, which the jobs
    layer owns: recycle_engine.jobs.triggers.due_windows); without it the missed-job check has nothing to look at."""
    facts = night_facts(settings, engine, day=day, now=now, due=due)
    return check_night_facts(facts, settings.anomalies, now=now)


def alert_and_record(
    engine: Engine,
    anomalies: Sequence[Anomaly],
    alert: Alert,
    *,
    day: date,
    now: datetime,
    run_id: str | None,
) -> None:
    """Tell the alert hook about each anomaly, then record them with whether the hook confirmed."""
    alerted = []
    for anomaly in anomalies:
        log.warning("anomaly", extra={"kind": anomaly.kind.value, "reason": anomaly.reason, "day": str(day)})
        alerted.append(alert(anomaly))
    with engine.begin() as conn:
        record_anomalies(conn, anomalies, alerted, day=day, now=now, run_id=run_id)


def record_unsent(
    settings: Settings, engine: Engine, *, job: str, at: datetime, now: datetime, run_id: str | None
) -> int:
    """At the end of a run: count the hand-offs still never sent and, if any, record an UNSENT anomaly
    for the night of `at` (the alert hook is the scheduled job's to call). Returns the count."""
    with engine.begin() as conn:
        unsent = unsent_by_gateway(conn)
        anomaly = unsent_anomaly(job, unsent)
        if anomaly is not None:
            log.warning("anomaly", extra={"kind": anomaly.kind.value, "reason": anomaly.reason})
            day = at.astimezone(settings.timezone).date()
            record_anomalies(conn, [anomaly], [False], day=day, now=now, run_id=run_id)
    return sum(unsent.values())


def count_unsent(
    settings: Settings, engine: Engine, counts: Counter[str], *, job: str, at: datetime, run_id: str
) -> int:
    """Hand-offs left never sent at the end of a run, into counts["unsent"] (only when some are),
    with an UNSENT anomaly for the night."""
    unsent = record_unsent(settings, engine, job=job, at=at, now=at, run_id=run_id)
    if unsent:
        counts["unsent"] = unsent
    return unsent
