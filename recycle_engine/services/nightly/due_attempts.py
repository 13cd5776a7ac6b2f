"""The night's due attempts: which subscriptions are due (selected in keyset pages, locked when
claiming), what the ladder plans for each, and the ladder's next step after a declined attempt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from recycle_engine.config import Settings
from recycle_engine.domain.holdout import in_holdout
from recycle_engine.domain.ladder import PlannedAttempt, next_attempt
from recycle_engine.domain.night import Night
from recycle_engine.domain.outcomes import FailureCause
from recycle_engine.domain.profiles import RecycleProfile
from recycle_engine.domain.states import Event, Source
from recycle_engine.services.nightly.handoff_sending import SendResult
from recycle_engine.storage.due_attempt_repo import DUE_COLUMNS, due_rows, due_rows_of_subscriptions
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

if TYPE_CHECKING:
    from sqlalchemy import Connection, Row


@dataclass(frozen=True)
class DuePlan:
    """One due subscription and what tonight does with it."""

    row: Row[Any]
    planned: PlannedAttempt | None  # None: the ladder is exhausted
    gateway_id: str | None
    profile: RecycleProfile | None = None  # the schedule version the subscription follows
    holdout: bool = False  # the slot names FlexFactor, but this subscription is in the holdout group


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
        rows = due_rows_of_subscriptions(conn, failed_ids)
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
