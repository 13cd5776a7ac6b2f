"""Exports: every FlexFactor hand-off (SPEC section 6) and the change outbox for the CRM, as CSV or JSON lines.

`export changes` reads the append-only `changes` table. Its `id` is a unique sequence number that only
grows, so a reader may keep the highest id it has applied as its cursor. On PostgreSQL a transaction can
commit after a later id became visible, so read again with `--since` a few minutes before the previous
run and skip the ids already applied: rows never change, so that overlap is exactly safe.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

from recycle_engine.domain.profiles import attempt_label
from recycle_engine.domain.states import Source
from recycle_engine.money import Money
from recycle_engine.storage import export_queries

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "CHANGE_COLUMNS",
    "SUBMISSION_COLUMNS",
    "ExportFormat",
    "change_rows",
    "export_changes",
    "export_submissions",
    "submission_rows",
    "write_rows",
]

log = logging.getLogger(__name__)

Value = str | int | None
Row = dict[str, Value]

SUBMISSION_COLUMNS: Final = (
    "submission_id",
    "source",
    "order_id",
    "purchase_id",
    "transaction_id",
    "gateway_id",
    "slot",
    "attempt",
    "amount",
    "currency",
    "submitted_at",
    "expires_at",
    "flexfactor_order_id",
    "state",
    "outcome_at",
    "outcome_source",
    "last_error",  # why it failed or is not sent yet (FlexFactor's answer or ours; never card data)
)
CHANGE_COLUMNS: Final = (
    "id",
    "entity",
    "entity_id",
    "field",
    "old_value",
    "new_value",
    "reason",
    "source",
    "handoff_id",
    "occurred_at",
)
_BATCH: Final = 1000  # rows fetched per round trip (a server-side cursor on PostgreSQL)


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def _time(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset, e.g. 2026-06-12T02:00:00+00:00."""
    return None if value is None else value.astimezone(UTC).isoformat()


def _amount(minor: int, currency: str, submission_id: str) -> str | None:
    try:
        return str(Money(minor, currency).to_decimal())
    except ValueError:
        # One unreadable row must not stop the export; an empty amount is visible, a guess would not be.
        log.warning("export: unknown currency", extra={"handoff": submission_id, "currency": currency})
        return None


def submission_rows(engine: Engine) -> Iterator[Row]:
    """Every hand-off in creation order (created_at, id), with SPEC section 6 columns and values."""
    for r in export_queries.handoffs_in_creation_order(engine, batch=_BATCH):
        yield {
            "submission_id": r.id,
            "source": r.source,
            "order_id": r.order_id,
            "purchase_id": r.purchase_id,
            "transaction_id": r.transaction_id,
            "gateway_id": r.gateway_id,
            # Only recycle hand-offs sit on a ladder slot.
            "slot": r.slot if r.source == Source.RECYCLE.value else None,
            "attempt": attempt_label(r.attempt) if r.attempt is not None else None,
            "amount": _amount(r.amount_minor, r.currency, r.id),
            "currency": r.currency,
            "submitted_at": _time(r.submitted_at),
            "expires_at": _time(r.expires_at),
            "flexfactor_order_id": r.flexfactor_order_id,
            "state": r.state,
            "outcome_at": _time(r.outcome_at),
            "outcome_source": r.outcome_source,
            "last_error": r.last_error,
        }


def change_rows(engine: Engine, *, since: datetime, after_id: int | None = None) -> Iterator[Row]:
    """Change rows with occurred_at at or after `since` (and id above `after_id`), in id order."""
    for r in export_queries.changes_since(engine, since=since, after_id=after_id, batch=_BATCH):
        values: Row = dict(r._mapping)
        values["occurred_at"] = _time(r.occurred_at)
        yield values


def write_rows(rows: Iterable[Row], columns: Sequence[str], out: TextIO, fmt: ExportFormat) -> int:
    """Write rows as CSV (header row, empty for null) or JSON lines (keys in column order); the row count."""
    count = 0
    if fmt is ExportFormat.CSV:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
            count += 1
        return count
    for row in rows:
        out.write(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n")
        count += 1
    return count


def export_submissions(engine: Engine, out: TextIO, fmt: ExportFormat = ExportFormat.CSV) -> int:
    """`export submissions`: every hand-off to `out`; returns how many."""
    return write_rows(submission_rows(engine), SUBMISSION_COLUMNS, out, fmt)


def export_changes(
    engine: Engine,
    out: TextIO,
    *,
    since: datetime,
    after_id: int | None = None,
    fmt: ExportFormat = ExportFormat.CSV,
) -> int:
    """`export changes --since T`: the change outbox to `out`; returns how many rows."""
    return write_rows(change_rows(engine, since=since, after_id=after_id), CHANGE_COLUMNS, out, fmt)
