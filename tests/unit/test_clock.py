"""Clocks: a logical run sees its own night, moving on with real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recycle_engine.adapters.clock import FixedClock, LogicalClock, SystemClock, send_clock


def test_given_a_logical_night_in_the_past_then_the_clock_reads_that_night_and_moves_on() -> None:
    # given
    night = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
    # when
    clock = LogicalClock(night)
    first, second = clock.now(), clock.now()
    # then
    assert timedelta(0) <= first - night < timedelta(seconds=5)
    assert second >= first
    assert first.tzinfo is not None


def test_given_naive_times_then_clocks_refuse_them() -> None:
    with pytest.raises(ValueError, match="aware"):
        LogicalClock(datetime(2026, 6, 10, 6, 0))  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        FixedClock(datetime(2026, 6, 10, 6, 0))  # noqa: DTZ001


def test_given_a_run_at_a_logical_time_then_the_send_clock_is_the_real_one_unless_told_to_stand_at_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: a run replaying a night long past (--at)
    at = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)
    monkeypatch.delenv("RECYCLE_ENGINE_SEND_CLOCK", raising=False)
    # then: FlexFactor's window counts from the real send time, not from --at
    assert isinstance(send_clock(at), SystemClock)
    # and: a sandbox standing at --at asks for it explicitly
    monkeypatch.setenv("RECYCLE_ENGINE_SEND_CLOCK", "at")
    assert send_clock(at).now() == at
