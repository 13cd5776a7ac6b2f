"""The check after each nightly run: gather the night's numbers, apply the anomaly rules, record and alert."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta

from sqlalchemy import Engine

from recycle_engine.config import Settings
from recycle_engine.domain.anomalies import Anomaly, NightFacts, check_night_facts
from recycle_engine.storage.anomaly_repo import (
    DueWindow,
    handoffs_by_day,
    job_succeeded_within,
    record_anomalies,
    send_errors,
    submit_nights,
    webhook_facts,
)

__all__ = ["Alert", "DueWindow", "alert_and_record", "check_night", "night_facts"]

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
    )


def check_night(
    settings: Settings, engine: Engine, *, day: date, now: datetime, due: Sequence[DueWindow] = ()
) -> list[Anomaly]:
    """Every anomaly of night `day` as of `now`. Read-only.

    `due` says when each scheduled job was last due (the scheduler's cron reading, which the jobs
    layer owns: jobs.triggers.due_windows); without it the missed-job check has nothing to look at."""
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
