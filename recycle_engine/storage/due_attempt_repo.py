"""The night's due attempts as rows: recycling subscriptions due by a day with their declines, in
keyset pages (locked when claiming), and the same rows for named subscriptions."""

from __future__ import annotations

import functools
from collections.abc import Sequence
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

from recycle_engine.domain.outcomes import PurchaseStatus
from recycle_engine.storage.models import Decline, Subscription

__all__ = ["DUE_COLUMNS", "due_rows", "due_rows_of_subscriptions"]


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


def due_rows_of_subscriptions(conn: Connection, subscription_ids: Sequence[str]) -> list[Row[Any]]:
    """DUE_COLUMNS of these subscriptions, joined to their declines (one without its decline is left out)."""
    return list(
        conn.execute(
            select(*DUE_COLUMNS)
            .join(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(Subscription.id.in_(subscription_ids))
        )
    )
