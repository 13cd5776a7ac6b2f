"""The one card-number rule (domain.cards): written any way, in any digits; tokens are not card numbers;
the import's column-wide filter in front of it misses none."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recycle_engine.domain.cards import contains_pan, find_pans, looks_like_pan, luhn_ok, mask_pans
from recycle_engine.services.intake.feed_values import card_number_positions

PAN = "4539578763621486"  # a Luhn-valid Visa-shaped number


@pytest.mark.parametrize(
    "text",
    [
        PAN,
        "4539 5787 6362 1486",
        "4539-5787-6362-1486",
        "4539.5787.6362.1486",
        "4539/5787/6362/1486",
        "4539  5787  6362  1486",
        "4539 - 5787 - 6362 - 1486",
        "4539\u00a05787\u00a06362\u00a01486",  # no-break spaces
        "\uff14\uff15\uff13\uff19\uff15\uff17\uff18\uff17\uff16\uff13\uff16\uff12\uff11\uff14\uff18\uff16",  # full-width
        "\u0664\u0665\u0663\u0669 \u0665\u0667\u0668\u0667 \u0666\u0663\u0666\u0662 \u0661\u0664\u0668\u0666",
        "4539\u30015787\u30016362\u30011486",  # ideographic commas
        "card: 4539.5787.6362.1486, exp 07/28",
        "declined 2026-06-01 4539 5787 6362 1486 by issuer",
        "tok_4539578763621486",  # an underscore is a separator, not a letter
        "378282246310005",  # Amex, 15 digits in one run
        "3782 822463 10005",
    ],
)
def test_given_a_card_number_written_any_way_when_scanned_then_it_is_found(text: str) -> None:
    # when / then
    assert contains_pan(text)


@pytest.mark.parametrize(
    "text",
    [
        "tok_r00012739561822",  # the demo book's tokens: the digits are glued to a letter
        "tok_r12345639561822",
        "9f3e4539578763621486ab",  # a hex id
        "00012739561822",  # major industry identifier 0: no payment card
        "4539 5787 6362 1487",  # Luhn fails
        "4539 5787 6362",  # too few digits
        "45395787636214860000000",  # one run of more than 19 digits
        "4539 5787    6362 1486",  # four spaces: two numbers, not one
        "+1 305 555 0141",
        "2026-06-01T10:15:00-04:00",
        "203.0.113.7",
        "",
    ],
)
def test_given_a_token_or_other_digits_when_scanned_then_no_card_number_is_found(text: str) -> None:
    # when / then
    assert not contains_pan(text)


def test_given_text_with_two_card_numbers_when_masked_then_only_their_last_four_digits_stay() -> None:
    # when
    masked = mask_pans("card 4539.5787.6362.1486 then 4111 1111 1111 1111 ok")
    # then
    assert masked == "card ************1486 then ************1111 ok"


def test_given_digits_written_before_a_card_number_when_masked_then_no_digit_of_it_stays() -> None:
    # given: "1007 4539 5787 6362" passes Luhn too, and is the window the rule meets first
    text = "ref 1007 4539 5787 6362 1486 declined"
    assert luhn_ok("1007453957876362")
    # when
    masked = mask_pans(text)
    # then
    assert masked == "ref ****************1486 declined"


def test_given_full_width_digits_when_found_then_the_digits_are_read_as_ascii() -> None:
    # when
    spans = list(find_pans("x \uff14\uff15\uff13\uff19 5787 6362 1486"))
    # then
    assert [(s.start, s.end, s.digits) for s in spans] == [(2, 21, PAN)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(PAN, True), ("4539.5787.6362.1486", True), ("tok_abc", False), ("ref 4539578763621486", False)],
)
def test_given_a_whole_value_when_judged_then_only_a_bare_card_number_looks_like_one(
    value: str, expected: bool
) -> None:
    # when / then
    assert looks_like_pan(value) is expected


_PIECES = st.sampled_from(
    [
        "4539",
        "5787",
        "6362",
        "1486",
        "0",
        "7",
        "\uff14",
        "\u0665",
        " ",
        "  ",
        ".",
        "-",
        "/",
        "\u00a0",
        "_",
        "r",
        "x",
        "\x00",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_PIECES, max_size=24).map("".join), min_size=1, max_size=4))
def test_given_any_text_when_a_column_is_scanned_then_its_quick_filter_misses_no_card_number(
    values: list[str],
) -> None:
    # when
    positions = card_number_positions(values)
    # then: the column-wide filter may only skip what the rule itself would not find
    assert positions == [p for p, value in enumerate(values) if contains_pan(value)]
