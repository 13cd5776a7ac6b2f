"""FlexFactor's retry window counted from a hand-off's first send, not from when it was queued."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from recycle_engine.adapters.flexfactor_payload import with_expiry
from recycle_engine.storage.handoff_repo import SendItem
from recycle_engine.storage.handoff_send_repo import write_first_sends

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["fix_windows"]


def fix_windows(conn: Connection, items: Sequence[SendItem], *, sent_at: datetime) -> list[SendItem]:
    """Give the leased hand-offs never sent before their window from `sent_at` (the send clock's time,
    not the run's logical time nor the time they were queued): `expiryDateUtc` in the body and
    `expires_at` move by the delay since creation, and `first_sent_at` is written, in the caller's
    transaction, committed before any HTTP call. A hand-off sent before keeps its body: a resend is
    byte-identical under the same idempotency key."""
    out: list[SendItem] = []
    rows: list[dict[str, object]] = []
    sent_at = sent_at.replace(microsecond=0)
    for item in items:
        if item.first_sent_at is not None:
            out.append(item)
            continue
        expires_at = item.expires_at
        body = item.request_body
        if expires_at is not None and item.created_at is not None:
            expires_at = sent_at + (expires_at - item.created_at)
            body = with_expiry(body, expires_at)
        rows.append({"b_id": item.id, "b_body": body, "b_expires": expires_at, "b_sent": sent_at})
        out.append(replace(item, request_body=body, expires_at=expires_at, first_sent_at=sent_at))
    if rows:
        write_first_sends(conn, rows)
    return out
