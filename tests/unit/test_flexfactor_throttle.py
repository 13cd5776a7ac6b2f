"""The client-side token bucket that keeps the FlexFactor client under batching.rate_limit_per_second."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from recycle_engine.adapters.flexfactor_http import MAX_RETRY_AFTER_S, TokenBucket, retry_after_s


class FakeTime:
    """A monotonic clock that only moves when the bucket sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_given_a_full_bucket_when_calls_exceed_the_burst_then_each_extra_call_waits_its_share() -> None:
    # given
    fake = FakeTime()
    bucket = TokenBucket(10.0, burst=2, monotonic=fake.monotonic, sleep=fake.sleep)

    # when
    waits = [bucket.acquire() for _ in range(4)]

    # then: two from the burst, then one token every 0.1 s, reserved in order
    assert waits[:2] == [0.0, 0.0]
    assert [round(w, 6) for w in waits[2:]] == [0.1, 0.2]
    assert fake.slept == waits[2:]


def test_given_time_has_passed_when_acquiring_then_the_bucket_has_refilled_up_to_its_burst() -> None:
    # given
    fake = FakeTime()
    bucket = TokenBucket(10.0, burst=2, monotonic=fake.monotonic, sleep=fake.sleep)
    bucket.acquire()
    bucket.acquire()

    # when
    fake.now += 60  # a long pause refills no more than the burst
    waits = [bucket.acquire() for _ in range(3)]

    # then
    assert waits[:2] == [0.0, 0.0]
    assert round(waits[2], 6) == 0.1


def test_given_no_rate_limit_when_acquiring_then_nothing_waits() -> None:
    # given
    fake = FakeTime()
    bucket = TokenBucket(0, monotonic=fake.monotonic, sleep=fake.sleep)

    # when
    waits = [bucket.acquire() for _ in range(1000)]

    # then
    assert set(waits) == {0.0}
    assert fake.slept == []


def test_given_many_threads_when_they_share_one_bucket_then_the_rate_holds() -> None:
    # given
    bucket = TokenBucket(200.0, burst=1)
    barrier = threading.Barrier(40)

    def worker() -> None:
        barrier.wait()
        bucket.acquire()

    threads = [threading.Thread(target=worker) for _ in range(40)]

    # when
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    # then: 39 calls beyond the burst at 200 a second take at least 0.195 s
    assert elapsed >= 0.19


def test_given_a_push_back_when_acquiring_then_callers_wait_out_the_pause_and_go_at_half_the_rate() -> None:
    # given
    fake = FakeTime()
    bucket = TokenBucket(10.0, burst=2, monotonic=fake.monotonic, sleep=fake.sleep)

    # when
    bucket.back_off(3.0)
    bucket.back_off(3.0)  # a second caller meeting the same burst: one halving per pause
    waits = [bucket.acquire() for _ in range(3)]

    # then: one probe when the pause ends, then one call every 1 / 5 s
    assert bucket.rate == 5.0
    assert [round(w, 6) for w in waits] == [3.0, 3.2, 3.4]


def test_given_pushes_back_that_never_end_when_halving_then_the_rate_stops_at_a_32nd() -> None:
    # given
    fake = FakeTime()
    bucket = TokenBucket(64.0, monotonic=fake.monotonic, sleep=fake.sleep)

    # when
    for _ in range(20):
        bucket.back_off(1.0)
        fake.now += 1.0

    # then
    assert bucket.rate == 2.0


def test_given_a_slowed_bucket_when_calls_succeed_then_the_rate_climbs_back_gradually_to_the_configured() -> (
    None
):
    # given
    fake = FakeTime()
    bucket = TokenBucket(128.0, monotonic=fake.monotonic, sleep=fake.sleep)
    bucket.back_off(0.0)

    # when
    bucket.eased()
    after_one = bucket.rate
    for _ in range(200):
        bucket.eased()

    # then
    assert after_one == 65.0
    assert bucket.rate == 128.0


NOW = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "86400"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        # An HTTP date counts from the answer's own Date, whatever our clock says ...
        (
            {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"},
            30.0,
        ),
        # ... and from our clock without one
        ({"Retry-After": "Fri, 12 Jun 2026 06:00:45 GMT"}, 45.0),
        ({"Retry-After": "Fri, 12 Jun 2026 05:00:00 GMT"}, 0.0),
    ],
)
def test_given_a_429_retry_after_when_read_then_seconds_or_an_http_date_are_understood_and_capped(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_s(headers, NOW) == expected
