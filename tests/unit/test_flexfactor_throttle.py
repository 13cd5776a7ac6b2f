"""The client-side token bucket that keeps the FlexFactor client under batching.rate_limit_per_second."""

from __future__ import annotations

import threading
import time

from recycle_engine.adapters.flexfactor_http import TokenBucket


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
