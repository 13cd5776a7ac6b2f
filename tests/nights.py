"""Running one night's submit in a test, by a clock that stands at the night's instant."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.services.nightly.submit import SubmitResult, run_submit


def submit_night(settings: Settings, engine: Engine, at: datetime) -> SubmitResult:
    """The nightly submit of the night at `at`, its calls and sends stamped at `at` (a fixed clock)."""
    clock = FixedClock(at)
    return run_submit(
        settings,
        engine,
        flexfactor_clients(settings, clock),
        processors(settings),
        night=Night.of(at, settings.timezone),
        send_clock=clock,
    )
