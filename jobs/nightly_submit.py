"""Scheduled entry point of the nightly submit run: due attempts, FlexFactor hand-offs, reruns."""

from __future__ import annotations

import logging
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.services.submit import run_submit

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(config_path: str) -> dict[str, int]:
    """Run submit as of now and return its counts; a failure propagates to the scheduler.

    The service records the run in job_runs (a failure with its error); the scheduler's listener
    logs failures and calls the alert hook.
    """
    settings = bootstrap.load_settings_file(Path(config_path))
    clock = SystemClock()
    now = clock.now()  # read once: the whole run sees one night, even if it crosses midnight
    app = bootstrap.build_app(settings, clock)
    try:
        result = run_submit(
            settings,
            app.engine,
            bootstrap.flexfactor_clients(settings, clock),
            bootstrap.processors(settings),
            at=now,
            now=now,
        )
    finally:
        app.close()
    counts = {name: int(n) for name, n in result.counts.items()}
    log.info("submit finished", extra={"job": "submit", "run_id": result.run_id, "counts": counts})
    return counts
