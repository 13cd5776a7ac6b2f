"""Clocks: the system clock (the one place that reads real time) and a fixed one for logical runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["SEND_CLOCK_ENV", "FixedClock", "LogicalClock", "SystemClock", "send_clock"]


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that says `at` until moved; for `--at T` runs and tests."""

    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self.at = self.at.astimezone(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.at = self.at + timedelta(**delta)


class LogicalClock:
    """Time as a run at logical instant `at` sees it: `at`, moving on with real elapsed time.

    A run replayed or caught up at `--at T` reads FlexFactor's dates (an order's expiry, say) against
    T, while token lifetimes still count real seconds. With `at` = now it is the system clock."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("LogicalClock needs an aware datetime")
        self._offset = at.astimezone(UTC) - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


SEND_CLOCK_ENV = "RECYCLE_ENGINE_SEND_CLOCK"


def send_clock(at: datetime) -> SystemClock | FixedClock:
    """The clock FlexFactor's window is counted from when a hand-off is first sent: the real clock,
    whatever `--at` says (FlexFactor counts from the moment it receives the call). Only a sandbox whose
    own clock stands at `--at` wants the run's logical time: RECYCLE_ENGINE_SEND_CLOCK=at."""
    import os

    if os.environ.get(SEND_CLOCK_ENV, "").strip().lower() == "at":
        return FixedClock(at)
    return SystemClock()
