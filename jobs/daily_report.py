"""Scheduled entry point of the daily report: yesterday's recovery and reconciliation, as HTML and CSV."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.services.report import run_report

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(config_path: str) -> dict[str, int]:
    """Render the report of the previous local day as of now and return its counts.

    The report fires in the morning (06:00 by default), after the night's submit and reconcile, so
    the last complete merchant day is yesterday in the settings timezone.
    """
    settings = bootstrap.load_settings_file(Path(config_path))
    clock = SystemClock()
    now = clock.now()  # read once: the day and the report's "as of" come from one instant
    day = now.astimezone(settings.timezone).date() - timedelta(days=1)
    app = bootstrap.build_app(settings, clock)
    try:
        result = run_report(settings, app.engine, day=day, now=now, clock=clock)
    finally:
        app.close()
    counts = {name: int(n) for name, n in result.counts.items()}
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
