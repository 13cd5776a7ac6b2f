"""Hand-off rows as sending sees them: windows fixed at first send, dropped leases, gateways waiting."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, select, update

from recycle_engine.domain.states import State
from recycle_engine.storage.models import Handoff

__all__ = ["drop_send_leases", "gateways_with_pending", "write_first_sends"]


def write_first_sends(conn: Connection, rows: Sequence[dict[str, object]]) -> None:
    """Write each hand-off's body, window end and first send ({"b_id", "b_body", "b_expires",
    "b_sent"}) in one executemany."""
    conn.execute(
        update(Handoff)
        .where(Handoff.id == bindparam("b_id"))
        .values(
            request_body=bindparam("b_body"),
            expires_at=bindparam("b_expires"),
            first_sent_at=bindparam("b_sent"),
        )
        .execution_options(synchronize_session=False),
        rows,
    )


def gateways_with_pending(conn: Connection) -> set[str]:
    """The gateways that have at least one PENDING hand-off."""
    rows = conn.execute(
        select(Handoff.gateway_id).where(Handoff.state == State.PENDING.value).group_by(Handoff.gateway_id)
    )
    return {r[0] for r in rows}


def drop_send_leases(conn: Connection, ids: Sequence[str]) -> None:
    """Release the sending lease of these hand-offs."""
    conn.execute(update(Handoff).where(Handoff.id.in_(ids)).values(claimed_until=None))
