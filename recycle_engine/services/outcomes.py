"""Apply final hand-off states to orders and subscriptions, exactly once (SPEC section 1 table)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.ladder import local_date
from recycle_engine.domain.outcomes import (
    FailureCause,
    PurchaseStatus,
    effect_of,
    next_bill_date,
    price_after_approval,
)
from recycle_engine.domain.states import State
from recycle_engine.settings import Settings
from recycle_engine.storage.models import Handoff, Order, Subscription
from recycle_engine.storage.subscription_repo import (
    Approval,
    RecycleFailure,
    apply_approvals,
    apply_failures,
    create_fulfillments,
    record_changes,
)

__all__ = ["apply_outcomes"]

log = logging.getLogger(__name__)

_OUTCOME_STATES = (State.APPROVED.value, State.DECLINED.value, State.EXPIRED.value, State.CANCELLED.value)
# Change rows name how the outcome reached us (RESPONSE, WEBHOOK, POLL, EXPIRY); this only if unknown.
_SOURCE = "FLEXFACTOR"


def apply_outcomes(
    settings: Settings,
    engine: Engine,
    *,
    now: datetime,
    handoff_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    chunk: int = 1000,
) -> Counter[str]:
    """Apply every final, not yet applied hand-off outcome; safe to run again and concurrently."""
    counts: Counter[str] = Counter()
    while True:
        with engine.begin() as conn:
            n = _apply_chunk(
                settings, conn, now=now, handoff_ids=handoff_ids, run_id=run_id, limit=chunk, counts=counts
            )
        if n < chunk:
            return counts


def _apply_chunk(
    settings: Settings,
    conn: Connection,
    *,
    now: datetime,
    handoff_ids: Sequence[str] | None,
    run_id: str | None,
    limit: int,
    counts: Counter[str],
) -> int:
    stmt = (
        select(
            Handoff.id,
            Handoff.source,
            Handoff.state,
            Handoff.order_id,
            Handoff.purchase_id,
            Handoff.declining_gateway_id,
            Handoff.amount_minor,
            Handoff.outcome_at,
            Handoff.outcome_source,
            Handoff.late_outcome,
            Handoff.billing_cycle,
            Order.order_type,
            Order.completes_trial,
            Order.recurring_product,
            Order.shippable.label("order_shippable"),
            Order.product_id.label("order_product_id"),
            Order.status.label("order_status"),
            Subscription.status.label("sub_status"),
            Subscription.open_handoff_id,
            Subscription.billing_cycle.label("sub_cycle"),
            Subscription.billing_interval_days,
            Subscription.price_minor,
            Subscription.shippable.label("sub_shippable"),
            Subscription.product_id.label("sub_product_id"),
            Subscription.recycle_profile_id,
            Subscription.failure_cause,
        )
        .outerjoin(Order, Order.id == Handoff.order_id)
        .outerjoin(Subscription, Subscription.id == Handoff.purchase_id)
        .where(Handoff.state.in_(_OUTCOME_STATES), Handoff.applied_at.is_(None))
        .order_by(Handoff.outcome_at, Handoff.id)
        .limit(limit)
    )
    if handoff_ids is not None:
        stmt = stmt.where(Handoff.id.in_(list(handoff_ids)))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=Handoff, skip_locked=True)
    rows = list(conn.execute(stmt))
    approvals: list[Approval] = []
    failures: list[RecycleFailure] = []
    order_updates: list[dict[str, object]] = []
    fulfil: dict[str, list[tuple[str | None, str | None, int, str | None, str | None]]] = {}
    attention: list[dict[str, object]] = []
    changes: list[dict[str, object]] = []
    for r in rows:
        success = r.state == State.APPROVED.value
        order_type = OrderType(r.order_type) if r.order_type else OrderType.REBILL
        effect = effect_of(
            order_type=order_type,
            completes_trial=bool(r.completes_trial),
            success=success,
            recurring_product=bool(r.recurring_product),
            source=r.source,
        )
        counts["approved" if success else "failed_outcome"] += 1
        if r.source == "RECYCLE":
            _recurring(settings, r, success, approvals, failures, attention, counts)
            continue
        # New sale (rerun or cascade): the order row carries the result.
        if effect.order_status is not None and effect.order_status.value != r.order_status:
            order_updates.append(
                {
                    "b_id": r.order_id,
                    "b_status": effect.order_status.value,
                    "b_token": not effect.no_payment_token,
                }
            )
            changes.append(_order_change(r, effect.order_status.value, now, run_id))
        elif effect.no_payment_token:
            order_updates.append({"b_id": r.order_id, "b_status": r.order_status, "b_token": False})
        if effect.create_fulfillments and r.order_shippable:
            fulfil.setdefault(r.outcome_source or _SOURCE, []).append(
                (r.order_id, r.purchase_id, r.billing_cycle, r.order_product_id, r.id)
            )
        if effect.no_payment_token:
            # The CRM must learn it too: its next rebill runs without a stored token.
            changes.append(_token_change(r, "ORDER", r.order_id, now, run_id))
        if effect.no_payment_token and r.purchase_id:
            counts["no_payment_token"] += 1
            changes.append(_token_change(r, "SUBSCRIPTION", r.purchase_id, now, run_id))
            conn.execute(
                update(Subscription)
                .where(Subscription.id == r.purchase_id)
                .values(has_payment_token=False, updated_at=now)
            )
    apply_approvals(conn, approvals, now=now, run_id=run_id, reason="FLEXFACTOR_APPROVED", source=_SOURCE)
    apply_failures(conn, failures, now=now, run_id=run_id, reason="FLEXFACTOR_FAILED", source=_SOURCE)
    if order_updates:
        conn.execute(
            update(Order)
            .where(Order.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), has_payment_token=bindparam("b_token"), updated_at=now)
            .execution_options(synchronize_session=False),
            order_updates,
        )
    for source, items in fulfil.items():
        counts["fulfillments"] += create_fulfillments(conn, items, now=now, run_id=run_id, source=source)
    record_changes(conn, changes)
    if attention:
        conn.execute(
            update(Handoff)
            .where(Handoff.id == bindparam("b_id"))
            .values(attention=bindparam("b_attention"))
            .execution_options(synchronize_session=False),
            attention,
        )
    if rows:
        conn.execute(
            update(Handoff)
            .where(Handoff.id == bindparam("b_id"))
            .values(applied_at=now, updated_at=now)
            .execution_options(synchronize_session=False),
            [{"b_id": r.id} for r in rows],
        )
    return len(rows)


def _order_change(r: Any, new_status: str, now: datetime, run_id: str | None) -> dict[str, object]:
    return {
        "entity": "ORDER",
        "entity_id": r.order_id,
        "field": "status",
        "old_value": r.order_status,
        "new_value": new_status,
        "reason": "FLEXFACTOR_OUTCOME",
        "source": r.outcome_source or _SOURCE,
        "handoff_id": r.id,
        "run_id": run_id,
        "occurred_at": now,
    }


def _token_change(
    r: Any, entity: str, entity_id: str, now: datetime, run_id: str | None
) -> dict[str, object]:
    return {
        "entity": entity,
        "entity_id": entity_id,
        "field": "has_payment_token",
        "old_value": None,
        "new_value": "False",
        "reason": "FLEXFACTOR_KEEPS_CARD",
        "source": r.outcome_source or _SOURCE,
        "handoff_id": r.id,
        "run_id": run_id,
        "occurred_at": now,
    }


def _recurring(
    settings: Settings,
    r: Any,
    success: bool,
    approvals: list[Approval],
    failures: list[RecycleFailure],
    attention: list[dict[str, object]],
    counts: Counter[str],
) -> None:
    """Recycle hand-off: the subscription moves on or fails, if it is still waiting on this hand-off."""
    row = r
    sub_status = row.sub_status
    waiting = row.open_handoff_id == row.id
    failed_by_us = (
        sub_status == PurchaseStatus.RECYCLE_FAILED.value
        and row.failure_cause == FailureCause.FLEXFACTOR_FAILED.value
        and row.sub_cycle == row.billing_cycle
    )
    if success and (waiting or failed_by_us):
        if failed_by_us:
            counts["late_approvals_applied"] += 1
        profile = settings.recycle_profiles.get(row.recycle_profile_id or "")
        outcome_at: datetime = row.outcome_at
        approved_on = local_date(outcome_at, settings.timezone)
        interval = row.billing_interval_days
        approvals.append(
            Approval(
                subscription_id=row.purchase_id,
                order_id=row.order_id,
                product_id=row.sub_product_id,
                billing_cycle=row.sub_cycle,
                next_bill_on=next_bill_date(approved_on, interval) if interval else None,
                price_minor=price_after_approval(
                    hold_recycle_price=bool(profile and profile.hold_recycle_price),
                    approved_minor=row.amount_minor,
                    regular_minor=row.price_minor,
                ),
                # The next scheduled rebill goes back to the gateway that declined.
                gateway_id=row.declining_gateway_id,
                shippable=bool(row.sub_shippable),
                handoff_id=row.id,
                old_status=sub_status,
                source=row.outcome_source,
            )
        )
        return
    if not success and waiting:
        failures.append(
            RecycleFailure(
                row.purchase_id,
                FailureCause.FLEXFACTOR_FAILED.value,
                old_status=sub_status,
                handoff_id=row.id,
                source=row.outcome_source,
            )
        )
        return
    if success:
        # Money was collected but the subscription has moved on: the billing team must act.
        counts["late_approvals_unapplied"] += 1
        attention.append({"b_id": row.id, "b_attention": "LATE_APPROVAL_UNAPPLIED"})
        log.warning(
            "late approval not applied",
            extra={"handoff": row.id, "subscription_status": sub_status},
        )
    else:
        counts["outcome_no_effect"] += 1
