"""Store verified FlexFactor webhook events once per (OrderId, Event) and apply them to their hand-offs.

`accept_delivery` journals an event and puts it in the inbox (what the 200 waits for); `apply_inbox`,
run by the service's single writer, applies the inbox to the hand-offs. `store_delivery` does both in
one transaction: the synchronous path, kept for comparison (bench/webhook_load.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from recycle_engine.adapters.flexfactor_webhooks import (
    WebhookEvent,
    WebhookMalformed,
    event_outcome,
    parse_event,
)
from recycle_engine.domain.states import FINAL_STATES, Event, OutcomeSource, State, advance
from recycle_engine.errors import IllegalTransition, StorageError
from recycle_engine.storage import webhook_inbox as inbox
from recycle_engine.storage import webhook_repo as repo
from recycle_engine.storage.faults import DatabaseFailure
from recycle_engine.storage.handoff_repo import write_handoff

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "ATTENTION_EVENTS",
    "TERMINAL_CONFLICT",
    "AcceptedDelivery",
    "EventEffect",
    "InboxPass",
    "StoredDelivery",
    "accept_delivery",
    "apply_inbox",
    "dedupe_key",
    "record_event",
    "record_refusal",
    "store_delivery",
]

log = logging.getLogger(__name__)

TERMINAL_CONFLICT: Final = "TERMINAL_CONFLICT"
# Money news that does not move a hand-off but that the billing team must see (contract 9.1).
ATTENTION_EVENTS: Final = {
    "order.refunded": "REFUNDED",
    "payment.chargeback.received": "CHARGEBACK",
    "order.capturerequired": "CAPTURE_REQUIRED",
}
# A weaker reason never hides a stronger one; each event stays in handoff_events either way.
# Where a final state came from FlexFactor itself (not our window settlement, EXPIRY).
_FLEXFACTOR_SOURCES: Final = frozenset(
    {OutcomeSource.WEBHOOK.value, OutcomeSource.POLL.value, OutcomeSource.RESPONSE.value}
)
_ATTENTION_RANK: Final = {"CAPTURE_REQUIRED": 1, "REFUNDED": 2, "CHARGEBACK": 3, TERMINAL_CONFLICT: 4}


@dataclass(frozen=True)
class EventEffect:
    """What one event did to its hand-off; `reason` is what the delivery journal shows."""

    reason: str  # applied, no change, recorded, terminal conflict, unknown order, other gateway, ignored
    handoff_id: str | None = None
    state_before: State | None = None
    state_after: State | None = None
    attention: str | None = None

    @property
    def reached_final_state(self) -> bool:
        """True when the event moved the hand-off into a final state (outcomes must be applied)."""
        return (
            self.state_after is not None
            and self.state_after != self.state_before
            and (self.state_after in FINAL_STATES)
        )


def dedupe_key(event: WebhookEvent) -> str | None:
    """(OrderId, Event) as one text, falling back to our orderId; None for events tied to no order."""
    order = event.flexfactor_order_id or (
        f"ext:{event.external_order_id}" if event.external_order_id else None
    )
    return None if order is None else f"{order}:{event.event}"


def event_time(timestamp: datetime | None, *, received_at: datetime, sent_at: datetime | None) -> datetime:
    """When an outcome happened: the event's own TimeStamp, so a delivery delayed or resent by
    FlexFactor does not shift the next bill date; never after we received it (a clock running ahead,
    which the signed date's tolerance already bounds) nor before the hand-off was sent. Without a
    TimeStamp, the receipt time."""
    if timestamp is None:
        return received_at
    moment = min(timestamp, received_at)
    return max(moment, sent_at) if sent_at is not None else moment


def record_event(conn: Connection, *, gateway_id: str, event: WebhookEvent, now: datetime) -> EventEffect:
    """Apply one new (not duplicate) event to its hand-off inside the caller's transaction.

    Outcome events move the hand-off through domain.states.advance; a move the table refuses (a final
    event against another final state) changes nothing but flags TERMINAL_CONFLICT. Refunds, chargebacks
    and capture-required set `attention` without a move, so one arriving before the completion is kept
    and the completion still applies. Every event that finds its hand-off appends a handoff_events row."""
    if event.event.startswith("payout."):
        return EventEffect("ignored")
    ref = repo.find_handoff(
        conn, flexfactor_order_id=event.flexfactor_order_id, external_order_id=event.external_order_id
    )
    if ref is None:
        return EventEffect("unknown order")
    if ref.gateway_id != gateway_id:
        # Signed with another gateway's key: that merchant account cannot settle this hand-off.
        return EventEffect("other gateway", handoff_id=ref.id)
    state = State(ref.state)
    values: dict[str, Any] = {}
    if event.flexfactor_order_id and not ref.flexfactor_order_id:
        values["flexfactor_order_id"] = event.flexfactor_order_id
    detail = event.event + (" (resent)" if event.is_resent else "")
    if event.flexfactor_order_id and ref.flexfactor_order_id not in (None, event.flexfactor_order_id):
        detail += f"; FlexFactor order {event.flexfactor_order_id} differs from {ref.flexfactor_order_id}"
    outcome = event_outcome(event.event)
    attention = ATTENTION_EVENTS.get(event.event)
    new_state, reason, kind = state, "recorded", _notice_kind(event.event)
    if outcome is not None:
        kind = outcome.value
        try:
            if state is State.EXPIRED and ref.outcome_source in _FLEXFACTOR_SOURCES:
                # EXPIRED -> APPROVED is a late rescue after our own window settlement only: a final
                # state FlexFactor itself reported (order.expired) is not overwritten (contract 9.5).
                raise IllegalTransition(f"{state.value} reported by FlexFactor, then {outcome.value}")
            new_state = advance(state, outcome)
        except IllegalTransition:
            if _echoes_our_cancel(conn, ref.id, state, outcome):
                reason = "no change"
                detail += "; the cancel reconcile sent when it closed the window"
            else:
                attention, reason, kind = TERMINAL_CONFLICT, "terminal conflict", Event.CONFLICT.value
                detail += f" refused: hand-off already {state.value}"
        else:
            reason = "applied" if new_state != state else "no change"
    elif attention is not None:
        kind = attention
    move = (state, outcome) if outcome is not None and new_state != state else None
    if move is not None:
        # Writing a final state queues the outcome for orders and subscriptions (storage.outcome_queue).
        outcome_at = event_time(event.timestamp, received_at=now, sent_at=ref.sent_at)
        values.update(outcome_at=outcome_at, outcome_source=OutcomeSource.WEBHOOK.value)
        if state is State.EXPIRED and new_state is State.APPROVED:
            values["late_outcome"] = True
    if state is State.PENDING and new_state is not State.PENDING and ref.submitted_at is None:
        # Its send answer was lost (PENDING) and FlexFactor speaks: it was submitted when we sent it.
        values["submitted_at"] = ref.sent_at or now
    if attention is not None and _ATTENTION_RANK.get(ref.attention or "", 0) <= _ATTENTION_RANK[attention]:
        values["attention"] = attention
    if values:
        write_handoff(conn, ref.id, values, now=now, move=move)
    order_key = event.flexfactor_order_id or ref.flexfactor_order_id or ref.id
    repo.append_event(
        conn,
        {
            "handoff_id": ref.id,
            "kind": kind,
            "source": OutcomeSource.WEBHOOK.value,
            "state_after": new_state.value,
            "flexfactor_order_id": repo.fit(event.flexfactor_order_id or ref.flexfactor_order_id),
            "detail": detail,
            "dedupe_key": repo.fit_key(f"WEBHOOK:{order_key}:{event.event}"),
            "occurred_at": now,
        },
    )
    return EventEffect(reason, ref.id, state, new_state, values.get("attention", ref.attention))


def _echoes_our_cancel(conn: Connection, handoff_id: str, state: State, outcome: Event) -> bool:
    """True for order.cancelled on a hand-off reconcile settled EXPIRED at its window's end.

    Reconcile cancels such an order at FlexFactor before it writes EXPIRED, and FlexFactor reports that
    cancellation back: the news is ours, both states are failures, so it is no terminal conflict."""
    if state is not State.EXPIRED or outcome is not Event.CANCELLED:
        return False
    source = repo.outcome_source_of(conn, handoff_id)
    return source == OutcomeSource.EXPIRY.value


def _notice_kind(event_name: str) -> str:
    return "CHALLENGE" if event_name.startswith("challenge.") else "NOTICE"


@dataclass(frozen=True)
class StoredDelivery:
    """The outcome of storing one accepted delivery."""

    delivery_id: int
    is_duplicate: bool
    effect: EventEffect | None = None  # None for a duplicate
    handoff_ids: list[str] = field(default_factory=list)  # hand-offs whose outcome must now be applied


def _accepted(gateway_id: str, event: WebhookEvent, nonce: str, body: str, now: datetime) -> repo.Delivery:
    return repo.Delivery(
        gateway_id=gateway_id,
        received_at=now,
        accepted=True,
        http_status=200,
        reason=None,
        event=event.event,
        flexfactor_order_id=event.flexfactor_order_id,
        external_order_id=event.external_order_id,
        nonce=nonce,
        is_resent=event.is_resent,
        body=body,
        dedupe_key=dedupe_key(event),
    )


def store_delivery(
    engine: Engine, *, gateway_id: str, event: WebhookEvent, nonce: str, body: str, now: datetime
) -> StoredDelivery:
    """Journal a verified event and apply it, in one transaction; a repeat of (OrderId, Event) only journals.

    Raises StorageError when the database fails, so that the caller answers 5xx and FlexFactor resends."""
    delivery = _accepted(gateway_id, event, nonce, body, now)
    try:
        with engine.begin() as conn:
            delivery_id = repo.claim_delivery(conn, delivery)
            if delivery_id is None:
                duplicate = replace(delivery, reason="duplicate", is_duplicate=True, dedupe_key=None)
                return StoredDelivery(repo.record_delivery(conn, duplicate), is_duplicate=True)
            effect = record_event(conn, gateway_id=gateway_id, event=event, now=now)
            # An event for an order we do not know yet stays unapplied, for reconcile to report and retry.
            applied_at = None if effect.reason == "unknown order" else now
            repo.finish_delivery(
                conn, delivery_id, reason=effect.reason, handoff_id=effect.handoff_id, applied_at=applied_at
            )
    except DatabaseFailure as exc:
        raise StorageError("cannot store the webhook delivery") from exc
    ids = [effect.handoff_id] if effect.handoff_id and effect.reached_final_state else []
    return StoredDelivery(delivery_id, is_duplicate=False, effect=effect, handoff_ids=ids)


@dataclass(frozen=True)
class AcceptedDelivery:
    """A delivery journalled and, unless a duplicate, waiting in the inbox."""

    delivery_id: int
    is_duplicate: bool


def accept_delivery(
    engine: Engine, *, gateway_id: str, event: WebhookEvent, nonce: str, body: str, now: datetime
) -> AcceptedDelivery:
    """Journal a verified event and put it in the inbox, in one small transaction; a repeat of
    (OrderId, Event) is journalled as a duplicate and goes nowhere. `body` must be the verified body
    whole, as text: the writer parses it again.

    Raises StorageError when the database fails, so that the caller answers 5xx and FlexFactor resends."""
    delivery = replace(_accepted(gateway_id, event, nonce, body, now), reason="queued")
    try:
        with engine.begin() as conn:
            delivery_id = repo.claim_delivery(conn, delivery)
            if delivery_id is None:
                duplicate = replace(delivery, reason="duplicate", is_duplicate=True, dedupe_key=None)
                return AcceptedDelivery(repo.record_delivery(conn, duplicate), is_duplicate=True)
            inbox.put(conn, delivery_id=delivery_id, gateway_id=repo.fit(gateway_id) or "", received_at=now)
    except DatabaseFailure as exc:
        raise StorageError("cannot store the webhook delivery") from exc
    return AcceptedDelivery(delivery_id, is_duplicate=False)


@dataclass
class InboxPass:
    """What one pass over the inbox did."""

    applied: int = 0  # deliveries taken from the inbox and applied
    handoff_ids: list[str] = field(default_factory=list)  # hand-offs whose outcome must now be applied
    failed: list[int] = field(default_factory=list)  # delivery ids left in the inbox after an error


def apply_inbox(
    engine: Engine, *, now: datetime, limit: int = 200, skip: frozenset[int] = frozenset()
) -> InboxPass:
    """Apply up to `limit` inbox deliveries, oldest first, in one transaction (each is taken from the
    inbox in the transaction that applies it, so it applies once whatever crashes). If that transaction
    fails, each delivery is tried in its own; one that fails alone stays in the inbox, is logged and
    reported in `failed`, and `skip` names such deliveries so that later passes leave them be (they
    show in `status` until someone looks).

    `now` is when they are applied; each event is applied as of its own receipt, as the synchronous
    path does. Raises StorageError when the database is unavailable: nothing is marked failed then."""
    try:
        with engine.connect() as conn:
            rows = [r for r in inbox.next_rows(conn, limit + len(skip)) if r.delivery_id not in skip][:limit]
    except DatabaseFailure as exc:
        raise StorageError("cannot read the webhook inbox") from exc
    done = InboxPass()
    if not rows:
        return done
    try:
        with engine.begin() as conn:
            ids = [_apply_one(conn, row, now) for row in rows]
    except StorageError:
        raise
    except Exception:
        log.warning("applying a batch of webhook deliveries failed; applying them one by one", exc_info=True)
    else:
        done.applied = len(rows)
        done.handoff_ids = [i for i in ids if i is not None]
        return done
    for row in rows:
        try:
            with engine.begin() as conn:
                handoff_id = _apply_one(conn, row, now)
        except StorageError:
            raise
        except Exception:
            # One bad delivery never stops the others; it stays in the inbox, where status shows it.
            log.exception(
                "webhook delivery not applied; it stays in the inbox", extra={"delivery": row.delivery_id}
            )
            done.failed.append(row.delivery_id)
            continue
        done.applied += 1
        if handoff_id is not None:
            done.handoff_ids.append(handoff_id)
    return done


def _apply_one(conn: Connection, row: inbox.InboxRow, now: datetime) -> str | None:
    """Take one delivery from the inbox and apply its event; the hand-off id if it reached a final state."""
    if not inbox.take(conn, row.delivery_id):
        return None  # another writer applied it
    try:
        event = parse_event((row.body or "").encode("utf-8"))
    except WebhookMalformed as exc:
        # It parsed when it was accepted; only an edited journal row can land here.
        repo.finish_delivery(
            conn, row.delivery_id, reason=f"unreadable: {exc}", handoff_id=None, applied_at=None
        )
        return None
    effect = record_event(conn, gateway_id=row.gateway_id, event=event, now=row.received_at)
    applied_at = None if effect.reason == "unknown order" else now
    repo.finish_delivery(
        conn, row.delivery_id, reason=effect.reason, handoff_id=effect.handoff_id, applied_at=applied_at
    )
    return effect.handoff_id if effect.handoff_id and effect.reached_final_state else None


def record_refusal(engine: Engine, delivery: repo.Delivery) -> None:
    """Journal a refused delivery; raises StorageError when the database fails."""
    try:
        with engine.begin() as conn:
            repo.record_delivery(conn, delivery)
    except DatabaseFailure as exc:
        raise StorageError("cannot record the refused webhook delivery") from exc
