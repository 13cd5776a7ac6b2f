"""Holdout rollup: each assignment's final outcome, recomputed for the recycled declines noted as changed,
and the daily rollup of the final ones. The caller owns the transaction (services/reporting/rollups.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update

from recycle_engine.domain.holdout_outcome import settle
from recycle_engine.domain.outcomes import PurchaseStatus
from recycle_engine.domain.states import Source, State
from recycle_engine.storage.models import (
    Attempt,
    Handoff,
    HoldoutAssignment,
    HoldoutChange,
    HoldoutRollup,
    Subscription,
)
from recycle_engine.storage.report_sql import local_date, local_midnight, within

__all__ = [
    "STATE_NAME",
    "assignment_days",
    "clear_rollup",
    "reclassify",
    "reclassify_all",
    "recompute_days",
    "take_changes",
]

STATE_NAME: Final = "holdout"  # its row in report_rollup_state
CHUNK: Final = 500  # recycled declines looked up per statement
# An approval may precede its assignment by moments and follow it by months; instants outside these
# margins are dated with the offset at their edge (exact unless the zone changed its rules in between).
BEFORE: Final = timedelta(days=31)
AFTER: Final = timedelta(days=5 * 366)


def take_changes(conn: Connection) -> tuple[set[tuple[str, str]], list[datetime]]:
    """Delete the notes and return exactly those deleted: the recycled declines (subscription, decline)
    and the assignment instants noted (an assignment deleted or moved leaves only its instant)."""
    rows = conn.execute(
        delete(HoldoutChange).returning(
            HoldoutChange.subscription_id, HoldoutChange.decline_transaction_id, HoldoutChange.assigned_at
        )
    ).all()
    keys = {(s, t) for s, t, _ in rows if s is not None and t is not None}
    return keys, [at for _, _, at in rows if at is not None]


def _classify_stmt() -> Any:
    a = HoldoutAssignment
    approved_handoff = [
        Handoff.purchase_id == a.subscription_id,
        Handoff.transaction_id == a.decline_transaction_id,
        Handoff.source == Source.RECYCLE.value,
        # As the report's statement: by the recycled decline, kept off the state and result indexes
        # (see reports/lift_queries.py).
        func.coalesce(Handoff.state, "") == State.APPROVED.value,
        Handoff.outcome_at.is_not(None),
    ]
    approved_retry = [
        Attempt.subscription_id == a.subscription_id,
        Attempt.decline_transaction_id == a.decline_transaction_id,
        func.coalesce(Attempt.result, "") == "APPROVED",
    ]
    recycling = (
        select(Subscription.id)
        .where(
            Subscription.id == a.subscription_id,
            Subscription.status == PurchaseStatus.RECYCLE_BILLING.value,
            Subscription.recycle_transaction_id == a.decline_transaction_id,
        )
        .exists()
    )
    return select(
        a.id,
        a.assigned_at,
        a.final_outcome,
        a.final_at,
        a.recovered_minor,
        select(func.max(Handoff.outcome_at)).where(*approved_handoff).scalar_subquery(),
        select(func.max(Handoff.amount_minor)).where(*approved_handoff).scalar_subquery(),
        select(func.max(Attempt.occurred_at)).where(*approved_retry).scalar_subquery(),
        select(func.max(Attempt.amount_minor)).where(*approved_retry).scalar_subquery(),
        recycling,
    )


def _apply(conn: Connection, rows: Iterable[Sequence[Any]]) -> list[datetime]:
    """Write each assignment's outcome where it changed; the assignment instants of those changed."""
    changed: list[dict[str, Any]] = []
    moved: list[datetime] = []
    for id_, assigned_at, *stored, ff_at, ff_minor, retry_at, retry_minor, recycling in rows:
        now = settle(assigned_at, (ff_at, ff_minor), (retry_at, retry_minor), recycling=bool(recycling))
        if (now.outcome, now.final_at, now.recovered_minor) != tuple(stored):
            changed.append(
                {"b_id": id_, "b_outcome": now.outcome, "b_at": now.final_at, "b_minor": now.recovered_minor}
            )
            moved.append(assigned_at)
    if changed:
        a = HoldoutAssignment
        stmt = (
            update(a)
            .where(a.id == bindparam("b_id"))
            .values(
                final_outcome=bindparam("b_outcome"),
                final_at=bindparam("b_at", type_=a.final_at.type),
                recovered_minor=bindparam("b_minor"),
            )
        )
        conn.execute(stmt, changed)
    return moved


def reclassify(conn: Connection, keys: Iterable[tuple[str, str]]) -> list[datetime]:
    """Settle again the assignments of these recycled declines (subscription, decline); returns the
    assignment instants of those whose outcome changed."""
    ordered = sorted(keys)
    a = HoldoutAssignment
    moved: list[datetime] = []
    for i in range(0, len(ordered), CHUNK):
        chunk = ordered[i : i + CHUNK]
        where = tuple_(a.subscription_id, a.decline_transaction_id).in_(chunk)
        moved += _apply(conn, conn.execute(_classify_stmt().where(where)).all())
    return moved


def reclassify_all(conn: Connection, *, batch: int = 20_000) -> int:
    """Settle every assignment again (a rebuild), a batch of ids at a time; returns how many changed."""
    a = HoldoutAssignment
    moved, after = 0, -1
    while rows := conn.execute(_classify_stmt().where(a.id > after).order_by(a.id).limit(batch)).all():
        moved += len(_apply(conn, rows))
        after = rows[-1][0]
    return moved


def assignment_days(conn: Connection, tz: ZoneInfo) -> list[date]:
    """Every local day from the first assignment's to the last one's (the assigned_at index answers)."""
    first = conn.execute(select(func.min(HoldoutAssignment.assigned_at))).scalar()
    last = conn.execute(select(func.max(HoldoutAssignment.assigned_at))).scalar()
    if first is None or last is None:
        return []
    start, end = first.astimezone(tz).date(), last.astimezone(tz).date()
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def clear_rollup(conn: Connection) -> None:
    conn.execute(delete(HoldoutRollup))


def recompute_days(conn: Connection, tz: ZoneInfo, first: date, last: date) -> None:
    """Replace the rollup rows of local assignment days first..last with their final assignments."""
    r, a = HoldoutRollup, HoldoutAssignment
    conn.execute(delete(r).where(r.day >= first, r.day <= last))
    dialect = conn.dialect.name
    start, end = local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz)
    facts = (
        select(
            local_date(a.assigned_at, tz, start=start, end=end, dialect=dialect).label("day"),
            a.arm.label("arm"),
            a.currency.label("currency"),
            a.final_outcome.label("outcome"),
            local_date(a.final_at, tz, start=start - BEFORE, end=end + AFTER, dialect=dialect).label(
                "outcome_day"
            ),
            a.amount_minor.label("assigned_minor"),
            a.recovered_minor.label("recovered_minor"),
        )
        .where(within(a.assigned_at, start, end), a.final_at.is_not(None))
        .subquery("facts")
    )
    keys = [facts.c[k] for k in ("day", "arm", "currency", "outcome", "outcome_day")]
    # PostgreSQL sums BIGINT as NUMERIC; cast back so both databases store integers.
    totals = [
        sa.cast(func.count(), sa.BigInteger).label("assignments"),
        *(
            sa.cast(func.coalesce(func.sum(facts.c[c]), 0), sa.BigInteger).label(c)
            for c in ("assigned_minor", "recovered_minor")
        ),
    ]
    rows = select(*keys, *totals).group_by(*keys)
    conn.execute(insert(r).from_select(list(rows.selected_columns.keys()), rows))
