"""Row-by-row purchase writes (subscription_repo) and the change rows the CRM outbox carries for them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine, select, update

from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Change, Subscription
from recycle_engine.storage.subscription_repo import Approval, apply_approvals
from tests.factories import a_decline, insert_recycling

NOW = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def a_purchase(engine: Engine, n: int, *, status: str = "RECYCLE_BILLING", cause: str | None = None) -> str:
    decline = a_decline(transaction_id=f"txn-{n}", order_id=f"ord-{n}", purchase_id=f"sub-{n}")
    insert_recycling(engine, decline)
    with engine.begin() as conn:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == f"sub-{n}")
            .values(status=status, failure_cause=cause)
        )
    return f"sub-{n}"


def approve(engine: Engine, *subscription_ids: str) -> None:
    with engine.begin() as conn:
        apply_approvals(
            conn,
            [
                Approval(
                    subscription_id=sub,
                    order_id=sub.replace("sub-", "ord-"),
                    product_id="p1",
                    billing_cycle=3,
                    next_bill_on=date(2026, 7, 12),
                    price_minor=4999,
                    gateway_id="nmi",
                    shippable=False,
                )
                for sub in subscription_ids
            ],
            now=NOW,
            run_id="run-1",
            reason="RECYCLE_APPROVED",
            source="SUBMIT",
        )


def cause_changes(engine: Engine) -> list[tuple[str, str | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Change.entity_id, Change.old_value, Change.new_value)
            .where(Change.entity == "SUBSCRIPTION", Change.field == "failure_cause")
            .order_by(Change.id)
        )
        return [(sub, old, new) for sub, old, new in rows]


def test_given_a_failed_purchase_and_a_recycling_one_when_both_are_approved_then_only_the_failed_cause_is_cleared(
    engine: Engine,
) -> None:
    # given: one purchase failed (all attempts declined), one still recycling without a cause
    failed = a_purchase(engine, 1, status="RECYCLE_FAILED", cause="ALL_ATTEMPTS_DECLINED")
    recycling = a_purchase(engine, 2)
    # when: an approval of each is applied row by row
    approve(engine, failed, recycling)
    # then: the CRM outbox clears the failed purchase's cause, and says nothing of a cause never set
    assert cause_changes(engine) == [(failed, "ALL_ATTEMPTS_DECLINED", None)]
    with engine.connect() as conn:
        causes = conn.execute(select(Subscription.id, Subscription.failure_cause).order_by(Subscription.id))
        assert list(causes) == [(failed, None), (recycling, None)]


def test_given_a_cleared_cause_when_the_purchase_is_approved_again_then_no_second_clearing_is_written(
    engine: Engine,
) -> None:
    # given: a hard-declined purchase revived by an approval
    revived = a_purchase(engine, 1, status="RECYCLE_FAILED", cause="HARD_DECLINE")
    approve(engine, revived)
    # when: another approval of it is applied
    approve(engine, revived)
    # then: the cause was cleared once
    assert cause_changes(engine) == [(revived, "HARD_DECLINE", None)]
