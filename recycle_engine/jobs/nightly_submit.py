"""Scheduled entry point of the nightly submit run (due attempts, hand-offs, reruns), then the anomaly check."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from recycle_engine import bootstrap
from recycle_engine.adapters.alerts import send_alert
from recycle_engine.config import Settings
from recycle_engine.domain.anomalies import Anomaly
from recycle_engine.jobs.triggers import due_windows
from recycle_engine.services.nightly.anomalies import alert_and_record, check_night
from recycle_engine.services.nightly.overdue import warn_overdue

__all__ = ["alert_unsent", "check_after_submit", "run"]

log = logging.getLogger(__name__)


def run(config_path: str) -> dict[str, int]:
    """Run submit as of now, then the anomaly check, and return submit's counts; a submit failure propagates.

    The service records the run in job_runs (a failure with its error); the scheduler's listener
    logs failures and calls the alert hook.
    """
    # The night is read once, at opening: the whole run sees one night, even if it crosses midnight.
    with bootstrap.open_run(Path(config_path)) as run:
        settings = run.settings
        warn_overdue(run.engine, night=run.night)
        result = run.submit()
        # The check reads the book as it is once submit is done.
        check_after_submit(settings, run.engine, now=run.clock.now(), run_id=result.run_id)
        alert_unsent(settings, "submit", result.run_id, result.counts.get("unsent", 0))
    counts = {name: int(n) for name, n in result.counts.items()}
    log.info("submit finished", extra={"job": "submit", "run_id": result.run_id, "counts": counts})
    return counts


def check_after_submit(
    settings: Settings, engine: Engine, *, now: datetime, run_id: str | None
) -> list[Anomaly]:
    """Check the night, alert each anomaly with its one-line reason, record them for the report.

    Never raises: submit has already succeeded, and a broken check must not report it as failed;
    the check's own failure is alerted instead."""
    day = now.astimezone(settings.timezone).date()
    try:
        anomalies = check_night(settings, engine, day=day, now=now, due=due_windows(settings, now))

        def alert(a: Anomaly) -> bool:
            return send_alert(
                settings.alert_command, job="anomaly", kind=a.kind.value, reason=a.reason, run_id=run_id
            )

        alert_and_record(engine, anomalies, alert, day=day, now=now, run_id=run_id)
    except Exception as exc:
        log.exception("anomaly check failed", extra={"run_id": run_id})
        reason = f"{type(exc).__name__}: {exc}"
        send_alert(settings.alert_command, job="anomaly", kind="CHECK_FAILED", reason=reason, run_id=run_id)
        return []
    return anomalies


def alert_unsent(settings: Settings, job: str, run_id: str | None, unsent: int) -> None:
    """A run left hand-offs unsent (recorded INCOMPLETE with an UNSENT anomaly): tell the alert hook."""
    if unsent:
        reason = f"{unsent} hand-offs left unsent (FlexFactor rate limited); reconcile sends them"
        send_alert(settings.alert_command, job=job, kind="UNSENT", reason=reason, run_id=run_id)
