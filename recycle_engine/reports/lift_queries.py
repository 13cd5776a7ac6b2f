"""SQL for the holdout comparison: each group's subscriptions by outcome and currency, grouped in the database:
the final outcomes from the daily holdout rollup, the rest assignment by assignment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import and_, case, func, literal, or_, select, union_all

from recycle_engine.domain.holdout_outcome import LOST, RECOVERED
from recycle_engine.domain.outcomes import PurchaseStatus
from recycle_engine.domain.states import Source, State
from recycle_engine.reports.queries import ReportBounds
from recycle_engine.storage.models import Attempt, Handoff, HoldoutAssignment, HoldoutRollup, Subscription

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Select

    Query: TypeAlias = Select[*tuple[Any, ...]]

__all__ = ["lift_facts_direct_stmt", "lift_facts_stmt"]

_KEYS = ("arm", "currency", "outcome")
_AMOUNTS = ("assigned_minor", "recovered_minor")


def lift_facts_stmt(bounds: ReportBounds) -> Query:
    """Holdout assignments made up to the end of the report day, by arm, currency and outcome as of then
    (rows as lift_facts_direct_stmt, equal to them as of the last refresh of the rollups).

    An assignment whose outcome became final before the report day reads the same on that day as now,
    so it comes from the rollup. One still open (never approved, still on that decline's ladder) is
    pending on any day: counted from the partial index alone. Those settled on the day or later are
    counted as settled, through the final_at index, unless approved after the report's instant: only
    those are read one by one."""
    r, a = HoldoutRollup, HoldoutAssignment
    rolled = select(
        r.arm.label("arm"),
        r.currency.label("currency"),
        r.outcome.label("outcome"),
        r.assignments.label("n"),
        r.assigned_minor.label("assigned_minor"),
        r.recovered_minor.label("recovered_minor"),
    ).where(r.day <= bounds.day, r.outcome_day < bounds.day)
    keys = [a.arm, a.currency]
    still_open = (
        select(
            *keys,
            literal("pending").label("outcome"),
            sa.cast(func.count(), sa.BigInteger).label("n"),
            sa.cast(func.sum(a.amount_minor), sa.BigInteger).label("assigned_minor"),
            sa.cast(literal(0), sa.BigInteger).label("recovered_minor"),
        )
        .where(a.final_at.is_(None), a.assigned_at < bounds.day_end)
        .group_by(*keys)
    )
    # Settled on the day or later: as settled, when lost or when the last approval came before the
    # instant the report reads at; otherwise (an approval after it) as of that instant, one by one.
    settled_by_then = or_(a.final_outcome == LOST, a.final_at < bounds.as_of)
    settled_since = (
        select(
            *keys,
            a.final_outcome.label("outcome"),
            sa.cast(func.count(), sa.BigInteger).label("n"),
            sa.cast(func.sum(a.amount_minor), sa.BigInteger).label("assigned_minor"),
            sa.cast(func.sum(a.recovered_minor), sa.BigInteger).label("recovered_minor"),
        )
        .where(a.final_at >= bounds.day_start, a.assigned_at < bounds.day_end, settled_by_then)
        .group_by(*keys, a.final_outcome)
    )
    approved_later = _grouped(
        _per_assignment(bounds).where(a.final_at >= bounds.as_of, a.final_outcome == RECOVERED).subquery()
    )
    parts = union_all(rolled, still_open, settled_since, approved_later).subquery()
    columns = [parts.c[k] for k in _KEYS]
    return select(*columns, *_totals(parts, ("n", *_AMOUNTS))).group_by(*columns).order_by(*columns)


def lift_facts_direct_stmt(bounds: ReportBounds) -> Query:
    """lift_facts_stmt read from every assignment up to the report day, one by one."""
    inner = _per_assignment(bounds).subquery()
    return _grouped(inner).order_by(*[inner.c[k] for k in _KEYS])


def _totals(rows: Any, columns: tuple[str, ...]) -> list[Any]:
    # PostgreSQL sums BIGINT as NUMERIC; cast back so pandas sees integers on both databases.
    return [sa.cast(func.coalesce(func.sum(rows.c[c]), 0), sa.BigInteger).label(c) for c in columns]


def _grouped(inner: Any) -> Query:
    keys = [inner.c[k] for k in _KEYS]
    n = sa.cast(func.count(), sa.BigInteger).label("n")
    return select(*keys, n, *_totals(inner, _AMOUNTS)).group_by(*keys)


def _per_assignment(bounds: ReportBounds) -> Query:
    """Each holdout assignment made up to the end of the report day with its outcome as of then.

    Recovered: the recycled decline was approved by the end of the report day, after its first
    FlexFactor slot, by FlexFactor or by a later ordinary attempt (`recovered_minor` is what was
    collected). Pending: not recovered then, and still on that ladder now or recovered since. Lost:
    everything else (failed out, cancelled, or a newer decline took over; a subscription lost after the
    report day but pending on it counts as lost: its status keeps no history)."""
    a = HoldoutAssignment
    at = bounds.as_of
    # Approved retries by their recycled decline, through its unique key: SQLite has no statistics and
    # took the ladder's index on (result, occurred_at) instead, every approved retry once per assignment.
    approved_retry = (
        Attempt.subscription_id == a.subscription_id,
        Attempt.decline_transaction_id == a.decline_transaction_id,
        func.coalesce(Attempt.result, "") == "APPROVED",
    )
    by_processor = (
        select(func.max(Attempt.amount_minor))
        .where(*approved_retry, Attempt.occurred_at < at)
        .scalar_subquery()
    )
    later = select(Attempt.id).where(*approved_retry, Attempt.occurred_at >= at).exists()
    approved_handoff = (
        Handoff.purchase_id == a.subscription_id,
        Handoff.transaction_id == a.decline_transaction_id,
        Handoff.source == Source.RECYCLE.value,
        # Kept off the state indexes: SQLite has no statistics, took "state = 'APPROVED'" (a third
        # of all hand-offs) for as selective as the purchase, and walked every approved hand-off
        # once per assignment (minutes on a book of 100,000).
        func.coalesce(Handoff.state, "") == State.APPROVED.value,
    )
    by_flexfactor = (
        select(func.max(Handoff.amount_minor))
        .where(*approved_handoff, Handoff.outcome_at < at)
        .scalar_subquery()
    )
    later_by_flexfactor = select(Handoff.id).where(*approved_handoff, Handoff.outcome_at >= at).exists()
    recovered = func.coalesce(by_flexfactor, by_processor)
    still_recycling = or_(
        and_(
            Subscription.status == PurchaseStatus.RECYCLE_BILLING.value,
            Subscription.recycle_transaction_id == a.decline_transaction_id,
        ),
        later,
        later_by_flexfactor,
    )
    outcome = case(
        (recovered.is_not(None), literal("recovered")),
        (still_recycling, literal("pending")),
        else_=literal("lost"),
    )
    return (
        select(
            a.arm.label("arm"),
            a.currency.label("currency"),
            outcome.label("outcome"),
            a.amount_minor.label("assigned_minor"),
            func.coalesce(recovered, 0).label("recovered_minor"),
        )
        .select_from(a)
        .outerjoin(Subscription, Subscription.id == a.subscription_id)
        .where(a.assigned_at < bounds.day_end)
    )
