"""The recovery rollup: the ladder's recoveries read from it equal the same recoveries read from every
approved retry and hand-off, on randomized books around both DST changes and month ends, for every
report day, after later changes by hand, after a rebuild, and when first built after migration 0020."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from recycle_engine.reports.ladder_queries import recoveries_stmt
from recycle_engine.reports.queries import ReportBounds, fetch
from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, Handoff, RecoveryRollup, RollupState
from tests import report_reference as direct
from tests.integration.test_report import a_handoff
from tests.integration.test_report_rollups import rows_of

TZ = ZoneInfo("America/New_York")
# Submission days around the spring and autumn DST changes, each span crossing a month end.
SPANS = [(date(2026, 2, 20), 40), (date(2026, 10, 20), 25)]
SOURCES = ["RECYCLE", "RECYCLE", "RECYCLE", "RERUN", "CASCADE"]
STATES = ["APPROVED", "APPROVED", "DECLINED", "EXPIRED", "SUBMITTED", "FAILED"]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _instant(rnd: random.Random) -> datetime:
    first, days = rnd.choice(SPANS)
    day = first + timedelta(days=rnd.randrange(days))
    midnight = datetime(day.year, day.month, day.day, tzinfo=TZ).astimezone(UTC)
    return midnight + timedelta(seconds=rnd.randrange(86_400))


def seed_book(engine: Engine, rnd: random.Random, n: int) -> list[str]:
    """n hand-offs of every source and state, outcomes up to 25 days after the send, and approved and
    declined retries; the ids of the hand-offs."""
    handoffs, attempts = [], []
    for i in range(n):
        created = _instant(rnd)
        state = rnd.choice(STATES)
        source = rnd.choice(SOURCES)
        outcome = None if state in ("SUBMITTED", "FAILED") else created + timedelta(hours=rnd.uniform(0, 600))
        handoffs.append(
            a_handoff(
                f"h{i:04d}",
                created=created,
                state=state,
                amount=rnd.randrange(100, 9000),
                source=source,
                slot=None if source != "RECYCLE" else "4-6",
                attempt=rnd.choice([4, 5, 7]) if source == "RECYCLE" else rnd.choice([None, 1]),
                currency=rnd.choice(["USD", "EUR", "JPY"]),
                outcome_at=outcome,
                dedupe_key=f"{source}:h{i:04d}",
            )
        )
        if rnd.random() < 0.4:
            attempts.append(
                {
                    "id": f"a{i:04d}",
                    "subscription_id": f"sub-a{i:04d}",
                    "decline_transaction_id": f"txn-a{i:04d}",
                    "attempt": rnd.choice([2, 3, 6]),
                    "gateway_id": "nmi-main",
                    "amount_minor": rnd.randrange(100, 9000),
                    "currency": rnd.choice(["USD", "EUR"]),
                    "result": rnd.choice(["APPROVED", "APPROVED", "DECLINED"]),
                    "occurred_at": _instant(rnd),
                }
            )
    with engine.begin() as conn:
        conn.execute(insert(Handoff), handoffs)
        conn.execute(insert(Attempt), attempts)
    return [h["id"] for h in handoffs]


def later_changes(engine: Engine, rnd: random.Random, ids: list[str]) -> None:
    """What runs, webhooks and operators do after a refresh: approvals, a late rescue, an outcome moved,
    an attempt corrected, an approval withdrawn, a hand-off deleted, a new recovery."""
    picks = rnd.sample(ids, 14)
    with engine.begin() as conn:
        for n, hid in enumerate(picks):
            row = update(Handoff).where(Handoff.id == hid)
            kind = n % 7
            if kind == 0:
                conn.execute(row.values(state="APPROVED", outcome_at=_instant(rnd)))
            elif kind == 1:
                conn.execute(row.values(state="APPROVED", late_outcome=True))
            elif kind == 2:
                conn.execute(row.values(outcome_at=_instant(rnd)))
            elif kind == 3:
                conn.execute(row.values(attempt=9))
            elif kind == 4:
                conn.execute(row.values(state="DECLINED"))
            elif kind == 5:
                conn.execute(delete(Handoff).where(Handoff.id == hid))
            else:
                conn.execute(row.values(currency="EUR", amount_minor=1234))
        handoff = a_handoff(
            f"new-{uuid.uuid4().hex[:8]}",
            created=_instant(rnd),
            state="APPROVED",
            amount=777,
            outcome_at=datetime(2026, 3, 8, 7, 30, tzinfo=UTC),  # the morning of the spring change
        )
        conn.execute(insert(Handoff).values(handoff))


def report_days() -> list[date]:
    days = []
    for first, count in SPANS:
        days += [first + timedelta(days=d) for d in range(count + 30)]
    return days


def assert_rolled_up_equals_direct(engine: Engine) -> None:
    with engine.connect() as conn:
        compared = 0
        for day in report_days():
            now = datetime(day.year, day.month, day.day, tzinfo=TZ) + timedelta(days=1, hours=6)
            bounds = ReportBounds.for_day(day, TZ, now.astimezone(UTC))
            rolled = fetch(conn, recoveries_stmt(bounds, conn.dialect.name))
            reference = direct.recoveries(conn, bounds)
            assert rows_of(rolled) == rows_of(reference), day
            compared += len(reference)
    assert compared > 0  # the book has recoveries in every method's rows to compare


def rollup_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted((tuple(r)[1:] for r in conn.execute(select(RecoveryRollup))), key=repr)


@pytest.mark.parametrize("seed", [1, 2])
def test_given_a_randomized_book_when_refreshed_then_the_ladders_recoveries_equal_the_direct_read_on_every_day(
    engine: Engine, seed: int
) -> None:
    # given
    rnd = random.Random(seed)
    ids = seed_book(engine, rnd, 160)
    refresh_rollups(engine, TZ, now=datetime(2026, 12, 20, tzinfo=UTC))
    with engine.connect() as conn:
        methods = set(conn.execute(select(RecoveryRollup.method).distinct()).scalars())
    assert methods == {"flexfactor", "rerun", "cascade"}
    # then
    assert_rolled_up_equals_direct(engine)
    # when: the book changes after the refresh
    later_changes(engine, rnd, ids)
    refresh = refresh_rollups(engine, TZ, now=datetime(2026, 12, 21, tzinfo=UTC))
    # then: only the changed submission days were recomputed, and every day still reads the same
    assert 0 < refresh.days <= 30
    assert_rolled_up_equals_direct(engine)
    # and a rebuild from scratch writes the very rows kept incrementally
    kept = rollup_rows(engine)
    refresh_rollups(engine, TZ, now=datetime(2026, 12, 22, tzinfo=UTC), rebuild=True)
    assert rollup_rows(engine) == kept


def test_given_rollups_built_before_the_recovery_rollup_when_refreshed_then_it_is_built_for_every_day(
    engine: Engine,
) -> None:
    # given: the other rollups current, the recovery rollup never built (as right after migration 0020)
    seed_book(engine, random.Random(5), 60)
    refresh_rollups(engine, TZ, now=datetime(2026, 12, 20, tzinfo=UTC))
    expected = rollup_rows(engine)
    with engine.begin() as conn:
        conn.execute(delete(RecoveryRollup))
        conn.execute(delete(RollupState).where(RollupState.name == "recoveries"))
    # when
    refresh = refresh_rollups(engine, TZ, now=datetime(2026, 12, 21, tzinfo=UTC))
    # then: nothing else was recomputed, and the recovery rollup is whole
    assert (refresh.days, refresh.rebuilt, refresh.holdout_days) == (0, False, 0)
    assert refresh.recovery_days > 60
    assert expected
    assert rollup_rows(engine) == expected
    assert_rolled_up_equals_direct(engine)
