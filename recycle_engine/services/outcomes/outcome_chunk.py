"""One chunk of queued outcomes: read and worked out in Python (prepare_chunk), then written in a
fixed number of set-based statements and dequeued (write_chunk), in one transaction."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from recycle_engine.config import Settings
from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.ladder import local_date
from recycle_engine.domain.outcomes import (
    FailureCause,
    OutcomeEffect,
    PurchaseStatus,
    effect_of,
    next_bill_date,
    price_after_approval,
)
from recycle_engine.domain.states import Source, State
from recycle_engine.storage.outcome_chunk_repo import (
    clear_payment_tokens,
    lock_queued_outcomes,
    orders_with,
    write_order_results,
)
from recycle_engine.storage.outcome_writes import RecycleOutcome, apply_recycle_outcomes
from recycle_engine.storage.profile_versions import ProfileBook
from recycle_engine.storage.subscription_repo import create_fulfillments, record_changes
from recycle_engine.storage.types import as_utc

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["Prepared", "prepare_chunk", "write_chunk"]

log = logging.getLogger(__name__)

# Change rows name how the outcome reached us (RESPONSE, WEBHOOK, POLL, EXPIRY); this only if unknown.
_SOURCE = "FLEXFACTOR"


class _Final(NamedTuple):
    """One queued outcome with its purchase, as prepare_chunk selects them (same order).

    A plain tuple per row: named access on the SQL layer's rows cost more than applying the outcome."""

    id: str
    source: str
    state: str
    order_id: str
    purchase_id: str | None
    declining_gateway_id: str
    amount_minor: int
    outcome_at: datetime  # as the driver returns it: see as_utc
    outcome_source: str | None
    billing_cycle: int
    sub_status: str | None
    open_handoff_id: str | None
    sub_cycle: int | None
    billing_interval_days: int | None
    price_minor: int | None
    sub_shippable: bool | None
    sub_product_id: str | None
    recycle_profile_id: str | None
    recycle_profile_version: str | None
    failure_cause: str | None


class _Sale(NamedTuple):
    """The order of a new-sale outcome (rerun or cascade): it carries the result."""

    order_type: str | None = None
    completes_trial: bool | None = None
    recurring_product: bool | None = None
    shippable: bool | None = None
    product_id: str | None = None
    status: str | None = None


@dataclass
class Prepared:
    """A chunk read (its queue rows locked) and worked out, ready for write_chunk."""

    applied: int  # outcomes in the chunk
    staged: list[RecycleOutcome]
    order_updates: list[dict[str, object]]
    fulfil: dict[str, list[tuple[str | None, str | None, int, str | None, str | None]]]
    changes: list[dict[str, object]]
    tokenless: list[str]  # purchases whose next rebill runs without a stored token
    counts: Counter[str]


def prepare_chunk(
    settings: Settings, conn: Connection, *, now: datetime, ids: Sequence[str], run_id: str | None
) -> Prepared:
    """Read the outcomes of `ids` still queued, locking their queue rows, and work out what each does
    (SPEC section 1 table); nothing is written yet."""
    # Oldest outcome first, ordered here: an ORDER BY makes SQLite sort the whole chunk's wide rows
    # on disk once it outgrows the page cache.
    position = {handoff_id: n for n, handoff_id in enumerate(ids)}
    rows = sorted(map(_Final._make, lock_queued_outcomes(conn, ids)), key=lambda r: position[r.id])
    recycle = Source.RECYCLE.value
    # The ladder version each purchase entered with decides what an approval does to its price.
    book = ProfileBook(conn, settings.recycle_profiles)
    sales = _sales(conn, [r.order_id for r in rows if r.source != recycle])
    p = Prepared(len(rows), [], [], {}, [], [], Counter())
    counts = p.counts
    approved = State.APPROVED.value
    for r in rows:
        success = r.state == approved
        counts["approved" if success else "failed_outcome"] += 1
        if r.source == recycle:
            p.staged.append(_recurring(settings, book, r, success, counts))
            continue
        p.staged.append(_staged(r, "N"))
        # New sale (rerun or cascade): the order row carries the result.
        o = sales.get(r.order_id, _Sale())
        effect = _effect(o.order_type, bool(o.completes_trial), success, bool(o.recurring_product), r.source)
        if effect.order_status is not None and effect.order_status.value != o.status:
            p.order_updates.append(
                {
                    "b_id": r.order_id,
                    "b_status": effect.order_status.value,
                    "b_token": not effect.no_payment_token,
                }
            )
            p.changes.append(_order_change(r, o.status, effect.order_status.value, now, run_id))
        elif effect.no_payment_token:
            p.order_updates.append({"b_id": r.order_id, "b_status": o.status, "b_token": False})
        if effect.create_fulfillments and o.shippable:
            p.fulfil.setdefault(r.outcome_source or _SOURCE, []).append(
                (r.order_id, r.purchase_id, r.billing_cycle, o.product_id, r.id)
            )
        if effect.no_payment_token:
            # The CRM must learn it too: its next rebill runs without a stored token.
            p.changes.append(_token_change(r, "ORDER", r.order_id, now, run_id))
        if effect.no_payment_token and r.purchase_id:
            counts["no_payment_token"] += 1
            p.changes.append(_token_change(r, "SUBSCRIPTION", r.purchase_id, now, run_id))
            p.tokenless.append(r.purchase_id)
    return p


def write_chunk(conn: Connection, p: Prepared, *, now: datetime, run_id: str | None) -> None:
    """Write what a prepared chunk does and dequeue it, in the transaction that prepared it."""
    # Dequeues every hand-off of the chunk, the new sales' too.
    apply_recycle_outcomes(conn, p.staged, now=now, run_id=run_id)
    if p.tokenless:
        clear_payment_tokens(conn, p.tokenless, now=now)
    if p.order_updates:
        write_order_results(conn, p.order_updates, now=now)
    for source, items in p.fulfil.items():
        p.counts["fulfillments"] += create_fulfillments(conn, items, now=now, run_id=run_id, source=source)
    record_changes(conn, p.changes)


def _sales(conn: Connection, order_ids: Sequence[str]) -> dict[str, _Sale]:
    """The orders of the chunk's new-sale outcomes (a recycle outcome's effect is its purchase's)."""
    if not order_ids:
        return {}
    return {row[0]: _Sale._make(row[1:]) for row in orders_with(conn, order_ids, _Sale._fields)}


def _order_change(
    r: _Final, old_status: str | None, new_status: str, now: datetime, run_id: str | None
) -> dict[str, object]:
    return {
        "entity": "ORDER",
        "entity_id": r.order_id,
        "field": "status",
        "old_value": old_status,
        "new_value": new_status,
        "reason": "FLEXFACTOR_OUTCOME",
        "source": r.outcome_source or _SOURCE,
        "handoff_id": r.id,
        "run_id": run_id,
        "occurred_at": now,
    }


def _token_change(
    r: _Final, entity: str, entity_id: str, now: datetime, run_id: str | None
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


@cache
def _effect(
    order_type: str | None, completes_trial: bool, success: bool, recurring_product: bool, source: str
) -> OutcomeEffect:
    """effect_of for the values a row holds; a chunk has only a handful of distinct ones."""
    return effect_of(
        order_type=OrderType(order_type) if order_type else OrderType.REBILL,
        completes_trial=completes_trial,
        success=success,
        recurring_product=recurring_product,
        source=Source(source),
    )


def _staged(
    r: _Final,
    kind: str,
    *,
    product_id: str | None = None,
    paid_cycle: int | None = None,
    next_bill_on: str | None = None,
    price_minor: int | None = None,
    gateway_id: str | None = None,
    cause: str | None = None,
    shippable: bool = False,
) -> RecycleOutcome:
    return RecycleOutcome(
        r.id,
        kind,
        r.purchase_id,
        r.order_id,
        product_id,
        paid_cycle,
        next_bill_on,
        next_bill_on,
        price_minor,
        gateway_id,
        r.sub_status,
        cause,
        r.failure_cause,
        r.outcome_source or _SOURCE,
        shippable,
    )


def _recurring(
    settings: Settings, book: ProfileBook, r: _Final, success: bool, counts: Counter[str]
) -> RecycleOutcome:
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
        profile = book.profile(row.recycle_profile_id, row.recycle_profile_version)
        approved_on = local_date(as_utc(row.outcome_at), settings.timezone)
        interval = row.billing_interval_days
        # The purchase row exists: it waits on this hand-off, or this hand-off failed it.
        assert row.price_minor is not None
        return _staged(
            row,
            "A",
            product_id=row.sub_product_id,
            paid_cycle=row.sub_cycle,
            next_bill_on=next_bill_date(approved_on, interval).isoformat() if interval else None,
            price_minor=price_after_approval(
                hold_recycle_price=bool(profile and profile.hold_recycle_price),
                approved_minor=row.amount_minor,
                regular_minor=row.price_minor,
            ),
            # The next scheduled rebill goes back to the gateway that declined.
            gateway_id=row.declining_gateway_id,
            shippable=bool(row.sub_shippable),
        )
    if not success and waiting:
        return _staged(row, "F", cause=FailureCause.FLEXFACTOR_FAILED.value)
    if success:
        # Money was collected but the subscription has moved on: the billing team must act.
        counts["late_approvals_unapplied"] += 1
        log.warning(
            "late approval not applied",
            extra={"handoff": row.id, "subscription_status": sub_status},
        )
        return _staged(row, "L")
    counts["outcome_no_effect"] += 1
    return _staged(row, "N")
