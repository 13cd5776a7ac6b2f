"""Hand-off storage: create, lease for sending, record answers, and the named open-work queries."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from recycle_engine.domain.states import Event, OutcomeSource, State, advance
from recycle_engine.errors import IllegalTransition
from recycle_engine.storage.bulk_rows import insert_rows, update_columns
from recycle_engine.storage.models import Handoff, HandoffEvent
from recycle_engine.storage.outcome_queue import enqueue, news_of

__all__ = [
    "HandoffUpdate",
    "SendItem",
    "apply_updates",
    "claim_unanswered",
    "fail_unsent",
    "failure_reasons",
    "insert_created",
    "insert_events",
    "lease_unsent",
    "write_handoff",
]

log = logging.getLogger(__name__)

# The columns beside the state that say where a hand-off stands; an event the table refuses leaves them.
_STANDING: Final = frozenset({"vendor_status", "next_poll_at", "outcome_at", "outcome_source"})
_LOCK_CHUNK: Final = 256  # ids read at once: few enough that the planner reads them by primary key


@dataclass(frozen=True)
class SendItem:
    """A hand-off leased for sending: its id, gateway and the exact body to send."""

    id: str
    gateway_id: str
    source: str
    purchase_id: str | None
    order_id: str
    attempt: int | None
    request_body: str
    idempotency_key: str
    amount_minor: int
    resend_count: int
    created_at: datetime | None = None
    expires_at: datetime | None = None
    first_sent_at: datetime | None = None  # None: never sent, its window still counts from its first send


@dataclass(frozen=True)
class HandoffUpdate:
    """An event for one hand-off and the other values it brings. The state column is never among
    `values`: it follows from the event over the state recorded when the update is written."""

    id: str
    values: dict[str, Any]
    event: Event
    source: str
    detail: str | None = None

    def __post_init__(self) -> None:
        if "state" in self.values:
            raise ValueError(f"hand-off {self.id}: the state follows from the event {self.event}, not values")


def _state_column(state: State) -> dict[str, str]:
    """The only write of a hand-off's `state` column in the code base, always of a state that
    domain.states.advance returned (tests/unit/test_state_writes.py holds every module to it)."""
    return {"state": state.value}


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(conn, HandoffEvent, rows)


def insert_created(
    conn: Connection, handoffs: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> None:
    """Write new hand-offs with their first events, one each (CREATED; REJECTED for a request that
    could not be built): each row starts in the state its event starts a hand-off in."""
    start = {e["handoff_id"]: advance(None, Event(e["kind"])) for e in events}
    missing = [h["id"] for h in handoffs if h["id"] not in start]
    if missing or len(start) != len(handoffs):
        raise ValueError(f"hand-offs {missing} need exactly one creation event each")
    insert_rows(conn, Handoff, [{**h, **_state_column(start[h["id"]])} for h in handoffs])
    insert_events(conn, [{**e, "state_after": start[e["handoff_id"]].value} for e in events])


def fail_unsent(conn: Connection, handoff_id: str, reason: str, *, now: datetime) -> bool:
    """Settle a PENDING hand-off that never left us as FAILED, with its event; False if it has since
    been leased or sent (then its sender owns it)."""
    failed = advance(State.PENDING, Event.REJECTED)
    moved = conn.execute(
        update(Handoff)
        .where(
            Handoff.id == handoff_id,
            Handoff.state == State.PENDING.value,
            Handoff.send_started_at.is_(None),
            Handoff.claimed_until.is_(None),
        )
        .values(**_state_column(failed), last_error=reason, outcome_at=now, updated_at=now)
    ).rowcount
    if moved:
        conn.execute(
            insert(HandoffEvent).values(
                handoff_id=handoff_id,
                kind=Event.REJECTED.value,
                source=OutcomeSource.RESPONSE.value,
                state_after=failed.value,
                detail=reason,
                occurred_at=now,
            )
        )
    return bool(moved)


def write_handoff(
    conn: Connection,
    handoff_id: str,
    values: Mapping[str, Any],
    *,
    now: datetime,
    move: tuple[State, Event] | None = None,
) -> None:
    """Write values of one hand-off whose row the caller holds locked and, with `move` (the state it
    read, the event), the state the event leads to; a move into a final outcome state queues the
    outcome for applying. Raises IllegalTransition for a move the lifecycle forbids."""
    if "state" in values:
        raise ValueError(f"hand-off {handoff_id}: the state follows from an event, not values")
    row = dict(values)
    if move is not None:
        row |= _state_column(advance(*move))
    news = news_of(handoff_id, row, now)
    if news is not None:
        enqueue(conn, [news])
    conn.execute(update(Handoff).where(Handoff.id == handoff_id).values({**row, "updated_at": now}))


def lease_unsent(
    conn: Connection,
    *,
    now: datetime,
    lease_until: datetime,
    run_id: str,
    limit: int,
    exclude_gateways: Iterable[str] = (),
    only_ids: Sequence[str] | None = None,
) -> list[SendItem]:
    """Lease up to `limit` PENDING hand-offs never sent (or confirmed absent) and mark them as sending.

    `only_ids` restricts the lease to those hand-offs (a rerun with --now, a cascade).

    The mark is committed by the caller before any HTTP call: a crash after it leaves hand-offs that
    reconcile or the next run look up by our order id before anything is sent again."""
    # The page of ids is picked (and locked) on narrow rows, and the bodies are read for that page only:
    # sorting whole rows, bodies included, spilled every pending body to disk for each batch.
    stmt = (
        select(Handoff.id, Handoff.created_at, Handoff.resend_count)
        .where(
            Handoff.state == State.PENDING.value,
            Handoff.send_started_at.is_(None),
            # FlexFactor holds an order for it (a webhook named it): sending again would be a second one
            Handoff.flexfactor_order_id.is_(None),
            or_(Handoff.claimed_until.is_(None), Handoff.claimed_until < now),
        )
        .order_by(Handoff.created_at, Handoff.id)
        .limit(limit)
    )
    excluded = list(exclude_gateways)
    if excluded:
        stmt = stmt.where(Handoff.gateway_id.not_in(excluded))
    if only_ids is not None:
        stmt = stmt.where(Handoff.id.in_(list(only_ids)))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    page = stmt.subquery("page")
    # resend_count comes from the locked row itself; the other columns never change after creation.
    leased = (
        select(
            Handoff.id,
            Handoff.gateway_id,
            Handoff.source,
            Handoff.purchase_id,
            Handoff.order_id,
            Handoff.attempt,
            Handoff.request_body,
            Handoff.idempotency_key,
            Handoff.amount_minor,
            page.c.resend_count,
            Handoff.created_at,
            Handoff.expires_at,
            Handoff.first_sent_at,
        )
        .join(page, Handoff.id == page.c.id)
        .order_by(page.c.created_at, page.c.id)
    )
    items = [SendItem(**row._mapping) for row in conn.execute(leased)]
    if items:
        # One statement for the page (the same values for every row), not one per hand-off.
        conn.execute(
            update(Handoff)
            .where(Handoff.id.in_([i.id for i in items]))
            .values(send_started_at=now, claimed_by=run_id, claimed_until=lease_until, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    return items


def claim_unanswered(
    conn: Connection, *, now: datetime, lease_until: datetime, run_id: str | None, limit: int
) -> list[tuple[str, str, datetime | None, int]]:
    """PENDING hand-offs that were (maybe) sent and whose sender is gone, as (id, gateway, send time,
    resends so far), leased to `run_id` until `lease_until` so that no other worker or host looks the
    same hand-offs up at once (SKIP LOCKED on PostgreSQL); the caller commits before any HTTP call."""
    stmt = (
        select(Handoff.id, Handoff.gateway_id, Handoff.send_started_at, Handoff.resend_count)
        .where(
            Handoff.state == State.PENDING.value,
            Handoff.send_started_at.is_not(None),
            or_(Handoff.claimed_until.is_(None), Handoff.claimed_until < now),
        )
        .order_by(Handoff.send_started_at, Handoff.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = [(r[0], r[1], r[2], r[3]) for r in conn.execute(stmt)]
    if rows:
        conn.execute(
            update(Handoff)
            .where(Handoff.id == bindparam("b_id"))
            .values(claimed_by=run_id, claimed_until=lease_until, updated_at=now)
            .execution_options(synchronize_session=False),
            [{"b_id": r[0]} for r in rows],
        )
    return rows


def apply_updates(conn: Connection, updates: Sequence[HandoffUpdate], *, now: datetime) -> None:
    """Write each update's event (the state column moving as domain.states.advance says, from the
    state recorded now) and values, and append the events; one set-based update per column set.

    A move into a final outcome state queues the outcome for applying, in the same transaction. An
    event the lifecycle refuses over the recorded state (DECLINED polled before a webhook recorded
    APPROVED) moves nothing and leaves the columns that say where it stands; its other values and its
    event row are written."""
    moves = _moves(conn, updates)
    enqueue(conn, [n for m in moves if (n := news_of(m.update.id, m.values, now)) is not None])
    groups: dict[tuple[str, ...], list[_Move]] = {}
    for m in moves:
        groups.setdefault(tuple(sorted(m.values)), []).append(m)
    for cols, group in groups.items():
        members = list({m.update.id: m for m in group}.values())  # one row per hand-off: the last wins
        columns = {"id": [m.update.id for m in members], **{c: [m.values[c] for m in members] for c in cols}}
        update_columns(conn, Handoff, "id", columns, {"updated_at": now})
    insert_events(
        conn,
        [
            {
                "handoff_id": m.update.id,
                "kind": m.update.event.value,
                "source": m.update.source,
                "state_after": m.state_after.value,
                "flexfactor_order_id": m.values.get("flexfactor_order_id"),
                "vendor_status": m.values.get("vendor_status"),
                "detail": m.detail,
                "occurred_at": now,
            }
            for m in moves
        ],
    )


@dataclass(frozen=True)
class _Move:
    update: HandoffUpdate
    values: dict[str, Any]  # the update's values, with the state column when the event moves it
    state_after: State
    detail: str | None


def _moves(conn: Connection, updates: Sequence[HandoffUpdate]) -> list[_Move]:
    """Each update over the state recorded now (and over the updates before it), read under a row lock
    on PostgreSQL so that no other writer moves them before this transaction writes (on SQLite the
    transaction already holds the only write lock)."""
    ids = sorted({u.id for u in updates})
    recorded: dict[str, State] = {}
    for start in range(0, len(ids), _LOCK_CHUNK):
        stmt = select(Handoff.id, Handoff.state).where(Handoff.id.in_(ids[start : start + _LOCK_CHUNK]))
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        recorded.update((row.id, State(row.state)) for row in conn.execute(stmt))
    moves: list[_Move] = []
    for u in updates:
        now_in = recorded.get(u.id)
        if now_in is None:
            log.warning("update of an unknown hand-off dropped", extra={"handoff": u.id, "event": u.event})
            continue
        try:
            after = advance(now_in, u.event)
        except IllegalTransition:
            log.info(
                "recorded outcome kept",
                extra={"handoff": u.id, "recorded": now_in.value, "event": u.event.value, "source": u.source},
            )
            kept = {k: v for k, v in u.values.items() if k not in _STANDING}
            detail = f"{u.detail or u.event.value}; {u.event.value} not applied over {now_in.value}, recorded first"
            moves.append(_Move(u, kept, now_in, detail))
            continue
        recorded[u.id] = after
        moves.append(_Move(u, u.values | _state_column(after), after, u.detail))
    return moves


def failure_reasons(conn: Connection, run_id: str) -> list[tuple[str, str, int]]:
    """Why the hand-offs of run `run_id` failed or are still unsent: (FAILED or PENDING, last error,
    how many), most frequent first. Read through the state index: failed and open rows are few."""
    stmt = (
        select(Handoff.state, Handoff.last_error, func.count())
        .where(
            Handoff.run_id == run_id,
            Handoff.last_error.is_not(None),
            or_(
                Handoff.state == State.FAILED.value,
                and_(Handoff.state == State.PENDING.value, Handoff.send_started_at.is_(None)),
            ),
        )
        .group_by(Handoff.state, Handoff.last_error)
        .order_by(func.count().desc(), Handoff.last_error)
    )
    return [(state, error or "", n) for state, error, n in conn.execute(stmt)]
