"""The run's failure lines group refusals by their reason, whatever trace id each call carried."""

from __future__ import annotations

from recycle_engine.cli.run import failure_lines

REFUSED = "HTTP 400: ExpiryDateUtc: must be at most 21 days ahead"


def test_given_identical_refusals_with_their_own_trace_ids_then_they_read_as_one_line() -> None:
    # given: 599 refusals of one reason, each with the trace id of its own call, and one other reason
    reasons = [("FAILED", f"{REFUSED} (trace 0HN{i:05d}:00000001)", 1) for i in range(599)]
    reasons.append(("PENDING", "FlexFactor rate limited (429)", 3))

    # when
    lines = failure_lines(reasons)

    # then
    assert lines == [f"failed 599: {REFUSED}", "not sent 3: FlexFactor rate limited (429)"]


def test_given_more_reasons_than_shown_then_the_rest_are_counted_in_one_line() -> None:
    # given: twelve distinct reasons, the most frequent first once grouped
    reasons = [("FAILED", f"reason {i:02d}", 20 - i) for i in range(12)]

    # when
    lines = failure_lines(reasons)

    # then
    assert lines[0] == "failed 20: reason 00"
    assert lines[-1] == "... 19 more with 2 other reasons"
    assert len(lines) == 11
