"""Scheduled entry points of the CRM jobs: `pull` (declines in, before submit) and `push` (changes out,
after reconcile). Scheduled only when settings.yaml has a crm: section."""

from __future__ import annotations

import logging
from pathlib import Path

from recycle_engine import bootstrap
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.config import Need
from recycle_engine.errors import CrmError
from recycle_engine.services.crm.pull import pull_declines
from recycle_engine.services.crm.push import push_changes

__all__ = ["pull", "push"]

log = logging.getLogger(__name__)


def pull(config_path: str) -> dict[str, int]:
    """Read the CRM's declines up to now (less the settle time); a failure propagates to the scheduler,
    which alerts. The run is recorded in job_runs either way."""
    settings = bootstrap.load_settings_file(Path(config_path), Need.CRM)
    clock = SystemClock()
    now = clock.now()  # read once: the window closes at this instant less the settle time
    client = bootstrap.crm_client(settings)
    app = bootstrap.build_app(settings, clock)
    try:
        result = pull_declines(settings, app.engine, client, now=now)
    finally:
        client.close()
        app.close()
    log.info("pull finished", extra={"job": "pull", "run_id": result.run_id, "counts": result.counts})
    return dict(result.counts)


def push(config_path: str) -> dict[str, int]:
    """Deliver the change outbox; an unreachable CRM fails the job (and alerts) with the changes kept."""
    settings = bootstrap.load_settings_file(Path(config_path), Need.CRM)
    clock = SystemClock()
    now = clock.now()
    client = bootstrap.crm_client(settings)
    app = bootstrap.build_app(settings, clock)
    try:
        result = push_changes(settings, app.engine, client, now=now)
    finally:
        client.close()
        app.close()
    log.info("push finished", extra={"job": "push", "run_id": result.run_id, "counts": result.counts})
    if result.unreachable:
        raise CrmError(result.stopped or "the CRM did not answer")
    return dict(result.counts)
