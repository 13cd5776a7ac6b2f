"""A holdout assignment's outcome: recovered at its last approval, lost from its assignment, or open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recycle_engine.domain.holdout_outcome import LOST, RECOVERED, Settled, settle

ASSIGNED = datetime(2026, 6, 10, 6, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("flexfactor", "retry", "recycling", "expected"),
    [
        # approved by FlexFactor: final then, whatever the ladder says now
        ((ASSIGNED + DAY, 4000), (None, None), False, Settled(RECOVERED, ASSIGNED + DAY, 4000)),
        ((ASSIGNED + DAY, 4000), (None, None), True, Settled(RECOVERED, ASSIGNED + DAY, 4000)),
        # by a retry only
        ((None, None), (ASSIGNED + 3 * DAY, 3500), False, Settled(RECOVERED, ASSIGNED + 3 * DAY, 3500)),
        # both: final at the later approval, FlexFactor's amount counts
        (
            (ASSIGNED + DAY, 4000),
            (ASSIGNED + 5 * DAY, 3500),
            False,
            Settled(RECOVERED, ASSIGNED + 5 * DAY, 4000),
        ),
        (
            (ASSIGNED + 6 * DAY, 4000),
            (ASSIGNED + 2 * DAY, 3500),
            False,
            Settled(RECOVERED, ASSIGNED + 6 * DAY, 4000),
        ),
        # never approved: open while on the ladder, lost from the assignment on when off it
        ((None, None), (None, None), True, Settled(None, None, None)),
        ((None, None), (None, None), False, Settled(LOST, ASSIGNED, 0)),
    ],
)
def test_given_approvals_and_the_ladder_when_settled_then_the_outcome_and_its_instant_follow(
    flexfactor: tuple[datetime | None, int | None],
    retry: tuple[datetime | None, int | None],
    recycling: bool,
    expected: Settled,
) -> None:
    # given / when
    settled = settle(ASSIGNED, flexfactor, retry, recycling=recycling)
    # then
    assert settled == expected
