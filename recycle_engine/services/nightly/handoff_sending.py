"""Sending hand-offs to FlexFactor and reading the answers back: the part submit, rerun and reconcile share."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from recycle_engine.domain.states import FINAL_STATES, Event, OutcomeSource, State, reported
from recycle_engine.errors import (
    FlexFactorConfigError,
    FlexFactorConflict,
    FlexFactorError,
    FlexFactorNotSent,
    FlexFactorRateLimited,
    FlexFactorRejected,
    FlexFactorUnknownOutcome,
)
from recycle_engine.ports import Clock, EvaluateAnswer, FlexFactorGateway, OrderSnapshot
from recycle_engine.services.nightly.send_window import fix_windows
from recycle_engine.storage.handoff_repo import (
    HandoffUpdate,
    SendItem,
    apply_updates,
    claim_unanswered,
    lease_unsent,
)
from recycle_engine.storage.handoff_send_repo import drop_send_leases, gateways_with_pending

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["SendReport", "SendResult", "resolve_unanswered", "send_pending"]

log = logging.getLogger(__name__)

FIRST_POLL_AFTER = timedelta(days=1)
MAX_RESENDS = 3
LOOKUP_LEASE = timedelta(minutes=10)  # a lookup pass holds its hand-offs this long at most
LOOKUP_CHUNK = 100  # unanswered hand-offs claimed for lookup at once
_WAIT_FOR_CLAIMS_S = 0.05  # nothing to send yet while a claim is being written
_POOLS_PER_LEASE = 4  # a lease holds this many pool-fulls of hand-offs (at most batch_size)
_MIN_LEASE = 32
# A gateway is given up for the run only after this many leases in a row in which every one of its
# calls was rate limited (429): a 429 is back-pressure, and the throttle slows down in between.
RATE_LIMITED_LEASES = 3


@dataclass(frozen=True)
class SendResult:
    """What happened to one /evaluate call: exactly one of answer or failure is set."""

    item: SendItem
    answer: EvaluateAnswer | None = None
    failure: Event | None = None  # REJECTED, RATE_LIMITED, NOT_SENT (or misconfigured) or UNKNOWN
    error: str | None = None


@dataclass
class SendReport:
    """Counts of one sending pass, plus the results the caller's ladder must act on."""

    sent: int = 0
    accepted: int = 0
    approved: int = 0
    declined: int = 0
    unknown: int = 0
    failed: int = 0
    not_sent: int = 0
    rate_limited: int = 0  # calls that ended in 429; their hand-offs went back to PENDING
    skipped_gateways: set[str] = field(default_factory=set)
    failed_items: list[SendItem] = field(default_factory=list)  # rejected: the ladder treats them as declined
    final_ids: list[str] = field(default_factory=list)  # hand-offs that reached a final state at once

    def as_counts(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "approved_at_once": self.approved,
            "declined_at_once": self.declined,
            "unknown": self.unknown,
            "failed": self.failed,
            "not_sent": self.not_sent,
        } | ({"rate_limited": self.rate_limited} if self.rate_limited else {})


class StillClaiming(Protocol):
    """Set while hand-offs are still being claimed (a threading.Event, or the claim's process)."""

    def is_set(self) -> bool: ...


def _send_one(client: FlexFactorGateway, item: SendItem) -> SendResult:
    body: Mapping[str, Any] = json.loads(item.request_body)
    try:
        return SendResult(item, answer=client.evaluate(body))
    except FlexFactorRejected as exc:
        return SendResult(item, failure=Event.REJECTED, error=exc.body.summary())
    except FlexFactorRateLimited as exc:
        return SendResult(item, failure=Event.RATE_LIMITED, error=str(exc))
    except (FlexFactorNotSent, FlexFactorConfigError) as exc:
        return SendResult(item, failure=Event.NOT_SENT, error=str(exc))
    except FlexFactorConflict as exc:
        # Same key still in flight at FlexFactor: its answer will come; look it up later.
        return SendResult(item, failure=Event.UNKNOWN, error=f"conflict: {exc}")
    except (FlexFactorUnknownOutcome, FlexFactorError) as exc:
        return SendResult(item, failure=Event.UNKNOWN, error=str(exc))


def _update_for(result: SendResult, now: datetime) -> HandoffUpdate:
    item = result.item
    if result.answer is not None:
        a = result.answer
        values: dict[str, Any] = {
            "flexfactor_order_id": a.flexfactor_order_id,
            "vendor_status": a.vendor_status.value,
            "submitted_at": now,
            "attention": a.needs_attention,
            "claimed_until": None,
            "last_error": None,
        }
        if a.state in FINAL_STATES:
            values |= {
                "outcome_at": now,
                "outcome_source": OutcomeSource.RESPONSE.value,
                "next_poll_at": None,
            }
        else:
            values |= {"next_poll_at": now + FIRST_POLL_AFTER}
        return HandoffUpdate(item.id, values, reported(a.state), OutcomeSource.RESPONSE.value)
    assert result.failure is not None
    if result.failure is Event.REJECTED:
        values = {"last_error": result.error, "claimed_until": None, "outcome_at": now}
    elif result.failure in (Event.RATE_LIMITED, Event.NOT_SENT):
        # Back-pressure, or it never reached FlexFactor: unmark it so that a later lease sends it again,
        # same body and key.
        values = {"send_started_at": None, "claimed_until": None, "last_error": result.error}
    else:
        # Unknown: FlexFactor may hold the order. Release the lease so a lookup settles it; never
        # resend blind.
        values = {"claimed_until": None, "last_error": result.error, "next_poll_at": now}
    return HandoffUpdate(item.id, values, result.failure, OutcomeSource.RESPONSE.value, result.error)


def send_pending(
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    *,
    now: datetime,
    run_id: str,
    batch_size: int,
    concurrency: int,
    lease: timedelta,
    on_batch: Callable[[SendReport, list[SendResult]], None] | None = None,
    after_record: Callable[[Any, list[SendResult]], None] | None = None,
    only_ids: Sequence[str] | None = None,
    claiming: StillClaiming | None = None,
    skip_gateways: Iterable[str] = (),
    send_clock: Clock | None,
) -> SendReport:
    """Send every unsent PENDING hand-off (or only those of `only_ids`): lease a few pool-fulls (at
    most `batch_size`), commit the mark, call FlexFactor, record.

    Two leases stay in flight so the HTTP pool never idles while the database records answers.
    `after_record(conn, results)` runs inside the transaction that records a lease (ladder steps).
    A rate-limited hand-off goes back to PENDING and is leased again; its gateway is given up for this
    pass only after RATE_LIMITED_LEASES leases in a row where each of its calls met a 429.
    While `claiming` is set, another thread is still committing new hand-offs: finding none to send
    then means "wait for more", not "done". `skip_gateways` are left unsent (no client for them).
    A hand-off's first send fixes its FlexFactor window from `send_clock`; it has no default, and None
    says that `now` is itself the real send instant (a live request, never a replayed night)."""
    report = SendReport()
    # Leased a few pool-fulls at a time, not a whole batch: when the night runs out each worker holds
    # at most two leases, so workers finish together instead of one sending its last thousand alone.
    lease_size = min(batch_size, max(_POOLS_PER_LEASE * concurrency, _MIN_LEASE))
    skip: set[str] = {g for g in _gateways_pending(engine) if g not in clients} | set(skip_gateways)
    report.skipped_gateways |= skip
    inflight: list[tuple[list[SendItem], list[Future[SendResult]]]] = []
    throttled: dict[str, int] = {}  # gateway -> leases in a row whose every call met a 429
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="evaluate") as pool:
        while True:
            # Read before leasing: once claiming has ended, this lease sees every hand-off it made.
            more_coming = claiming is not None and claiming.is_set()
            with engine.begin() as conn:
                items = lease_unsent(
                    conn,
                    now=now,
                    lease_until=now + lease,
                    run_id=run_id,
                    limit=lease_size,
                    exclude_gateways=skip,
                    only_ids=only_ids,
                )
                items = fix_windows(conn, items, sent_at=send_clock.now() if send_clock is not None else now)
            if items:
                inflight.append((items, [pool.submit(_send_one, clients[i.gateway_id], i) for i in items]))
            if not inflight:
                if more_coming:
                    time.sleep(_WAIT_FOR_CLAIMS_S)
                    continue
                break
            if items and len(inflight) < 2:
                continue
            _, futures = inflight.pop(0)
            results = [f.result() for f in futures]
            _record(engine, results, report, skip, now, after_record)
            _give_up_throttled(results, throttled, skip, report)
            if on_batch:
                on_batch(report, results)
    return report


def _record(
    engine: Engine,
    results: list[SendResult],
    report: SendReport,
    skip: set[str],
    now: datetime,
    after_record: Callable[[Any, list[SendResult]], None] | None,
) -> None:
    for r in results:
        if r.answer is not None:
            report.sent += 1
            report.accepted += 1
            if r.answer.state is State.APPROVED:
                report.approved += 1
            elif r.answer.state is State.DECLINED:
                report.declined += 1
            if r.answer.state in FINAL_STATES:
                report.final_ids.append(r.item.id)
        elif r.failure is Event.REJECTED:
            report.sent += 1
            report.failed += 1
            report.failed_items.append(r.item)
            report.final_ids.append(r.item.id)
            log.warning("hand-off rejected", extra={"handoff": r.item.id, "reason": r.error})
        elif r.failure is Event.RATE_LIMITED:
            report.rate_limited += 1
        elif r.failure is Event.NOT_SENT:
            report.not_sent += 1
            # One unreachable or misconfigured gateway must not stall the rest of the night.
            skip.add(r.item.gateway_id)
            report.skipped_gateways.add(r.item.gateway_id)
            log.error("gateway skipped", extra={"gateway": r.item.gateway_id, "reason": r.error})
        else:
            report.sent += 1
            report.unknown += 1
            log.warning("hand-off answer unknown", extra={"handoff": r.item.id, "reason": r.error})
    with engine.begin() as conn:
        apply_updates(conn, [_update_for(r, now) for r in results], now=now)
        if after_record:
            after_record(conn, results)


def _give_up_throttled(
    results: list[SendResult], throttled: dict[str, int], skip: set[str], report: SendReport
) -> None:
    by_gateway: dict[str, bool] = {}
    for r in results:
        limited = r.failure is Event.RATE_LIMITED
        by_gateway[r.item.gateway_id] = by_gateway.get(r.item.gateway_id, True) and limited
    for gateway, all_limited in by_gateway.items():
        throttled[gateway] = throttled.get(gateway, 0) + 1 if all_limited else 0
        if throttled[gateway] >= RATE_LIMITED_LEASES and gateway not in skip:
            skip.add(gateway)
            report.skipped_gateways.add(gateway)
            log.error(
                "gateway given up for this run: still rate limited",
                extra={"gateway": gateway, "leases": throttled[gateway]},
            )


def _gateways_pending(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return gateways_with_pending(conn)


@dataclass
class LookupReport:
    adopted: int = 0
    resent: int = 0
    failed: int = 0
    errors: int = 0
    error_events: list[HandoffUpdate] = field(default_factory=list)  # LOOKUP_ERROR, one per failed look-up
    failed_ids: list[str] = field(default_factory=list)
    final_ids: list[str] = field(default_factory=list)


def resolve_unanswered(
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    *,
    now: datetime,
    window: timedelta,
    limit: int = 10_000,
    lease: timedelta = LOOKUP_LEASE,
    run_id: str | None = None,
) -> LookupReport:
    """Settle hand-offs whose answer was lost: find them at FlexFactor by our order id and adopt
    what it holds; only a confirmed absence queues a resend with the same body and key.

    Each hand-off looked up is leased to `run_id` for `lease` first, so workers and hosts running at
    once never look up (and queue for resending) the same one; a lookup that fails gives it back."""
    report = LookupReport()
    unsettled: list[str] = []
    looked_up = 0
    # Claimed a chunk at a time, so that workers starting together share the lookups.
    while looked_up < limit:
        with engine.begin() as conn:
            rows = claim_unanswered(
                conn,
                now=now,
                lease_until=now + lease,
                run_id=run_id,
                limit=min(LOOKUP_CHUNK, limit - looked_up),
            )
        looked_up += len(rows)
        updates: list[HandoffUpdate] = []
        for handoff_id, gateway_id, sent_at, resends in rows:
            update = _look_up(clients.get(gateway_id), handoff_id, sent_at, resends, now, window, report)
            if update is None:
                unsettled.append(handoff_id)
            else:
                updates.append(update)
        if updates or report.error_events:
            with engine.begin() as conn:
                apply_updates(conn, [*updates, *report.error_events], now=now)
            report.error_events.clear()
        if len(rows) < LOOKUP_CHUNK:
            break
    release_leases(engine, unsettled)
    return report


def _look_up(
    client: FlexFactorGateway | None,
    handoff_id: str,
    sent_at: datetime | None,
    resends: int,
    now: datetime,
    window: timedelta,
    report: LookupReport,
) -> HandoffUpdate | None:
    """What FlexFactor says about one unanswered hand-off, as an update; None: it could not say."""
    if client is None:
        return None
    base = sent_at or now
    try:
        snap = client.find_by_external_id(handoff_id, placed_from=base - window, placed_to=now + window)
    except FlexFactorError as exc:
        report.errors += 1
        log.warning("lookup failed", extra={"handoff": handoff_id, "reason": str(exc)})
        report.error_events.append(
            HandoffUpdate(handoff_id, {}, Event.LOOKUP_ERROR, OutcomeSource.POLL.value, str(exc)[:500])
        )
        return None
    if snap is not None:
        report.adopted += 1
        if snap.state is not None:
            report.final_ids.append(handoff_id)
        return _adopt(handoff_id, snap, now)
    if resends >= MAX_RESENDS:
        reason = f"not found at FlexFactor after {resends} resends"
        report.failed += 1
        report.failed_ids.append(handoff_id)
        return HandoffUpdate(
            handoff_id,
            {"last_error": reason, "outcome_at": now, "claimed_until": None},
            Event.REJECTED,
            OutcomeSource.POLL.value,
            reason,
        )
    report.resent += 1
    return HandoffUpdate(
        handoff_id,
        {"send_started_at": None, "claimed_until": None, "resend_count": resends + 1},
        Event.ABSENT,
        OutcomeSource.POLL.value,
        "confirmed absent at FlexFactor: resend with the same body and key",
    )


def _adopt(handoff_id: str, snap: OrderSnapshot, now: datetime) -> HandoffUpdate:
    values: dict[str, Any] = {
        "flexfactor_order_id": snap.flexfactor_order_id,
        "vendor_status": snap.status_name,
        "submitted_at": snap.order_placed_at or now,
        "attention": snap.needs_attention,
        "last_error": None,
        "claimed_until": None,
    }
    if snap.state is None:
        values |= {"next_poll_at": now + FIRST_POLL_AFTER}
        event = Event.ACCEPTED
    else:
        values |= {"outcome_at": now, "outcome_source": OutcomeSource.POLL.value}
        event = reported(snap.state)
    return HandoffUpdate(handoff_id, values, event, OutcomeSource.POLL.value, "adopted by lookup")


def release_leases(engine: Engine, ids: Sequence[str]) -> None:
    """Drop the sending lease of hand-offs (used when a run stops early)."""
    if ids:
        with engine.begin() as conn:
            drop_send_leases(conn, ids)
