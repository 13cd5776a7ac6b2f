"""Hand-off storage: create, lease for sending, record answers, and the named open-work queries."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from recycle_engine.domain.states import State, may_overwrite
from recycle_engine.storage.bulk_rows import insert_rows, update_columns
from recycle_engine.storage.models import Handoff, HandoffEvent
from recycle_engine.storage.outcome_queue import enqueue, news_of

__all__ = [
    "HandoffUpdate",
    "SendItem",
    "apply_updates",
    "claim_unanswered",
    "failure_reasons",
    "insert_events",
    "lease_unsent",
]

log = logging.getLogger(__name__)

# The columns that say where a hand-off stands; an update that may not move its state leaves them all.
_STANDING: Final = frozenset({"state", "vendor_status", "next_poll_at", "outcome_at", "outcome_source"})
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
    """New values for one hand-off plus the event that explains them."""

    id: str
    values: dict[str, Any]
    event_kind: str
    source: str
    detail: str | None = None
    kept_state: str | None = None  # set when the hand-off's recorded outcome stands over `values`


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(conn, HandoffEvent, rows)


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
    """Write new hand-off values and append their events; one set-based update per column set.

    A move into a final outcome state queues the outcome for applying, in the same transaction. A state
    the lifecycle does not allow over the recorded one (SUBMITTED read by a poll before a webhook
    recorded APPROVED) is not written; the update's other values and its event are."""
    updates = _lawful(conn, updates)
    enqueue(conn, [n for u in updates if (n := news_of(u.id, u.values, now)) is not None])
    groups: dict[tuple[str, ...], list[HandoffUpdate]] = {}
    for u in updates:
        groups.setdefault(tuple(sorted(u.values)), []).append(u)
    for cols, group in groups.items():
        members = list({u.id: u for u in group}.values())  # one row per hand-off: the last update wins
        columns = {"id": [u.id for u in members], **{c: [u.values[c] for u in members] for c in cols}}
        update_columns(conn, Handoff, "id", columns, {"updated_at": now})
    insert_events(
        conn,
        [
            {
                "handoff_id": u.id,
                "kind": u.event_kind,
                "source": u.source,
                "state_after": u.kept_state or u.values.get("state", State.PENDING.value),
                "flexfactor_order_id": u.values.get("flexfactor_order_id"),
                "vendor_status": u.values.get("vendor_status"),
                "detail": u.detail,
                "occurred_at": now,
            }
            for u in updates
        ],
    )


def _lawful(conn: Connection, updates: Sequence[HandoffUpdate]) -> list[HandoffUpdate]:
    """The updates as they may be written over the states recorded now, read under a row lock on
    PostgreSQL so that no other writer moves them before this transaction writes (on SQLite the
    transaction already holds the only write lock)."""
    ids = sorted({u.id for u in updates if "state" in u.values})
    recorded: dict[str, str] = {}
    for start in range(0, len(ids), _LOCK_CHUNK):
        stmt = select(Handoff.id, Handoff.state).where(Handoff.id.in_(ids[start : start + _LOCK_CHUNK]))
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        recorded.update((row.id, row.state) for row in conn.execute(stmt))
    lawful: list[HandoffUpdate] = []
    for u in updates:
        new, now_in = u.values.get("state"), recorded.get(u.id)
        if new is None or now_in is None or may_overwrite(State(now_in), State(new)):
            lawful.append(u)
            continue
        log.info(
            "recorded outcome kept",
            extra={"handoff": u.id, "recorded": now_in, "read": new, "source": u.source},
        )
        kept = {k: v for k, v in u.values.items() if k not in _STANDING}
        detail = f"{u.detail or u.event_kind}; {new} not written over {now_in}, recorded first"
        lawful.append(replace(u, values=kept, detail=detail, kept_state=now_in))
    return lawful


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
