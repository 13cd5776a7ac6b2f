"""The submit benchmark's night at a tiny size: every due FlexFactor attempt is accepted by the sandbox.

A guard on correctness, never on timing: the benchmark once measured a night in which every hand-off
came back 400 (its sandbox stands at the book's night while the window counted from the real clock),
and then crashed parsing the rejection lines. Its output parsing is checked here too, on the lines
`run submit` prints when hand-offs fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bench.book import BookShape, build_book
from bench.submit_benchmark import SubmitOutput, SubmitRun, parse_submit_output, sandbox, submit_night
from tests.conftest import PG_ADMIN_DSN, PG_HOST_URL

TINY = BookShape(subscriptions=2_000, due=120, seed=3)


@pytest.fixture
def tiny_book_url(pg_template: str) -> Iterator[str]:
    import psycopg

    name = f"re_bench_guard_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield f"{PG_HOST_URL}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_given_the_benchmark_book_when_its_night_runs_then_every_flexfactor_attempt_is_accepted(
    tiny_book_url: str,
) -> None:
    book = build_book(tiny_book_url, TINY, migrate=False)
    assert book.due_flexfactor > 0

    with sandbox(0) as box:
        run = submit_night(tiny_book_url, box, batch_size=50, concurrency=8)

    assert run.problems() == []
    assert run.handoffs == book.due_flexfactor
    assert run.counts.get("failed", 0) == 0


def test_given_rejection_lines_after_the_counts_when_parsed_then_they_are_counted_and_reported() -> None:
    text = (
        "submit 6f1c: accepted 0, charged 401, failed 599, not_sent 0, sent 599, unknown 0\n"
        "failed 599: 400 ExpiryDateUtc: ExpiryDateUtc must be at most 21 days ahead\n"
        "not sent 3: connection refused\n"
        "... 12 more with 2 other reasons\n"
        "a line nobody expected\n"
    )

    output = parse_submit_output(text)
    run = SubmitRun(1.0, 1.0, 1.0, 1.0, output, 0.0)

    assert output.run_id == "6f1c"
    assert output.counts["failed"] == 599
    assert output.counts["charged"] == 401
    assert len(output.failures) == 3
    assert output.unparsed == ("a line nobody expected",)
    assert run.handoffs == 0
    problems = "\n".join(run.problems())
    assert "failed 599" in problems
    assert "21 days ahead" in problems
    assert "a line nobody expected" in problems


def test_given_output_without_a_counts_line_when_parsed_then_the_run_is_flagged() -> None:
    output = parse_submit_output("failed 2: 400 bad\n")
    run = SubmitRun(1.0, 1.0, 1.0, 1.0, output, 0.0, returncode=3)

    assert output == SubmitOutput(None, {}, ("failed 2: 400 bad",), ())
    assert any("no counts line" in line for line in run.problems())
    assert any("exit code 3" in line for line in run.problems())
