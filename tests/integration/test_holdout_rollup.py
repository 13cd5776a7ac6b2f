"""The holdout rollup: the report's holdout facts read from it equal the same facts read assignment by
assignment, on randomized books, for every report day, after later changes and after a rebuild."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from recycle_engine.reports.lift_queries import lift_facts_direct_stmt, lift_facts_stmt
from recycle_engine.reports.queries import ReportBounds, fetch
from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, Handoff, HoldoutAssignment, HoldoutRollup, Subscription
from tests.factories import insert_recycling_many
from tests.integration.test_report import a_handoff

TZ = ZoneInfo("America/New_York")
FIRST_DAY = date(2026, 5, 1)
DAYS = 20


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _at(rnd: random.Random, day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=TZ).astimezone(UTC) + timedelta(
        seconds=rnd.randrange(86_400)
    )


def seed_book(engine: Engine, rnd: random.Random, n: int) -> list[tuple[str, str]]:
    """n recycled declines with assignments over DAYS days, each given a random fate."""
    ids = insert_recycling_many(engine, n, due_on=FIRST_DAY, prefix=f"r{rnd.randrange(10**6)}")
    pairs = [(s, s.replace("sub", "txn")) for s in ids]
    handoffs: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for i, (sub, txn) in enumerate(pairs):
            assigned = _at(rnd, FIRST_DAY + timedelta(days=rnd.randrange(DAYS)))
            arm = rnd.choice(["FLEXFACTOR", "HOLDOUT"])
            currency = rnd.choice(["USD", "EUR"])
            conn.execute(
                insert(HoldoutAssignment).values(
                    subscription_id=sub,
                    decline_transaction_id=txn,
                    billing_cycle=3,
                    profile_id="default",
                    arm=arm,
                    attempt=4,
                    slot="4-6",
                    gateway_id="ff",
                    amount_minor=rnd.randrange(500, 9000),
                    currency=currency,
                    run_id="submit-1",
                    assigned_at=assigned,
                )
            )
            fate = rnd.choice(["ff", "retry", "both", "lost", "newer", "open", "ff-open", "gone"])
            if fate in ("ff", "both", "ff-open"):
                approved = fate != "ff-open"
                outcome = assigned + timedelta(hours=rnd.randrange(1, 24 * DAYS)) if approved else None
                handoffs.append(
                    a_handoff(
                        f"{sub}-h",
                        created=assigned,
                        state="APPROVED" if approved else "SUBMITTED",
                        amount=rnd.randrange(500, 9000),
                        purchase_id=sub,
                        transaction_id=txn,
                        currency=currency,
                        outcome_at=outcome,
                    )
                )
            if fate in ("retry", "both"):
                for k in range(rnd.choice([1, 1, 2])):
                    attempts.append(
                        {
                            "id": f"{sub}-a{k}",
                            "subscription_id": sub,
                            "decline_transaction_id": txn,
                            "attempt": 5 + k,
                            "gateway_id": "nmi",
                            "amount_minor": rnd.randrange(500, 9000),
                            "currency": currency,
                            "result": "APPROVED",
                            "occurred_at": assigned + timedelta(hours=rnd.randrange(-2, 24 * DAYS)),
                        }
                    )
            status = {"ff": "ACTIVE", "retry": "ACTIVE", "both": "ACTIVE", "lost": "RECYCLE_FAILED"}
            if fate in status:
                conn.execute(update(Subscription).where(Subscription.id == sub).values(status=status[fate]))
            elif fate == "newer":
                conn.execute(
                    update(Subscription)
                    .where(Subscription.id == sub)
                    .values(recycle_transaction_id=f"{txn}-2")
                )
            elif fate == "gone":
                conn.execute(delete(Subscription).where(Subscription.id == sub))
            del i
        if handoffs:
            conn.execute(insert(Handoff), handoffs)
        if attempts:
            conn.execute(insert(Attempt), attempts)
    return pairs


def later_changes(engine: Engine, rnd: random.Random, pairs: list[tuple[str, str]]) -> None:
    """What happens after a refresh: late rescues, a subscription back on its ladder, failures, an
    approval withdrawn by hand, an assignment deleted."""
    picks = rnd.sample(pairs, 12)
    with engine.begin() as conn:
        for n, (sub, txn) in enumerate(picks):
            kind = n % 6
            if kind == 0:  # a late rescue by FlexFactor
                conn.execute(
                    insert(Handoff).values(
                        a_handoff(
                            f"{sub}-late",
                            created=datetime(2026, 5, 3, tzinfo=UTC),
                            state="APPROVED",
                            amount=4321,
                            purchase_id=sub,
                            transaction_id=txn,
                            outcome_at=datetime(2026, 5, 18, 15, tzinfo=UTC),
                        )
                    )
                )
            elif kind == 1:  # back on that decline's ladder
                conn.execute(
                    update(Subscription)
                    .where(Subscription.id == sub)
                    .values(status="RECYCLE_BILLING", recycle_transaction_id=txn)
                )
            elif kind == 2:  # fails out
                conn.execute(
                    update(Subscription).where(Subscription.id == sub).values(status="RECYCLE_FAILED")
                )
            elif kind == 3:  # approvals withdrawn
                conn.execute(delete(Attempt).where(Attempt.subscription_id == sub))
                conn.execute(update(Handoff).where(Handoff.purchase_id == sub).values(state="DECLINED"))
            elif kind == 4:  # an approval moved to another day
                conn.execute(
                    update(Handoff)
                    .where(Handoff.purchase_id == sub)
                    .values(outcome_at=datetime(2026, 5, 25, 1, tzinfo=UTC))
                )
            else:
                conn.execute(delete(HoldoutAssignment).where(HoldoutAssignment.subscription_id == sub))


def assert_rolled_up_equals_direct(engine: Engine, rnd: random.Random) -> None:
    days = [FIRST_DAY + timedelta(days=d) for d in range(-1, DAYS + 26)]
    with engine.connect() as conn:
        for day in days:
            end_of_day = datetime(day.year, day.month, day.day, tzinfo=TZ) + timedelta(days=1)
            # the day's report the morning after, and one made while the day lasts
            for now in (
                end_of_day + timedelta(hours=6),
                end_of_day - timedelta(seconds=rnd.randrange(86_400)),
            ):
                bounds = ReportBounds.for_day(day, TZ, now.astimezone(UTC))
                rolled = fetch(conn, lift_facts_stmt(bounds)).to_dict("records")
                direct = fetch(conn, lift_facts_direct_stmt(bounds)).to_dict("records")
                assert rolled == direct, (day, now)


def rollup_rows(engine: Engine) -> list[tuple[Any, ...]]:
    r = HoldoutRollup
    columns = (r.day, r.arm, r.currency, r.outcome, r.outcome_day, r.assignments, r.assigned_minor)
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(*columns, r.recovered_minor)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_given_a_randomized_book_when_the_rollups_are_refreshed_then_the_holdout_facts_equal_the_direct_read_on_every_day(
    engine: Engine, seed: int
) -> None:
    # given
    rnd = random.Random(seed)
    pairs = seed_book(engine, rnd, 90)
    refresh_rollups(engine, TZ, now=datetime(2026, 6, 20, tzinfo=UTC))
    # then: the first refresh settled the book and the report reads the rollup
    with engine.connect() as conn:
        assert conn.execute(select(HoldoutRollup.id)).first() is not None
    assert_rolled_up_equals_direct(engine, rnd)
    # when: the book changes after the refresh
    later_changes(engine, rnd, pairs)
    refresh = refresh_rollups(engine, TZ, now=datetime(2026, 6, 21, tzinfo=UTC))
    # then: only the days of the declines noted were recomputed, and every day still reads the same
    assert 0 < refresh.holdout_days <= 12
    assert_rolled_up_equals_direct(engine, rnd)
    # and a rebuild from scratch writes the very rows kept incrementally
    kept = rollup_rows(engine)
    refresh_rollups(engine, TZ, now=datetime(2026, 6, 22, tzinfo=UTC), rebuild=True)
    assert rollup_rows(engine) == kept


def test_given_a_settled_assignment_when_nothing_it_reads_changes_then_no_refresh_reads_it_again(
    engine: Engine,
) -> None:
    # given: a recovered and a lost assignment, settled by a refresh
    rnd = random.Random(9)
    pairs = seed_book(engine, rnd, 20)
    refresh_rollups(engine, TZ, now=datetime(2026, 6, 20, tzinfo=UTC))
    # when: other subscriptions bill, fail and retry with declines
    with engine.begin() as conn:
        conn.execute(
            update(Subscription).where(Subscription.id.not_in([s for s, _ in pairs])).values(status="ACTIVE")
        )
        sub, txn = pairs[0]
        conn.execute(
            insert(Attempt).values(
                id="declined-again",
                subscription_id=sub,
                decline_transaction_id=txn,
                attempt=9,
                gateway_id="nmi",
                amount_minor=100,
                currency="USD",
                result="DECLINED",
                occurred_at=datetime(2026, 6, 1, tzinfo=UTC),
            )
        )
    refresh = refresh_rollups(engine, TZ, now=datetime(2026, 6, 21, tzinfo=UTC))
    # then
    assert refresh.holdout_days == 0
