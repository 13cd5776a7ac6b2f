"""The declines table's text widths the feed checks enforce come from the table itself."""

from __future__ import annotations

from recycle_engine.storage.decline_repo import text_widths


def test_given_bounded_unbounded_and_numeric_columns_when_widths_are_asked_then_only_bounded_text_has_one() -> (
    None
):
    # given
    asked = ["order_id", "email", "response_text", "amount_minor", "declined_at", "not_a_column"]

    # when
    widths = text_widths(asked)

    # then
    assert widths == {"order_id": 64, "email": 320}
