"""Scheduled entry point of the daily report: yesterday's recovery and reconciliation, as HTML and CSV."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.adapters.smtp_mail import send_message
from recycle_engine.config import Need
from recycle_engine.domain.anomalies import Anomaly
from recycle_engine.services.reporting.report import run_report
from recycle_engine.services.reporting.report_email import email_report, report_files

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(config_path: str) -> dict[str, int]:
    """Render the report of the previous local day as of now, e-mail it when `reports.email` is set (once
    per day: a rerun does not send it again), and return its counts.

    The report fires in the morning (06:00 by default), after the night's submit and reconcile, so
    the last complete merchant day is yesterday in the settings timezone.
    """
    # The night is read once, at opening: the day and the report's "as of" come from one instant.
    with bootstrap.open_run(Path(config_path), Need.EMAIL) as run:
        settings, night = run.settings, run.night
        day = night.today - timedelta(days=1)
        hook = run.alert("report")

        def alert(anomaly: Anomaly) -> bool:
            return hook(kind=anomaly.kind.value, reason=anomaly.reason)

        result = run_report(settings, run.engine, day=day, night=night, clock=run.clock)
        counts = {name: int(n) for name, n in result.counts.items()}
        if settings.reports.email is not None:
            # The report is written whatever the mail does: a failed send is recorded and alerted, not raised.
            delivery = email_report(
                settings, run.engine, report_files(result), send=send_message, clock=run.clock, alert=alert
            )
            counts["email_sent"] = int(delivery.state == "SENT")
            counts["email_failed"] = int(delivery.state == "FAILED")
    log.info(
        "report finished",
        extra={
            "job": "report",
            "run_id": result.run_id,
            "day": day.isoformat(),
            "path": str(result.html_path),
        },
    )
    return counts
