"""The night a run works on: its logical instant, its local date and, once started, its job run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

__all__ = ["Night"]


@dataclass(frozen=True, slots=True)
class Night:
    """One run's time, read once: `at` (aware, as given) stamps what the run writes, `today` (the local date
    of `at` in the settings timezone) picks what is due, and `run_id` is the job run it belongs to
    (None until one is started; a night handed to a worker carries the shared run's id)."""

    at: datetime
    today: date
    run_id: str | None = None

    @classmethod
    def of(cls, at: datetime, tz: ZoneInfo, *, run_id: str | None = None) -> Night:
        """The night of instant `at` in `tz`; raises ValueError for a naive datetime."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("a night needs an aware datetime")
        return cls(at, at.astimezone(tz).date(), run_id)

    def started(self, run_id: str) -> Night:
        """The same night under job run `run_id`."""
        return replace(self, run_id=run_id)

    @property
    def job_run(self) -> str:
        """The job run's id; raises ValueError on a night not yet started."""
        if self.run_id is None:
            raise ValueError("the night has no job run yet")
        return self.run_id
