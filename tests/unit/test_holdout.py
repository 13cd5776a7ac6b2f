"""Holdout assignment: stable per subscription id, close to the configured share, nested as the share grows."""

from __future__ import annotations

from decimal import Decimal

import pytest

from recycle_engine.domain.holdout import BUCKETS, Arm, arm_for, holdout_bucket, in_holdout

IDS = [f"sub-{n}" for n in range(10_000)]


@pytest.mark.parametrize("percent", [Decimal(10), Decimal(50)])
def test_given_10000_ids_when_assigned_then_the_holdout_share_is_within_one_and_a_half_points(
    percent: Decimal,
) -> None:
    # given
    ids = IDS
    # when
    held = sum(in_holdout(i, percent) for i in ids)
    # then
    share = 100 * held / len(ids)
    assert abs(share - float(percent)) <= 1.5


def test_given_the_same_ids_when_assigned_again_then_every_answer_is_the_same() -> None:
    # given
    first = [in_holdout(i, Decimal(10)) for i in IDS]
    # when
    second = [in_holdout(i, Decimal(10)) for i in IDS]
    # then
    assert first == second
    # and the bucket is a pure function of the id (no per-run seed): a known id has a known bucket
    assert holdout_bucket("sub-1") == holdout_bucket("sub-1")
    assert 0 <= holdout_bucket("sub-1") < BUCKETS


def test_given_a_larger_share_then_everyone_held_out_at_the_smaller_share_stays_held_out() -> None:
    # given
    at_10 = {i for i in IDS if in_holdout(i, Decimal(10))}
    # when
    at_20 = {i for i in IDS if in_holdout(i, Decimal(20))}
    # then
    assert at_10 <= at_20


def test_given_zero_or_a_hundred_percent_then_nobody_or_everybody_is_held_out() -> None:
    assert not any(in_holdout(i, 0) for i in IDS)
    assert all(in_holdout(i, 100) for i in IDS)


def test_given_a_share_outside_0_to_100_then_it_is_refused() -> None:
    with pytest.raises(ValueError, match="0..100"):
        in_holdout("sub-1", Decimal("100.5"))


def test_given_an_id_then_its_arm_follows_in_holdout() -> None:
    held = next(i for i in IDS if in_holdout(i, 10))
    kept = next(i for i in IDS if not in_holdout(i, 10))
    assert (arm_for(held, 10), arm_for(kept, 10)) == (Arm.HOLDOUT, Arm.FLEXFACTOR)
