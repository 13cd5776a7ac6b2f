"""Running one night's submit or reconcile in a test, by clocks that stand at the night's instant."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.ports import Clock
from recycle_engine.services.nightly.submit import SubmitResult, run_submit
from recycle_engine.services.outcomes.reconcile import ReconcileResult, run_reconcile


def submit_night(
    settings: Settings, engine: Engine, at: datetime, *, send_clock: Clock | None = None, **kw: Any
) -> SubmitResult:
    """The nightly submit of the night at `at`, its calls stamped at `at` and sent by `send_clock`
    (by default a clock standing at `at` too); `kw` goes to run_submit."""
    clock = FixedClock(at)
    return run_submit(
        settings,
        engine,
        flexfactor_clients(settings, clock),
        processors(settings),
        night=Night.of(at, settings.timezone),
        send_clock=send_clock or clock,
        **kw,
    )


def reconcile_night(settings: Settings, engine: Engine, at: datetime) -> ReconcileResult:
    """The nightly reconcile of the night at `at`, its calls stamped and sent at `at`."""
    clock = FixedClock(at)
    return run_reconcile(
        settings,
        engine,
        flexfactor_clients(settings, clock),
        night=Night.of(at, settings.timezone),
        send_clock=clock,
    )
