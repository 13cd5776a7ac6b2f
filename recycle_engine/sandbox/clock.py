"""The sandbox clock: real UTC time unless the admin API sets, freezes or advances it; iso() for instants."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["SandboxClock", "iso"]


def _real_now() -> datetime:
    # The stand-in plays FlexFactor, whose clock is its own: it reads real time itself rather than
    # borrowing the product's system clock, so the stand-ins stay self-contained.
    return datetime.now(UTC)


def iso(at: datetime) -> str:
    """ISO 8601 in UTC with a Z."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SandboxClock:
    """Real UTC time by default; the admin API may set, freeze or advance it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        self._frozen_at: datetime | None = None

    def now(self) -> datetime:
        frozen = self._frozen_at
        return frozen if frozen is not None else _real_now() + self._offset

    @property
    def is_frozen(self) -> bool:
        return self._frozen_at is not None

    def set(self, at: datetime) -> None:
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at = at.astimezone(UTC)
            else:
                self._offset = at - _real_now()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + timedelta(seconds=seconds))

    def freeze(self, frozen: bool) -> None:
        with self._lock:
            if frozen and self._frozen_at is None:
                self._frozen_at = _real_now() + self._offset
            elif not frozen and self._frozen_at is not None:
                self._offset = self._frozen_at - _real_now()
                self._frozen_at = None

    def reset(self) -> None:
        with self._lock:
            self._offset, self._frozen_at = timedelta(0), None
