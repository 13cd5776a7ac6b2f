"""Scheduled entry point of the nightly reconcile: apply outcomes, poll open hand-offs, settle expiries."""

from __future__ import annotations

import logging
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.jobs.nightly_submit import alert_unsent

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(config_path: str) -> dict[str, int]:
    """Run reconcile as of now and return its counts; a failure propagates to the scheduler.

    The service records the run in job_runs (a failure with its error); the scheduler's listener
    logs failures and calls the alert hook.
    """
    # The night is read once, at opening: every hand-off is judged against the same instant.
    with bootstrap.open_run(Path(config_path)) as run:
        result = run.reconcile()
        alert_unsent(run.settings, "reconcile", result.run_id, result.counts.get("unsent", 0))
    counts = {name: int(n) for name, n in result.counts.items()}
    log.info("reconcile finished", extra={"job": "reconcile", "run_id": result.run_id, "counts": counts})
    return counts
