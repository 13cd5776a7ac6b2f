"""Holdout assignments: which group a recycled decline joined when it first reached a FlexFactor slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from recycle_engine.domain.holdout import Arm
from recycle_engine.domain.ladder import PlannedAttempt
from recycle_engine.storage.models import HoldoutAssignment
from recycle_engine.storage.upsert import insert_ignore

__all__ = ["assignment_row", "record_assignments"]


def assignment_row(
    row: Any, planned: PlannedAttempt, arm: Arm, *, run_id: str, now: datetime
) -> dict[str, Any]:
    """The assignment of a due subscription `row` (a submit row) whose attempt `planned` names FlexFactor."""
    return {
        "subscription_id": row.id,
        "decline_transaction_id": row.recycle_transaction_id,
        "billing_cycle": row.billing_cycle,
        "profile_id": row.recycle_profile_id,
        "arm": arm.value,
        "attempt": planned.attempt,
        "slot": planned.slot.value,
        "gateway_id": planned.gateway_id,
        "amount_minor": planned.amount_minor,
        "currency": row.currency,
        "run_id": run_id,
        "assigned_at": now,
    }


def record_assignments(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert the rows not yet recorded: the first FlexFactor slot a recycled decline reaches decides."""
    return insert_ignore(conn, HoldoutAssignment, rows, ["subscription_id", "decline_transaction_id"])
