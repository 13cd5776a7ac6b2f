"""Decline mapping: which rule re-classifies a decline, and the insufficient-funds phrases."""

from __future__ import annotations

from typing import Any

import pytest

from recycle_engine.domain.declines import (
    Classification,
    DeclineType,
    MappingRule,
    MappingScope,
    OrderType,
    RuleOrderType,
    classify,
    is_insufficient_funds,
)


def a_rule(**overrides: Any) -> MappingRule:
    values: dict[str, Any] = {
        "scope": MappingScope.MID,
        "target": "nmi-main",
        "order_type": RuleOrderType.ALL,
        "contains": "do not honor",
        "map_to": DeclineType.SOFT,
    }
    values.update(overrides)
    return MappingRule(**values)


def classify_decline(rules: list[MappingRule], **overrides: Any) -> Classification:
    values: dict[str, Any] = {
        "response_type": DeclineType.HARD,
        "response_text": "05 - Do Not Honor",
        "order_type": OrderType.REBILL,
        "gateway_id": "nmi-main",
        "gateway_type": "nmi",
        "rules": rules,
    }
    values.update(overrides)
    return classify(**values)


def test_given_no_rules_then_the_feed_response_type_stands() -> None:
    # when
    result = classify_decline([])

    # then
    assert result == Classification(decline_type=DeclineType.HARD, rule=None, display_message=None)


def test_given_a_mid_rule_containing_the_text_then_a_hard_decline_becomes_soft() -> None:
    # given
    rule = a_rule(contains="Do Not Honor", display_message="Bank said no, for now")

    # when
    result = classify_decline([rule])

    # then
    assert result == Classification(
        decline_type=DeclineType.SOFT, rule=rule, display_message="Bank said no, for now"
    )


@pytest.mark.parametrize("text", ["05 - DO NOT HONOR", "05 - do not honor", "Do Not Honor"])
def test_given_text_in_another_case_then_the_rule_still_matches(text: str) -> None:
    # given
    rule = a_rule(contains="Do Not Honor")

    # when
    result = classify_decline([rule], response_text=text)

    # then
    assert result.rule is rule


def test_given_a_mid_rule_for_another_gateway_then_it_does_not_apply() -> None:
    # given
    rule = a_rule(target="nmi-backup")

    # when
    result = classify_decline([rule])

    # then
    assert (result.decline_type, result.rule) == (DeclineType.HARD, None)


def test_given_a_gateway_rule_for_the_processor_type_then_it_applies_to_every_gateway_of_that_type() -> None:
    # given
    rule = a_rule(scope=MappingScope.GATEWAY, target="nmi", contains="pick up card", map_to=DeclineType.HARD)

    # when
    results = [
        classify_decline(
            [rule], response_type=DeclineType.SOFT, response_text="04 Pick Up Card", gateway_id=gateway
        )
        for gateway in ("nmi-main", "nmi-backup")
    ]

    # then
    assert [r.decline_type for r in results] == [DeclineType.HARD, DeclineType.HARD]


def test_given_a_gateway_rule_for_another_processor_type_then_it_does_not_apply() -> None:
    # given
    rule = a_rule(scope=MappingScope.GATEWAY, target="stripe")

    # when
    result = classify_decline([rule])

    # then
    assert result.rule is None


def test_given_a_text_that_does_not_contain_the_rule_then_it_does_not_apply() -> None:
    # given
    rule = a_rule(contains="stolen")

    # when
    result = classify_decline([rule])

    # then
    assert result.rule is None


def test_given_a_rule_with_empty_text_then_it_matches_nothing() -> None:
    # given
    rule = a_rule(contains="")

    # when
    result = classify_decline([rule])

    # then
    assert result.rule is None


@pytest.mark.parametrize(
    ("rule_order_type", "order_type", "applies"),
    [
        (RuleOrderType.ALL, OrderType.NEW_SALE, True),
        (RuleOrderType.ALL, OrderType.UPSALE, True),
        (RuleOrderType.ALL, OrderType.REBILL, True),
        (RuleOrderType.NEW_SALE, OrderType.NEW_SALE, True),
        (RuleOrderType.NEW_SALE, OrderType.UPSALE, True),
        (RuleOrderType.NEW_SALE, OrderType.REBILL, False),
        (RuleOrderType.RECURRING, OrderType.NEW_SALE, False),
        (RuleOrderType.RECURRING, OrderType.UPSALE, False),
        (RuleOrderType.RECURRING, OrderType.REBILL, True),
    ],
)
def test_given_a_rule_order_type_then_it_covers_exactly_its_order_types(
    rule_order_type: RuleOrderType, order_type: OrderType, applies: bool
) -> None:
    # given
    rule = a_rule(order_type=rule_order_type)

    # when
    result = classify_decline([rule], order_type=order_type)

    # then
    assert (result.rule is rule) is applies


def test_given_a_mid_and_a_gateway_rule_match_then_the_mid_rule_wins_even_when_shorter_and_later() -> None:
    # given
    gateway_rule = a_rule(
        scope=MappingScope.GATEWAY,
        target="nmi",
        order_type=RuleOrderType.RECURRING,
        contains="05 - do not honor",
    )
    mid_rule = a_rule(contains="honor", map_to=DeclineType.HARD, position=9)

    # when
    result = classify_decline([gateway_rule, mid_rule], response_type=DeclineType.SOFT)

    # then
    assert (result.rule, result.decline_type) == (mid_rule, DeclineType.HARD)


def test_given_a_specific_and_an_all_rule_match_then_the_specific_order_type_wins() -> None:
    # given
    all_rule = a_rule(order_type=RuleOrderType.ALL, contains="05 - do not honor")
    recurring_rule = a_rule(order_type=RuleOrderType.RECURRING, contains="honor", map_to=DeclineType.HARD)

    # when
    result = classify_decline([all_rule, recurring_rule])

    # then
    assert result.rule is recurring_rule


def test_given_two_equal_rules_except_their_text_then_the_longer_substring_wins() -> None:
    # given
    short = a_rule(contains="honor", map_to=DeclineType.HARD)
    long = a_rule(contains="do not honor", map_to=DeclineType.SOFT)

    # when
    result = classify_decline([short, long])

    # then
    assert result.rule is long


def test_given_two_equally_specific_rules_then_the_earlier_position_wins() -> None:
    # given
    later = a_rule(contains="do not", map_to=DeclineType.HARD, position=2)
    earlier = a_rule(contains="not ho", map_to=DeclineType.SOFT, position=1)

    # when
    result = classify_decline([later, earlier])

    # then
    assert result.rule is earlier


def test_given_equal_positions_then_the_earlier_rule_in_the_list_wins() -> None:
    # given
    first = a_rule(contains="do not", display_message="first")
    second = a_rule(contains="not ho", display_message="second")

    # when
    result = classify_decline([first, second])

    # then
    assert result.display_message == "first"


def test_given_a_rule_without_display_message_then_none_is_reported() -> None:
    # given
    rule = a_rule()

    # when
    result = classify_decline([rule])

    # then
    assert result.display_message is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("51 - Insufficient Funds", True),
        ("INSUFFICIENT FUNDS", True),
        ("Declined: insufficient funds in account", True),
        ("Do Not Honor", False),
        ("", False),
    ],
)
def test_given_the_default_phrase_then_insufficient_funds_is_recognised_case_insensitively(
    text: str, expected: bool
) -> None:
    # when
    result = is_insufficient_funds(text)

    # then
    assert result is expected


def test_given_configured_phrases_then_each_of_them_is_recognised() -> None:
    # given
    phrases = ["insufficient funds", "NSF", "over limit"]

    # when
    results = [is_insufficient_funds(t, phrases) for t in ("61 nsf", "Over Limit", "do not honor")]

    # then
    assert results == [True, True, False]


def test_given_blank_phrases_then_they_match_nothing() -> None:
    # when
    result = is_insufficient_funds("Do Not Honor", ["", "   "])

    # then
    assert result is False
