"""The night's due attempts: which subscriptions are due (selected in keyset pages, locked when
claiming), what the ladder plans for each, and the ladder's next step after a declined attempt."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Row,
    Select,
    String,
    bindparam,
    select,
    tuple_,
)

from recycle_engine.config import Settings
from recycle_engine.domain.holdout import in_holdout
from recycle_engine.domain.ladder import PlannedAttempt, next_attempt
from recycle_engine.domain.night import Night
from recycle_engine.domain.outcomes import FailureCause, PurchaseStatus
from recycle_engine.domain.profiles import RecycleProfile
from recycle_engine.domain.states import Event, Source
from recycle_engine.services.nightly.handoff_sending import SendResult
from recycle_engine.storage.models import Decline, Subscription
from recycle_engine.storage.profile_versions import ProfileBook
from recycle_engine.storage.subscription_repo import (
    LadderStep,
    RecycleFailure,
    apply_failures,
    apply_ladder_steps,
)

__all__ = [
    "DUE_COLUMNS",
    "DuePlan",
    "book_step",
    "continue_ladders_after",
    "due_rows",
    "next_step",
    "plan_due",
]


@dataclass(frozen=True)
class DuePlan:
    """One due subscription and what tonight does with it."""

    row: Row[Any]
    planned: PlannedAttempt | None  # None: the ladder is exhausted
    gateway_id: str | None
    profile: RecycleProfile | None = None  # the schedule version the subscription follows
    holdout: bool = False  # the slot names FlexFactor, but this subscription is in the holdout group


_SUBSCRIPTION_COLUMNS = (
    Subscription.id,
    Subscription.order_id,
    Subscription.product_id,
    Subscription.billing_cycle,
    Subscription.billing_interval_days,
    Subscription.price_minor,
    Subscription.currency,
    Subscription.shippable,
    Subscription.status,
    Subscription.recycle_profile_id,
    Subscription.recycle_profile_version,
    Subscription.recycle_transaction_id,
    Subscription.recycle_declined_gateway_id,
    Subscription.recycle_original_minor,
    Subscription.recycle_last_attempt,
    Subscription.recycle_last_ran_on,
    Subscription.next_attempt,
    Subscription.next_attempt_on,
)
_DECLINE_COLUMNS = (
    Decline.declined_at,
    Decline.utc_offset_minutes,
    Decline.response_code,
    Decline.response_text,
    Decline.avs_result,
    Decline.cvv_result,
    Decline.cavv_result,
    Decline.customer_id,
    Decline.email,
    Decline.phone,
    Decline.first_name,
    Decline.last_name,
    Decline.address1,
    Decline.address2,
    Decline.city,
    Decline.state,
    Decline.zip,
    Decline.country,
    Decline.ip_address,
    Decline.card_token,
    Decline.card_bin,
    Decline.card_last4,
    Decline.card_exp_month,
    Decline.card_exp_year,
    Decline.card_brand,
    Decline.card_type,
)
DUE_COLUMNS = (*_SUBSCRIPTION_COLUMNS, *_DECLINE_COLUMNS)


def due_rows(
    conn: Connection, *, today: date, limit: int, after: tuple[date, str] | None = None, lock: bool = False
) -> list[Row[Any]]:
    """Recycling subscriptions due by `today` (local date) with no open hand-off, oldest first."""
    stmt = _due_page(limit, keyset=after is not None, lock=lock and conn.dialect.name == "postgresql")
    params: dict[str, Any] = {"due_by": today}
    if after is not None:
        params |= {"after_on": after[0], "after_id": after[1]}
    return list(conn.execute(stmt, params).all())


@functools.lru_cache(maxsize=16)
def _due_page(limit: int, *, keyset: bool, lock: bool) -> Select[Any]:
    # Built once per shape, values bound at run time: building it costs more than a page takes to
    # read once a night has a hundred pages.
    # Pick (and lock) a page of subscriptions first, then join their declines: a one-table page walks
    # the (status, next_attempt_on, id) index in order and stops at `limit`, whereas a joined page
    # lets the planner hash-join and sort every due row for each page (the whole night, once a page).
    # The locked rows carry their own columns out, so a row re-checked under the lock is read as it is
    # now; declines are never updated. The outer join keeps a subscription whose decline is missing in
    # the page (the claim books it as an error), so a short page still means the night is done.
    page = (
        select(*_SUBSCRIPTION_COLUMNS)
        .where(
            Subscription.status == PurchaseStatus.RECYCLE_BILLING.value,
            Subscription.next_attempt_on <= bindparam("due_by", type_=Date()),
            Subscription.open_handoff_id.is_(None),
        )
        .order_by(Subscription.next_attempt_on, Subscription.id)
        .limit(limit)
    )
    if keyset:
        after = tuple_(bindparam("after_on", type_=Date()), bindparam("after_id", type_=String()))
        page = page.where(tuple_(Subscription.next_attempt_on, Subscription.id) > after)
    if lock:
        page = page.with_for_update(of=Subscription, skip_locked=True)
    due = page.subquery("due")
    return (
        select(due, *_DECLINE_COLUMNS)
        .outerjoin(Decline, Decline.transaction_id == due.c.recycle_transaction_id)
        .order_by(due.c.next_attempt_on, due.c.id)
    )


def plan_due(settings: Settings, row: Row[Any], book: ProfileBook) -> DuePlan:
    if row.declined_at is None:
        # The outer join in due_rows found no decline: nothing to charge or hand off from.
        raise KeyError(f"decline {row.recycle_transaction_id} of subscription {row.id} is not stored")
    profile = book.profile(row.recycle_profile_id, row.recycle_profile_version)
    if profile is None:
        return DuePlan(row, None, None)
    planned = next_attempt(
        profile,
        last_attempt=row.recycle_last_attempt,
        last_ran_on=row.recycle_last_ran_on,
        original_minor=row.recycle_original_minor,
        currency=row.currency,
    )
    gateway = None if planned is None else (planned.gateway_id or row.recycle_declined_gateway_id)
    named = settings.gateways.get(gateway or "")
    # A holdout subscription runs a FlexFactor slot on the declining gateway, as a slot without one.
    holdout = bool(named and named.is_flexfactor and in_holdout(row.id, profile.holdout_percent))
    if holdout:
        gateway = row.recycle_declined_gateway_id
    return DuePlan(row, planned, gateway, profile, holdout)


def next_step(profile: RecycleProfile, row: Any, attempt: int, ran_on: date) -> LadderStep | RecycleFailure:
    """After a declined attempt (or a failed hand-off): the next attempt, or the end of the ladder."""
    nxt = next_attempt(
        profile,
        last_attempt=attempt,
        last_ran_on=ran_on,
        original_minor=row.recycle_original_minor,
        currency=row.currency,
    )
    if nxt is None:
        return RecycleFailure(row.id, FailureCause.ALL_ATTEMPTS_DECLINED.value)
    return LadderStep(row.id, attempt, ran_on, nxt.attempt, nxt.due_on)


def book_step(
    step: LadderStep | RecycleFailure, steps: list[LadderStep], failures: list[RecycleFailure]
) -> None:
    """File a ladder outcome where its writer will find it."""
    if isinstance(step, RecycleFailure):
        failures.append(step)
    else:
        steps.append(step)


def continue_ladders_after(
    settings: Settings, night: Night
) -> Callable[[Connection, list[SendResult]], None]:
    """A rejected RECYCLE hand-off counts as a declined attempt: continue its ladder in the same transaction."""
    today, now, run_id = night.today, night.at, night.job_run

    def continue_ladders(conn: Connection, results: list[SendResult]) -> None:
        failed = [
            r.item.purchase_id
            for r in results
            if r.failure is Event.REJECTED and r.item.source == Source.RECYCLE.value
        ]
        failed_ids = [p for p in failed if p]
        if not failed_ids:
            return
        rows = conn.execute(
            select(*DUE_COLUMNS)
            .join(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(Subscription.id.in_(failed_ids))
        )
        steps: list[LadderStep] = []
        failures: list[RecycleFailure] = []
        book = ProfileBook(conn, settings.recycle_profiles)
        for row in rows:
            profile = book.profile(row.recycle_profile_id, row.recycle_profile_version)
            if profile is None:
                failures.append(RecycleFailure(row.id, FailureCause.NO_PROFILE.value))
                continue
            step = next_step(profile, row, row.recycle_last_attempt, today)
            book_step(step, steps, failures)
        apply_ladder_steps(conn, steps, now=now, run_id=run_id)
        apply_failures(conn, failures, now=now, run_id=run_id, reason="RECYCLE_ENDED", source="SUBMIT")

    return continue_ladders
