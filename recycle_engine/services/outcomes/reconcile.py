"""Reconcile like a janitor: settle lost answers, poll open hand-offs, expire closed windows, apply outcomes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.domain.outcomes import amount_mismatch
from recycle_engine.domain.states import OPEN_STATES, Event, OutcomeSource, State, advance, reported
from recycle_engine.errors import FlexFactorError, FlexFactorNotFoundError, IllegalTransition
from recycle_engine.ports import Clock, FlexFactorGateway, OrderSnapshot
from recycle_engine.services.job_runs import finish_run, start_run, wall_time
from recycle_engine.services.nightly.anomalies import count_unsent
from recycle_engine.services.nightly.due_attempts import continue_ladders_after
from recycle_engine.services.nightly.handoff_sending import resolve_unanswered, send_pending
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.services.reporting.rollups import refresh_after_run
from recycle_engine.storage.handoff_repo import HandoffUpdate, apply_updates
from recycle_engine.storage.models import HandoffEvent
from recycle_engine.storage.open_handoff_queries import due_for_poll, expired_open_ids, lock_expired_open
from recycle_engine.storage.upsert import insert_ignore

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["POLL_EVERY", "ReconcileResult", "run_reconcile"]

log = logging.getLogger(__name__)

POLL_EVERY = timedelta(days=1)  # after the first look (a day after submission), look daily
AMOUNT_MISMATCH = "AMOUNT_MISMATCH"  # the event kind the report lists as a reconciliation exception


@dataclass
class ReconcileResult:
    run_id: str
    counts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Open:
    id: str
    gateway_id: str
    state: str
    flexfactor_order_id: str | None
    expires_at: datetime | None
    poll_count: int
    amount_minor: int
    currency: str
    submitted_at: datetime | None = None
    sent_at: datetime | None = None  # first send (or the send in progress when first_sent_at is unknown)


def _due_for_poll(engine: Engine, now: datetime, limit: int) -> list[_Open]:
    """Open hand-offs FlexFactor knows, whose next look is due or whose window has closed."""
    with engine.connect() as conn:
        return [_Open(**r) for r in due_for_poll(conn, now, limit)]


def _transition(
    h: _Open, event: Event, values: dict[str, Any], source: OutcomeSource, detail: str | None
) -> HandoffUpdate | None:
    """A state change if the lifecycle table allows it from the state read, else None (the caller
    reports a conflict); apply_updates moves it from the state recorded when it writes."""
    target = _after(h, event)
    if target is None:
        return None
    if target.value != h.state and target not in OPEN_STATES:
        values = values | {
            "outcome_at": values.get("outcome_at"),
            "outcome_source": source.value,
            "next_poll_at": None,
        }
    return HandoffUpdate(h.id, values, event, source.value, detail)


def _after(h: _Open, event: Event) -> State | None:
    try:
        return advance(State(h.state), event)
    except IllegalTransition:
        return None


def _poll_one(client: FlexFactorGateway, h: _Open) -> OrderSnapshot | Exception:
    assert h.flexfactor_order_id is not None
    try:
        return client.get_order(h.flexfactor_order_id)
    except FlexFactorError as exc:
        return exc


def _poll_updates(
    h: _Open, snap: OrderSnapshot | Exception, now: datetime, counts: Counter[str]
) -> list[HandoffUpdate]:
    base: dict[str, Any] = {"poll_count": h.poll_count + 1, "outcome_at": now}
    expired = h.expires_at is not None and h.expires_at <= now
    if isinstance(snap, FlexFactorNotFoundError):
        counts["poll_not_found"] += 1
        values = base | {"attention": "UNKNOWN_AT_FLEXFACTOR", "next_poll_at": now + POLL_EVERY}
        values.pop("outcome_at")
        return [HandoffUpdate(h.id, values, Event.POLL_NOT_FOUND, OutcomeSource.POLL.value, str(snap))]
    if isinstance(snap, Exception):
        counts["poll_errors"] += 1
        values = base | {"next_poll_at": now + timedelta(hours=1), "last_error": str(snap)}
        values.pop("outcome_at")
        return [HandoffUpdate(h.id, values, Event.POLL_ERROR, OutcomeSource.POLL.value, str(snap))]
    counts["polled"] += 1
    extra: dict[str, Any] = {"vendor_status": snap.status_name}
    if h.submitted_at is None:
        # Its send answer was lost (still PENDING): submitted when FlexFactor placed the order, else
        # when we sent it.
        extra["submitted_at"] = snap.order_placed_at or h.sent_at or now
    if snap.needs_attention:
        extra["attention"] = snap.needs_attention
    if snap.state is not None:
        update = _transition(h, reported(snap.state), base | extra, OutcomeSource.POLL, "poll")
        if update is None:
            counts["conflicts"] += 1
            return [
                HandoffUpdate(
                    h.id,
                    {"attention": "STATUS_MISMATCH"},
                    Event.CONFLICT,
                    OutcomeSource.POLL.value,
                    snap.status_name,
                )
            ]
        counts[f"poll_{snap.state.value.lower()}"] += 1
        return [update]
    if expired:
        # Still open at FlexFactor after our window: settled by the caller (cancel, then EXPIRED).
        return []
    # The state is unchanged; the event row records where the hand-off stands.
    values = base | extra | {"next_poll_at": now + POLL_EVERY}
    values.pop("outcome_at")
    return [HandoffUpdate(h.id, values, Event.POLLED, OutcomeSource.POLL.value, snap.status_name)]


def _mismatch_events(
    h: _Open, snap: OrderSnapshot | Exception, updates: list[HandoffUpdate], now: datetime
) -> list[dict[str, Any]]:
    """An AMOUNT_MISMATCH event when the polled order shows another amount than we handed off.

    Webhooks carry no amount, so the poll is where we learn FlexFactor's; the event keeps its amount
    and both texts, once per amount seen (the dedupe key), for the report's exceptions."""
    if isinstance(snap, Exception):
        return []
    detail = amount_mismatch(h.amount_minor, h.currency, snap.amount_minor, snap.currency)
    if detail is None:
        return []
    state_after = next((s.value for u in updates if (s := _after(h, u.event)) is not None), h.state)
    return [
        {
            "handoff_id": h.id,
            "kind": AMOUNT_MISMATCH,
            "source": OutcomeSource.POLL.value,
            "state_after": state_after,
            "flexfactor_order_id": snap.flexfactor_order_id,
            "vendor_status": snap.status_name,
            "amount_minor": snap.amount_minor,
            "detail": detail,
            "dedupe_key": f"{AMOUNT_MISMATCH}:{h.id}:{snap.amount_minor}:{snap.currency}"[:200],
            "occurred_at": now,
        }
    ]


def _settle_expired(
    engine: Engine, clients: Mapping[str, FlexFactorGateway], now: datetime, counts: Counter[str]
) -> None:
    """Open hand-offs past expires_at: cancel at FlexFactor so no unseen rescue carries on, then EXPIRED.

    One hand-off at a time, as a janitor: lock it, re-read it (a webhook may have settled it meanwhile),
    ask FlexFactor to cancel, write the settlement and commit. The lock is held across the cancel
    because FlexFactor answers our own cancel with an order.cancelled webhook: holding it makes that
    webhook wait for, and find, the hand-off already settled, instead of racing the settlement."""
    with engine.connect() as conn:
        ids = expired_open_ids(conn, now)
    for handoff_id in ids:
        with engine.begin() as conn:
            row = lock_expired_open(conn, handoff_id, now)
            if row is None:
                continue  # settled since we listed it
            upd = _settlement(_Open(**row), clients.get(row["gateway_id"]), now, counts)
            if upd is not None:
                apply_updates(conn, [upd], now=now)


def _settlement(
    h: _Open, client: FlexFactorGateway | None, now: datetime, counts: Counter[str]
) -> HandoffUpdate | None:
    """Cancel one expired hand-off at FlexFactor and say how it settles; None to try again next run."""
    final: OrderSnapshot | None = None
    if client is not None:
        try:
            final = (
                client.cancel(h.flexfactor_order_id)
                if h.flexfactor_order_id
                else client.external_cancel(h.id)
            )
        except FlexFactorNotFoundError:
            final = None  # never reached FlexFactor: nothing to cancel
        except FlexFactorError as exc:
            counts["cancel_errors"] += 1
            log.warning("cancel failed", extra={"handoff": h.id, "reason": str(exc)})
            return None
    if final is not None and final.state is not None:
        # FlexFactor had already finished it: its answer wins over our expiry.
        upd = _transition(
            h,
            reported(final.state),
            {"outcome_at": now, "vendor_status": final.status_name},
            OutcomeSource.POLL,
            "final at cancel",
        )
    else:
        upd = _transition(h, Event.WINDOW_ENDED, {"outcome_at": now}, OutcomeSource.EXPIRY, "window ended")
    if upd is not None:
        counts["expired" if _after(h, upd.event) is State.EXPIRED else "settled_at_cancel"] += 1
    return upd


def run_reconcile(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    *,
    night: Night,
    send_clock: Clock,
    poll_limit: int = 200_000,
    clock: Clock | None = None,
) -> ReconcileResult:
    """Settle lost answers, send what is still unsent, poll open hand-offs, expire closed windows and
    apply outcomes; idempotent. Hand-offs still unsent at the end (FlexFactor rate limited) make the
    run INCOMPLETE, with counts["unsent"] and an UNSENT anomaly. Everything is judged against
    `night.at`; `clock` (else `night.at`) stamps the job run's start and finish. A hand-off first sent
    here gets its FlexFactor window from `send_clock`, which has no default (`bootstrap.Run.reconcile`
    wires the real one)."""
    at = night.at
    run_id = start_run(engine, "reconcile", logical_at=at, now=wall_time(clock, night))
    night = night.started(run_id)
    result = ReconcileResult(run_id)
    counts = result.counts
    try:
        lookups = resolve_unanswered(engine, clients, now=at, window=timedelta(days=23))
        counts.update(
            {
                "adopted": lookups.adopted,
                "queued_resend": lookups.resent,
                "lookup_failed": lookups.failed,
                "lookup_errors": lookups.errors,
            }
        )
        # Every hand-off still never sent (rate limited or unreachable at submit, or confirmed absent
        # just now) goes out tonight, not at the next submit.
        http = settings.http
        lease = timedelta(
            seconds=(http.connect_timeout_s + http.read_timeout_s) * (http.max_retries + 1) + 60
        )
        report = send_pending(
            engine,
            clients,
            now=at,
            run_id=run_id,
            batch_size=settings.batching.batch_size,
            concurrency=settings.batching.concurrency,
            lease=lease,
            after_record=continue_ladders_after(settings, night),
            send_clock=send_clock,
        )
        if report.sent:
            counts["sent"] = report.sent
        if report.rate_limited:
            counts["rate_limited"] = report.rate_limited
        due = [h for h in _due_for_poll(engine, at, poll_limit) if h.gateway_id in clients]
        with ThreadPoolExecutor(max_workers=max(1, settings.batching.concurrency)) as pool:
            snaps = list(pool.map(lambda h: _poll_one(clients[h.gateway_id], h), due))
        updates: list[HandoffUpdate] = []
        mismatches: list[dict[str, Any]] = []
        for h, snap in zip(due, snaps, strict=True):
            polled = _poll_updates(h, snap, at, counts)
            updates += polled
            mismatches += _mismatch_events(h, snap, polled, at)
        with engine.begin() as conn:
            apply_updates(conn, updates, now=at)
            found = insert_ignore(conn, HandoffEvent, mismatches, ["dedupe_key"])
        if found:
            counts["amount_mismatches"] += found
        _settle_expired(engine, clients, at, counts)
        applied = apply_outcomes(settings, engine, now=at, run_id=run_id)
        counts.update({f"applied_{k}": v for k, v in applied.items()})
        refresh_after_run(engine, settings.timezone, now=at, run_id=run_id)
        unsent = count_unsent(settings, engine, counts, job="reconcile", at=at, run_id=run_id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        finish_run(engine, run_id, now=wall_time(clock, night), counts=dict(counts), error=error)
        raise
    finish_run(engine, run_id, now=wall_time(clock, night), counts=dict(counts), incomplete=unsent > 0)
    return result
