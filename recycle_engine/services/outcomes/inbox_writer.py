"""The single writer of `serve`: applies the webhook inbox to hand-offs, then their outcomes.

The receiver answers FlexFactor once a delivery is in the inbox (services.outcomes.webhook_events.accept_delivery)
and wakes this thread; one thread applying batches keeps the receiving threads from queueing behind
each other's hand-off writes (on SQLite, behind one database lock)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from recycle_engine.errors import StorageError
from recycle_engine.ports import Clock
from recycle_engine.services.outcomes.webhook_events import apply_inbox
from recycle_engine.storage import outcome_queue
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["InboxWriter", "OnApplied"]

log = logging.getLogger(__name__)

OnApplied = Callable[[list[str]], None]


class InboxWriter:
    """One thread that drains the webhook inbox: at start (deliveries a crash left acknowledged but
    unapplied), whenever `wake()` is called, every `poll_s` seconds (deliveries another service
    process journalled) and at `stop()`, which drains before it returns.

    Acknowledgements come first: before each of its transactions the writer waits, up to
    `max_yield_s`, while deliveries are being received (`receiving()`), so that an answer to FlexFactor
    waits for at most one small batch (`batch` deliveries) of the writer's, never for a backlog.

    `on_applied(handoff_ids)` runs after committed batches with the hand-offs they moved into a final
    state, up to `batch` at a time (serve passes services.outcomes.applying.apply_outcomes); at start it also
    gets those whose webhook outcome is still queued. Its failure is logged: reconcile applies queued
    outcomes later."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        on_applied: OnApplied | None = None,
        batch: int = 50,
        poll_s: float = 5.0,
        max_yield_s: float = 1.0,
    ) -> None:
        self._engine, self._clock, self._on_applied = engine, clock, on_applied
        self._batch, self._poll_s, self._max_yield_s = batch, poll_s, max_yield_s
        self._cond = threading.Condition()
        self._woken = True  # drain once at start
        self._stopping = False
        self._receiving = 0  # deliveries between arrival and answer
        self._failed: set[int] = set()
        self._asked = self._answered = 0  # drain requests made, and those a finished pass covered
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; it first applies what the inbox and the outcome queue hold."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-inbox-writer", daemon=True)
            self._thread.start()

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Around the receipt of one delivery, up to its answer: the writer lets it go first."""
        with self._cond:
            self._receiving += 1
        try:
            yield
        finally:
            with self._cond:
                self._receiving -= 1
                self._cond.notify_all()

    def wake(self) -> None:
        """A delivery entered the inbox."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def drained(self, timeout_s: float = 60.0) -> bool:
        """Wait until a pass that began after this call has ended: everything acknowledged before the
        call is then applied (or failed, and logged). False if that took longer than `timeout_s`."""
        with self._cond:
            self._asked += 1
            ask = self._asked
            self._woken = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._answered >= ask, timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Apply what the inbox holds, then end the thread (graceful shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("webhook inbox writer still busy at shutdown; the next start applies the rest")

    def _run(self) -> None:
        self._applied_queued_outcomes()
        while True:
            with self._cond:
                if not self._woken and not self._stopping:
                    self._cond.wait(self._poll_s)
                self._woken = False
                stopping, asked = self._stopping, self._asked
            try:
                self.drain()
            except Exception:
                # The deliveries stay in the inbox; the next wake-up or poll tries again.
                log.exception("webhook inbox writer pass failed")
            with self._cond:
                self._answered = asked
                self._cond.notify_all()
            if stopping:
                return

    def _yield_to_receivers(self) -> None:
        """Wait while deliveries are being received, for at most `max_yield_s` (not when stopping)."""
        deadline = time.monotonic() + self._max_yield_s
        with self._cond:
            while self._receiving and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def drain(self) -> int:
        """Apply batches until the inbox holds nothing this writer can apply; how many it applied."""
        applied = 0
        while True:
            self._yield_to_receivers()
            try:
                done = apply_inbox(
                    self._engine, now=self._clock.now(), limit=self._batch, skip=frozenset(self._failed)
                )
            except StorageError:
                log.exception("webhook inbox not readable; retrying at the next wake-up")
                return applied
            self._failed.update(done.failed)
            applied += done.applied
            if done.handoff_ids:
                self._yield_to_receivers()
                self._apply_outcomes(done.handoff_ids)
            if done.applied == 0:
                return applied

    def _applied_queued_outcomes(self) -> None:
        """Outcomes webhooks recorded before a crash, not yet applied to orders and subscriptions."""
        if self._on_applied is None:
            return
        try:
            with self._engine.connect() as conn:
                ids = outcome_queue.queued_by(conn, "WEBHOOK")
        except (DatabaseFailure, StorageError):
            log.exception("outcome queue not readable at start; reconcile applies it")
            return
        for start in range(0, len(ids), self._batch):
            self._apply_outcomes(ids[start : start + self._batch])

    def _apply_outcomes(self, handoff_ids: list[str]) -> None:
        if self._on_applied is None:
            return
        try:
            self._on_applied(handoff_ids)
        except Exception:
            # The outcome is committed on the hand-off and queued; reconcile applies what this missed.
            log.exception("applying outcomes after webhooks failed", extra={"handoffs": handoff_ids})
