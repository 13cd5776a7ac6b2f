"""The scheduler lease: one active scheduler per database, standbys waiting, takeover after expiry."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from recycle_engine.ports import Clock
from recycle_engine.services.reporting.status import ACTIVE_LEASE, STANDBY_PREFIX
from recycle_engine.storage.models import SchedulerLease

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_SECONDS_ENV",
    "Lease",
    "LeaseKeeper",
    "Leadership",
    "lease_seconds",
]

log = logging.getLogger(__name__)

LEASE_SECONDS_ENV: Final = "RECYCLE_ENGINE_SCHEDULER_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS: Final = 60.0


def lease_seconds(env: dict[str, str] | None = None) -> float:
    """The lease length: $RECYCLE_ENGINE_SCHEDULER_LEASE_SECONDS, else 60 s; at least 1 s."""
    raw = (os.environ if env is None else env).get(LEASE_SECONDS_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_LEASE_SECONDS
    except ValueError:
        log.warning("ignoring a lease length that is not a number", extra={"value": raw})
        value = DEFAULT_LEASE_SECONDS
    return max(1.0, value)


class Lease:
    """A row in scheduler_leases held by `holder` until `expires_at`; free again at exactly expires_at.

    Times come from the holder's clock, so hosts sharing a database need synchronised clocks (NTP);
    the lease length should dwarf any skew between them.
    """

    def __init__(self, engine: Engine, clock: Clock, *, ttl_s: float, name: str = ACTIVE_LEASE) -> None:
        self.engine = engine
        self.clock = clock
        self.ttl = timedelta(seconds=ttl_s)
        self.name = name
        short_id = uuid.uuid4().hex[:12]
        # host:pid says where to look; the random part keeps a restarted pid from inheriting a lease.
        self.holder = f"{socket.gethostname()[:80]}:{os.getpid()}:{short_id}"
        self.standby_name = f"{STANDBY_PREFIX}{short_id}"

    @property
    def renew_every_s(self) -> float:
        """Renew (and, as a standby, poll) three times per lease, so one slow round trip is harmless."""
        return max(0.2, self.ttl.total_seconds() / 3)

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it or the holder let it expire; True if we hold it now."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            # One conditional UPDATE: on PostgreSQL a racing standby blocks on the row lock and then
            # re-checks expires_at, which the winner has just pushed forward, so only one succeeds.
            taken = conn.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name)
                .where(or_(SchedulerLease.holder == self.holder, SchedulerLease.expires_at <= now))
                .values(holder=self.holder, acquired_at=now, expires_at=now + self.ttl)
            ).rowcount
            if taken:
                return True
            if conn.execute(select(SchedulerLease.name).where(SchedulerLease.name == self.name)).first():
                return False
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(SchedulerLease).values(
                        name=self.name, holder=self.holder, acquired_at=now, expires_at=now + self.ttl
                    )
                )
        except IntegrityError:
            return False  # another scheduler inserted the first lease row a moment before us
        return True

    def renew(self) -> bool:
        """Push our expiry forward; False means another scheduler has taken the lease over."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name, SchedulerLease.holder == self.holder)
                .values(expires_at=now + self.ttl)
            ).rowcount
        return bool(renewed)

    def release(self) -> None:
        """Give the lease up at once (only if we still hold it), so a standby need not wait."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(SchedulerLease).where(
                    SchedulerLease.name == self.name, SchedulerLease.holder == self.holder
                )
            )

    def holder_now(self) -> tuple[str, datetime] | None:
        """Who holds the lease and until when, if anyone does at this instant."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(SchedulerLease.holder, SchedulerLease.expires_at).where(
                    SchedulerLease.name == self.name, SchedulerLease.expires_at > self.clock.now()
                )
            ).first()
        return (row.holder, row.expires_at) if row else None

    def announce_standby(self) -> None:
        """Heartbeat a standby row so `status` can list who waits; it expires like the lease."""
        now = self.clock.now()
        values = {"holder": self.holder, "expires_at": now + self.ttl}
        with self.engine.begin() as conn:
            # Only this process writes its own standby row, so update-then-insert cannot race.
            found = conn.execute(
                update(SchedulerLease).where(SchedulerLease.name == self.standby_name).values(**values)
            ).rowcount
            if not found:
                conn.execute(insert(SchedulerLease).values(name=self.standby_name, acquired_at=now, **values))
            # Standbys that died leave rows behind; whoever is alive sweeps them.
            conn.execute(
                delete(SchedulerLease).where(
                    SchedulerLease.name.startswith(STANDBY_PREFIX), SchedulerLease.expires_at <= now
                )
            )

    def withdraw_standby(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(SchedulerLease).where(SchedulerLease.name == self.standby_name))


class LeaseKeeper(threading.Thread):
    """Renews the lease in the background; calls `on_lost` once if it is taken or cannot be renewed."""

    def __init__(self, lease: Lease, on_lost: Callable[[str], None]) -> None:
        super().__init__(name="scheduler-lease", daemon=True)
        self.lease = lease
        self.on_lost = on_lost
        self._stop_requested = threading.Event()

    def stop(self) -> None:
        self._stop_requested.set()
        self.join()

    def run(self) -> None:
        valid_until = self.lease.clock.now() + self.lease.ttl
        while not self._stop_requested.wait(self.lease.renew_every_s):
            try:
                if self.lease.renew():
                    valid_until = self.lease.clock.now() + self.lease.ttl
                    continue
                self.on_lost("another scheduler holds the lease")
                return
            except SQLAlchemyError as exc:
                # A database blip is survivable until our lease runs out; after that a standby may
                # already be running the jobs, so we must stop ours.
                log.warning("lease renewal failed", extra={"error": str(exc).splitlines()[0]})
                if self.lease.clock.now() >= valid_until:
                    self.on_lost("the lease expired while the database was unreachable")
                    return


class Leadership:
    """Waits as standby until the lease is ours, then runs the active duties while the lease is kept.

    `while_active(should_stop)` does the active work and must return soon after `should_stop()`
    turns true: on a stop request or when the lease is lost. After a loss we go back to standby;
    after a stop request the lease is released so a standby takes over at its next poll.
    """

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.role = "starting"  # then "standby" or "active"
        self.stop_signal: int | None = None

    def request_stop(self, signum: int = 0) -> None:
        """Ask for a graceful stop. Only sets a flag, so it is safe inside a signal handler."""
        self.stop_signal = signum

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def run(self, while_active: Callable[[Callable[[], bool]], None]) -> None:
        try:
            while not self.stop_requested:
                if self._try_lead():
                    self._lead(while_active)
                else:
                    self._sleep(self.lease.renew_every_s)
        finally:
            self._step_down()

    def _try_lead(self) -> bool:
        try:
            if self.lease.try_acquire():
                self.lease.withdraw_standby()
                return True
            self.lease.announce_standby()
        except SQLAlchemyError as exc:
            log.warning("database unreachable; retrying", extra={"error": str(exc).splitlines()[0]})
            return False
        if self.role != "standby":
            self.role = "standby"
            active = self.lease.holder_now()
            log.info("standby: another scheduler is active", extra={"active": active[0] if active else None})
        return False

    def _lead(self, while_active: Callable[[Callable[[], bool]], None]) -> None:
        self.role = "active"
        lost: list[str] = []
        keeper = LeaseKeeper(self.lease, lost.append)
        keeper.start()
        try:
            while_active(lambda: self.stop_requested or bool(lost))
        finally:
            # Stopped only after the active work has ended: the lease stays renewed while running
            # jobs finish, so no standby can start a duplicate of them.
            keeper.stop()
        if lost:
            log.error("lost the scheduler lease; back to standby", extra={"reason": lost[0]})
            self.role = "starting"

    def _step_down(self) -> None:
        try:
            self.lease.release()
            self.lease.withdraw_standby()
        except SQLAlchemyError as exc:
            # The lease then simply expires; a standby takes over a lease-length later.
            log.warning("could not release the lease", extra={"error": str(exc).splitlines()[0]})

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
