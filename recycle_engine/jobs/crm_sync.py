"""Scheduled entry points of the CRM jobs: `pull` (declines in, before submit) and `push` (changes out,
after reconcile). Scheduled only when settings.yaml has a crm: section."""

from __future__ import annotations

import logging
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.config import Need
from recycle_engine.errors import CrmError
from recycle_engine.services.crm.pull import pull_declines
from recycle_engine.services.crm.push import push_changes

__all__ = ["pull", "push"]

log = logging.getLogger(__name__)


def pull(config_path: str) -> dict[str, int]:
    """Read the CRM's declines up to now (less the settle time); a failure propagates to the scheduler,
    which alerts. The run is recorded in job_runs either way."""
    # The night is read once, at opening: the window closes at this instant less the settle time.
    with bootstrap.open_run(Path(config_path), Need.CRM) as run:
        result = pull_declines(run.settings, run.engine, run.crm(), now=run.night.at)
    log.info("pull finished", extra={"job": "pull", "run_id": result.run_id, "counts": result.counts})
    return dict(result.counts)


def push(config_path: str) -> dict[str, int]:
    """Deliver the change outbox; an unreachable CRM fails the job (and alerts) with the changes kept."""
    with bootstrap.open_run(Path(config_path), Need.CRM) as run:
        result = push_changes(run.settings, run.engine, run.crm(), now=run.night.at)
    log.info("push finished", extra={"job": "push", "run_id": result.run_id, "counts": result.counts})
    if result.unreachable:
        raise CrmError(result.stopped or "the CRM did not answer")
    return dict(result.counts)
