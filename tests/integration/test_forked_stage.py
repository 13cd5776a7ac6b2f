"""A stage run ahead in a forked child: items in order, a passed exception raised whole, any other told
by type and place only, a child that dies named."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from recycle_engine.errors import CrmRefused, RecycleEngineError
from recycle_engine.services.forked_stage import can_fork, produced_in_child

pytestmark = pytest.mark.skipif(not can_fork(), reason="needs fork from a single-threaded process")


def run(produce: Callable[[], Iterator[int]]) -> list[int]:
    return list(produced_in_child(produce, name="test stage", source="source.csv", passed=(CrmRefused,)))


def test_given_a_stage_when_run_in_a_child_then_its_items_arrive_in_order_from_another_process() -> None:
    def produce() -> Iterator[int]:
        for n in range(5):
            yield n * 10_000 + os.getpid() % 10_000

    # when
    items = run(produce)

    # then
    assert [n // 10_000 for n in items] == [0, 1, 2, 3, 4]
    assert {n % 10_000 for n in items} != {os.getpid() % 10_000}


def test_given_a_passed_error_in_the_child_when_run_then_it_is_raised_here_whole() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise CrmRefused("/order/query/", "Order service is down")

    # when
    with pytest.raises(CrmRefused) as caught:
        run(produce)

    # then
    assert (caught.value.endpoint, caught.value.message) == ("/order/query/", "Order service is down")


def test_given_another_error_in_the_child_when_run_then_only_its_type_and_place_are_told() -> None:
    def produce() -> Iterator[int]:
        raise ValueError("4111111111111111 is not a number we keep")
        yield 1

    # when
    with pytest.raises(RecycleEngineError) as caught:
        run(produce)

    # then
    assert str(caught.value).startswith(
        "source.csv: the test stage failed: ValueError at test_forked_stage.py:"
    )
    assert "4111" not in str(caught.value)


def test_given_a_child_that_dies_when_run_then_the_source_and_its_exit_code_are_named() -> None:
    def produce() -> Iterator[int]:
        yield 1
        os._exit(3)

    # when
    with pytest.raises(RecycleEngineError) as caught:
        run(produce)

    # then
    assert "source.csv: the test stage stopped unexpectedly (exit code 3)" in str(caught.value)
