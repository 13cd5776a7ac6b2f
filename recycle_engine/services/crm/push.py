"""`crm push`: the change outbox (what `export changes` shows) delivered to the CRM, each change once.

Each change gets a delivery row (crm_deliveries). Before every call the row is marked SENDING and
committed; after it, DELIVERED with the CRM's answer, REFUSED with its ERROR message, or RETRY when no
answer came. A delivery found SENDING or RETRY may have reached the CRM already, so the purchase is read
back first and, when it shows the change, recorded DELIVERED without writing again.

Deliveries go in change order. When the CRM cannot be reached after the retries, the push stops there
(a later change of the same purchase must not land before an earlier one) and the rest waits: the
change is tried again `crm.push.retry_after_minutes` later, doubled per attempt, up to
`crm.push.max_attempts` (then FAILED, and the ones after it go on); a push before then delivers nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from recycle_engine.adapters.crm_changes import PURCHASE_QUERY, is_applied, request_for
from recycle_engine.config import CrmSettings, Settings
from recycle_engine.errors import (
    ConfigError,
    CrmError,
    CrmProtocolError,
    CrmRefused,
    CrmUnavailable,
    RecycleEngineError,
    StorageError,
)
from recycle_engine.ports import CrmApi
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.storage import crm_repo
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["JOB", "PushResult", "push_changes"]

log = logging.getLogger(__name__)

JOB: Final = "push"  # the job name of settings.yaml, so status and the missed-job check find its runs
FIRST_SINCE: Final = timedelta(days=1)  # the first push, with no cursor and no --since
OVERLAP: Final = timedelta(minutes=10)  # PostgreSQL may commit a change after a later id was read
PAGE: Final = 500
BATCH: Final = (
    100  # fresh deliveries marked SENDING in one commit (a crash costs at most this many read-backs)
)


@dataclass
class PushResult:
    run_id: str
    counts: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None  # why deliveries stopped early
    unreachable: bool = False  # stopped because the CRM did not answer (else: waiting for a retry time)


def push_changes(
    settings: Settings,
    engine: Engine,
    client: CrmApi,
    *,
    now: datetime,
    since: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Queue the changes since the last push and deliver every due one; CrmError only for a refused
    API user (credentials, IP), which no later change could get past either."""
    crm = _crm(settings)
    run_id = start_run(engine, JOB, logical_at=now, now=now)
    pusher = _Push(crm, engine, client, run_id, now, sleep)
    result = PushResult(run_id, pusher.counts)
    try:
        pusher.queue(since)
        result.stopped = pusher.deliver()
        result.unreachable = pusher.unreachable
    except DatabaseFailure as exc:
        _finish(engine, run_id, now, pusher.counts, f"database error: {type(exc).__name__}")
        raise StorageError(f"database error during the CRM push: {type(exc).__name__}") from None
    except RecycleEngineError as exc:
        _finish(engine, run_id, now, pusher.counts, str(exc))
        raise
    if result.unreachable:
        finish_run(engine, run_id, now=now, counts=pusher.counts, error=result.stopped)
    else:
        finish_run(engine, run_id, now=now, counts=pusher.counts, incomplete=result.stopped is not None)
    log.info("CRM changes pushed", extra={"run_id": run_id, **pusher.counts})
    return result


def _crm(settings: Settings) -> CrmSettings:
    if settings.crm is None:
        raise ConfigError("settings.yaml has no crm: section; add one to push changes to the CRM")
    return settings.crm


def _finish(engine: Engine, run_id: str, now: datetime, counts: dict[str, int], error: str) -> None:
    try:
        finish_run(engine, run_id, now=now, counts=counts, error=error)
    except (DatabaseFailure, StorageError):
        log.exception("could not record the failed CRM push", extra={"run_id": run_id})


class _Stop(Exception):
    """The CRM could not be reached: deliver nothing more this run."""


class _Busy(Exception):
    """Another push is delivering: leave the rest to it."""


class _Push:
    def __init__(
        self,
        crm: CrmSettings,
        engine: Engine,
        client: CrmApi,
        run_id: str,
        now: datetime,
        sleep: Callable[[float], None],
    ) -> None:
        self.crm, self.engine, self.client, self.run_id, self.now = crm, engine, client, run_id, now
        self.sleep = sleep
        self.unreachable = False
        self.counts = dict.fromkeys(
            ("queued", "delivered", "read_back", "refused", "unsupported", "retry", "failed"), 0
        )

    def queue(self, since: datetime | None) -> None:
        with self.engine.begin() as conn:
            cursor = crm_repo.read_cursor(conn, crm_repo.PUSH)
            start = since or (cursor - OVERLAP if cursor else self.now - FIRST_SINCE)
            changes = crm_repo.changes_since(conn, start)
            rows = []
            for change_id, entity, entity_id, field_, new_value in changes:
                request = request_for(entity, field_, entity_id, new_value)
                rows.append(
                    {
                        "change_id": change_id,
                        "entity": entity,
                        "entity_id": entity_id,
                        "field": field_,
                        "new_value": new_value,
                        "endpoint": request.endpoint if request else None,
                        "params": json.dumps(request.params, sort_keys=True) if request else None,
                        "state": "PENDING" if request else "UNSUPPORTED",
                        "attempts": 0,
                        "run_id": self.run_id,
                        "created_at": self.now,
                        "updated_at": self.now,
                    }
                )
            self.counts["queued"] = crm_repo.queue_changes(conn, rows)
            self.counts["unsupported"] = sum(1 for r in rows if r["state"] == "UNSUPPORTED")
            crm_repo.save_cursor(conn, self.now, run_id=self.run_id, now=self.now, name=crm_repo.PUSH)

    def deliver(self) -> str | None:
        """Every due delivery in change order; the reason it stopped early, if it did."""
        while True:
            with self.engine.connect() as conn:
                due = crm_repo.open_deliveries(conn, PAGE)
            if not due:
                return None
            at = 0
            while at < len(due):
                delivery = due[at]
                if delivery.next_try_at is not None and delivery.next_try_at > self.now:
                    return (
                        f"change {delivery.change_id} waits to be tried again at {delivery.next_try_at.isoformat()}; "
                        "the changes after it wait too, so that they land in order"
                    )
                fresh = list(itertools.takewhile(lambda d: d.state == "PENDING", due[at : at + BATCH]))
                try:
                    if fresh:
                        self._fresh(fresh)
                        at += len(fresh)
                    else:
                        self._one(delivery)
                        at += 1
                except _Stop as stop:
                    self.unreachable = True
                    return f"{stop}; the changes after it wait for a later push"
                except _Busy as busy:
                    return str(busy)

    def _fresh(self, batch: list[crm_repo.Delivery]) -> None:
        """Deliveries never tried: all marked SENDING in one commit before the first call, their answers
        written together after the last. A push killed in between leaves them SENDING: read back first."""
        with self.engine.begin() as conn:
            taken = crm_repo.mark_sending(
                conn, [d.change_id for d in batch], now=self.now, run_id=self.run_id
            )
            if taken != len(batch):  # raising rolls the marks back: nothing was sent, the other push goes on
                raise _Busy(f"another push is delivering change {batch[0].change_id} or those after it")
        answers: list[tuple[crm_repo.Delivery, dict[str, object]]] = []
        try:
            for position, d in enumerate(batch):
                assert d.endpoint is not None, "UNSUPPORTED deliveries are never due"
                assert d.params is not None, "UNSUPPORTED deliveries are never due"
                try:
                    answer = self.client.update(d.endpoint, json.loads(d.params))
                except CrmRefused as exc:
                    if _refuses_everything(exc):  # the API user, not these changes: they wait, untouched
                        answers += [
                            (u, {"state": "PENDING", "attempts": u.attempts}) for u in batch[position:]
                        ]
                        raise
                    answers.append(
                        (d, {"state": "REFUSED", "attempts": d.attempts + 1, "answer": exc.message})
                    )
                    self.counts["refused"] += 1
                    log.warning(
                        "CRM refused a change", extra={"change_id": d.change_id, "endpoint": d.endpoint}
                    )
                    continue
                except (CrmUnavailable, CrmProtocolError) as exc:
                    # Unsent ones go back to PENDING; this one may have been applied: read back, retry.
                    answers += [
                        (u, {"state": "PENDING", "attempts": u.attempts}) for u in batch[position + 1 :]
                    ]
                    self._write(answers)
                    answers = []
                    self._one(replace(d, state="SENDING", attempts=d.attempts + 1), tried=1, error=str(exc))
                    return
                answers.append((d, {"state": "DELIVERED", "attempts": d.attempts + 1, "answer": answer}))
                self.counts["delivered"] += 1
        finally:
            self._write(answers)

    def _write(self, answers: list[tuple[crm_repo.Delivery, dict[str, object]]]) -> None:
        if not answers:
            return
        with self.engine.begin() as conn:
            for d, values in answers:
                crm_repo.mark(conn, d.change_id, now=self.now, run_id=self.run_id, **values)

    def _one(self, d: crm_repo.Delivery, *, tried: int = 0, error: str = "") -> None:
        """One delivery, with up to crm.max_retries retries in this push (`tried`: calls already made);
        after a call without an answer, the purchase is read back before the next."""
        assert d.endpoint is not None, "UNSUPPORTED deliveries are never due"
        assert d.params is not None, "UNSUPPORTED deliveries are never due"
        attempts = d.attempts
        unsure = d.state in ("SENDING", "RETRY")  # an earlier call may have been applied
        if unsure and d.run_id != self.run_id:
            with self.engine.begin() as conn:
                # Left by a push still running, it is in flight: only that push may resolve it.
                if crm_repo.running(conn, d.run_id) or not crm_repo.take_over(
                    conn, d, now=self.now, run_id=self.run_id
                ):
                    raise _Busy(f"another push (run {d.run_id}) is delivering change {d.change_id}")
        last_error = error
        for round_ in range(tried, self.crm.max_retries + 1):
            if round_:
                self._pause(round_)
            try:
                if unsure and self._applied(d):
                    self._set(d, "DELIVERED", attempts, answer="already applied (read back before resending)")
                    self.counts["read_back"] += 1
                    return
                attempts += 1
                self._set(d, "SENDING", attempts)
                answer = self.client.update(d.endpoint, json.loads(d.params))
            except CrmRefused as exc:
                if _refuses_everything(exc):  # the API user, not this change: it waits, untouched
                    self._set(d, "PENDING", attempts - 1, answer=exc.message)
                    raise
                self._set(d, "REFUSED", attempts, answer=exc.message)
                self.counts["refused"] += 1
                log.warning("CRM refused a change", extra={"change_id": d.change_id, "endpoint": d.endpoint})
                return
            except (CrmUnavailable, CrmProtocolError) as exc:
                unsure, last_error = True, str(exc)
                continue
            self._set(d, "DELIVERED", attempts, answer=answer)
            self.counts["delivered"] += 1
            return
        if attempts >= self.crm.push.max_attempts:
            self._set(d, "FAILED", attempts, answer=last_error)
            self.counts["failed"] += 1
            return
        wait = timedelta(minutes=self.crm.push.retry_after_minutes * 2 ** max(attempts - 1, 0))
        self._set(d, "RETRY", attempts, answer=last_error, next_try_at=self.now + wait)
        self.counts["retry"] += 1
        raise _Stop(f"the CRM did not answer change {d.change_id}: {last_error}")

    def _applied(self, d: crm_repo.Delivery) -> bool:
        purchases = self.client.query_ids(PURCHASE_QUERY, "purchaseId", [d.entity_id])
        return is_applied(d.field, d.new_value, purchases.get(d.entity_id))

    def _set(self, d: crm_repo.Delivery, state: str, attempts: int, **values: object) -> None:
        with self.engine.begin() as conn:
            crm_repo.mark(
                conn, d.change_id, now=self.now, run_id=self.run_id, state=state, attempts=attempts, **values
            )

    def _pause(self, round_: int) -> None:
        self.sleep(min(self.crm.backoff_max_s, self.crm.backoff_base_s * 2.0 ** (round_ - 1)))


def _refuses_everything(exc: CrmError) -> bool:
    """Refusals of the API user itself: every other change would be refused the same way."""
    text = str(exc).lower()
    return "login" in text or "ip address" in text or "not allowed" in text
