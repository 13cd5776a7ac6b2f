"""The sandbox clock: real UTC time unless the admin API sets, freezes or advances it; iso() for instants."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from recycle_engine.adapters.clock import SystemClock

__all__ = ["SandboxClock", "iso"]


def iso(at: datetime) -> str:
    """ISO 8601 in UTC with a Z."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SandboxClock:
    """Real UTC time by default; the admin API may set, freeze or advance it."""

    def __init__(self) -> None:
        self._real = SystemClock()
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        self._frozen_at: datetime | None = None

    def now(self) -> datetime:
        frozen = self._frozen_at
        return frozen if frozen is not None else self._real.now() + self._offset

    @property
    def is_frozen(self) -> bool:
        return self._frozen_at is not None

    def set(self, at: datetime) -> None:
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at = at.astimezone(UTC)
            else:
                self._offset = at - self._real.now()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + timedelta(seconds=seconds))

    def freeze(self, frozen: bool) -> None:
        with self._lock:
            if frozen and self._frozen_at is None:
                self._frozen_at = self._real.now() + self._offset
            elif not frozen and self._frozen_at is not None:
                self._offset = self._frozen_at - self._real.now()
                self._frozen_at = None

    def reset(self) -> None:
        with self._lock:
            self._offset, self._frozen_at = timedelta(0), None
