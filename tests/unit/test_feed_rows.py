"""Declines feed row checks: header contract, per-row reasons, typed records, card numbers masked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recycle_engine.services.intake.feed_rows import (
    FEED_COLUMNS,
    OVERFLOW_PREFIX,
    PAN_MARKER,
    check_chunk,
    check_header,
)
from recycle_engine.services.intake.feed_values import card_number_positions, parse_amounts, parse_timestamps

TEST_PAN = "4111111111111111"  # the public Visa test number


def a_row(**overrides: str) -> dict[str, str]:
    """A valid soft-declined rebill, every column as the CSV reader gives it (text)."""
    row = {
        "transaction_id": "T-1", "declined_at": "2026-06-01T10:15:00-04:00", "order_id": "O-1",
        "order_type": "REBILL", "purchase_id": "P-1", "billing_cycle": "2", "billing_interval_days": "30",
        "completes_trial": "false", "recurring_product": "true", "shippable": "TRUE", "campaign_id": "c1",
        "product_id": "p1", "gateway_id": "nmi-main", "amount": "29.99", "currency": "USD",
        "response_type": "SOFT_DECLINE", "response_code": "51", "response_text": "Insufficient funds",
        "avs_result": "Y", "cvv_result": "M", "cavv_result": "", "customer_id": "C-1",
        "email": "ana@example.com", "phone": "+1 305 555 0141", "first_name": "Ana", "last_name": "Diaz",
        "address1": "1 Main St", "address2": "", "city": "Miami", "state": "FL", "zip": "33131",
        "country": "US", "ip_address": "203.0.113.7", "card_token": "tok_abc123", "card_bin": "411111",
        "card_last4": "1111", "card_exp_month": "7", "card_exp_year": "2028", "card_brand": "VISA",
        "card_type": "CREDIT",
    }  # fmt: skip
    row.update(overrides)
    return row


def checked(
    *rows: dict[str, str], extra_fields: list[list[str]] | None = None, seen: dict[str, int] | None = None
) -> Any:
    frame = pd.DataFrame(rows, columns=list(rows[0]), dtype=str)
    for n in range(2):
        values = [(fields[n] if len(fields) > n else "") for fields in (extra_fields or [[]] * len(rows))]
        frame[f"{OVERFLOW_PREFIX}{n}"] = pd.array(values, dtype=str)
    return check_chunk(
        frame,
        first_line=2,
        gateways=["nmi-main"],
        flexfactor_gateways=["flexfactor-main"],
        seen_transactions={} if seen is None else seen,
    )


def test_given_the_contract_header_when_checked_then_nothing_is_missing_or_extra() -> None:
    # when
    result = check_header(list(FEED_COLUMNS))
    # then
    assert result.is_usable
    assert result.extra == ()
    assert result.missing == ()


def test_given_a_header_without_amount_and_with_a_note_when_checked_then_both_are_named() -> None:
    # given
    header = [c for c in FEED_COLUMNS if c != "amount"] + ["note"]
    # when
    result = check_header(header)
    # then
    assert result.missing == ("amount",)
    assert result.extra == ("note",)
    assert not result.is_usable


def test_given_a_repeated_column_when_checked_then_the_header_is_unusable() -> None:
    # when
    result = check_header([*FEED_COLUMNS, "currency"])
    # then
    assert result.duplicated == ("currency",)
    assert not result.is_usable


def test_given_a_good_row_when_checked_then_its_record_is_typed() -> None:
    # when
    chunk = checked(a_row(currency="usd", country="us"))
    # then
    assert chunk.reasons == {}
    assert chunk.lines == [2]
    record = chunk.records[0]
    assert record["declined_at"] == datetime(2026, 6, 1, 14, 15, tzinfo=UTC)
    assert record["utc_offset_minutes"] == -240
    assert record["amount_minor"] == 2999
    assert record["currency"] == "USD"
    assert record["country"] == "US"
    assert record["billing_cycle"] == 2
    assert record["card_exp_month"] == 7
    assert record["shippable"] is True
    assert record["completes_trial"] is False
    assert record["cavv_result"] is None
    assert "amount" not in record


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"declined_at": "2026-06-31T10:00:00Z"}, "declined_at: not an ISO 8601 timestamp with offset"),
        ({"declined_at": "2026-06-01T10:00:00"}, "declined_at: no UTC offset"),
        ({"declined_at": "2026-06-01"}, "declined_at: no UTC offset"),
        ({"gateway_id": "stripe-eu"}, "gateway_id: not a gateway in the settings"),
        (
            {"gateway_id": "flexfactor-main"},
            "gateway_id: is a FlexFactor gateway; declines come from ordinary gateways",
        ),
        ({"currency": "XYZ"}, "currency: not a known ISO 4217 currency"),
        ({"amount": "29.999"}, "amount: more decimal places than USD has"),
        ({"amount": "1.5", "currency": "JPY"}, "amount: more decimal places than JPY has"),
        ({"amount": "0.00"}, "amount: must be more than zero"),
        ({"amount": "-5"}, "amount: must be a decimal amount such as 29.99"),
        ({"order_type": "RENEWAL"}, "order_type: must be NEW_SALE, UPSALE or REBILL"),
        ({"response_type": "DECLINED"}, "response_type: must be SOFT_DECLINE or HARD_DECLINE"),
        ({"shippable": "yes"}, "shippable: must be true or false"),
        ({"purchase_id": ""}, "purchase_id: required for REBILL"),
        ({"billing_cycle": "1"}, "billing_cycle: must be at least 2 for REBILL"),
        ({"billing_cycle": "two"}, "billing_cycle: must be a whole number"),
        ({"billing_interval_days": ""}, "billing_interval_days: required when purchase_id is set"),
        ({"billing_interval_days": "0"}, "billing_interval_days: must be at least 1"),
        ({"country": "USA"}, "country: must be an ISO 3166-1 alpha-2 code"),
        ({"card_last4": "111"}, "card_last4: must be 4 digits"),
        ({"card_bin": "41111"}, "card_bin: must be 6 to 8 digits"),
        ({"card_exp_month": "13"}, "card_exp_month: must be 1 to 12"),
        ({"order_id": ""}, "order_id: required"),
        ({"order_id": "O" * 65}, "order_id: longer than 64 characters"),
        ({"amount": "99999999999999999999"}, "amount: more than 9999999999.99 USD"),
        ({"amount": "10000000000"}, "amount: more than 9999999999.99 USD"),
        ({"city": "Mia\x00mi"}, "city: contains a NUL character"),
        ({"order_id": "O-\x00"}, "order_id: contains a NUL character"),
        ({"last_name": "M\udcfcller"}, "last_name: not UTF-8 text (byte 0xFC)"),
        ({"amount": "29.9\udcff"}, "amount: not UTF-8 text (byte 0xFF)"),
    ],
)
def test_given_a_bad_value_when_checked_then_the_row_is_rejected_with_the_reason(
    overrides: dict[str, str], reason: str
) -> None:
    # when
    chunk = checked(a_row(transaction_id="T-0"), a_row(**overrides))
    # then
    assert chunk.lines == [2]
    assert chunk.reasons == {3: [reason]}


def test_given_several_problems_in_a_row_when_checked_then_every_reason_is_kept() -> None:
    # when
    chunk = checked(a_row(currency="XYZ", order_type="RENEWAL"))
    # then
    assert chunk.reasons[2] == [
        "order_type: must be NEW_SALE, UPSALE or REBILL",
        "currency: not a known ISO 4217 currency",
    ]
    frame = chunk.rejects_frame()
    assert frame["reason"].tolist() == [
        "order_type: must be NEW_SALE, UPSALE or REBILL; currency: not a known ISO 4217 currency"
    ]
    assert frame["line"].tolist() == [2]


def test_given_a_new_sale_without_purchase_when_checked_then_it_is_accepted() -> None:
    # when
    chunk = checked(a_row(order_type="NEW_SALE", purchase_id="", billing_cycle="1", billing_interval_days=""))
    # then
    assert chunk.reasons == {}
    assert chunk.records[0]["purchase_id"] is None


def test_given_a_transaction_seen_in_an_earlier_chunk_when_checked_then_the_later_row_names_the_first_line() -> (
    None
):
    # given
    seen = {"T-1": 7}
    # when
    chunk = checked(a_row(transaction_id="T-2"), a_row(transaction_id="T-2"), a_row(), seen=seen)
    # then
    assert chunk.reasons == {
        3: ["transaction_id: duplicate of line 2"],
        4: ["transaction_id: duplicate of line 7"],
    }


def test_given_a_row_with_fields_past_the_header_when_checked_then_it_is_rejected() -> None:
    # when
    chunk = checked(a_row(), extra_fields=[["oops"]])
    # then
    assert chunk.reasons == {2: ["line: more fields than the 40 of the header"]}


def test_given_a_blank_line_when_checked_then_it_is_skipped_but_still_counted() -> None:
    # when
    chunk = checked(a_row(), {c: "" for c in FEED_COLUMNS}, a_row(transaction_id="T-3"))
    # then
    assert chunk.lines == [2, 4]
    assert chunk.reasons == {}
    assert chunk.blank_lines == 1


def test_given_spaces_around_values_when_checked_then_they_are_ignored() -> None:
    # when
    chunk = checked(a_row(amount=" 29.99 ", gateway_id=" nmi-main", order_type="REBILL "))
    # then
    assert chunk.reasons == {}
    assert chunk.records[0]["amount_minor"] == 2999


@pytest.mark.parametrize("column", ["card_token", "response_text", "transaction_id"])
def test_given_a_card_number_in_any_column_when_checked_then_the_row_is_rejected_and_the_cell_masked(
    column: str,
) -> None:
    # given
    value = f"ref {TEST_PAN} end" if column == "response_text" else TEST_PAN
    # when
    chunk = checked(a_row(**{column: value}))
    # then
    assert chunk.records == []
    assert chunk.reasons == {2: [f"{column}: looks like a full card number (removed)"]}
    frame = chunk.rejects_frame()
    assert frame[column].tolist() == [PAN_MARKER]
    assert TEST_PAN not in frame.to_csv()


def test_given_a_grouped_card_number_when_scanned_then_it_is_found() -> None:
    # when
    positions = card_number_positions(
        ["tok_1", "4111 1111 1111 1111", "4111-1111-1111-1112", "1234567890123"]
    )
    # then: the Luhn check keeps the real number and drops look-alikes
    assert positions == [1]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("address2", "4539.5787.6362.1486"),
        ("first_name", "4539  5787  6362  1486"),
        (
            "response_text",
            "see \uff14\uff15\uff13\uff19\uff15\uff17\uff18\uff17\uff16\uff13\uff16\uff12\uff11\uff14\uff18\uff16",
        ),
        ("card_token", "4539/5787/6362/1486"),
    ],
)
def test_given_a_card_number_behind_separators_or_in_other_digits_when_checked_then_it_is_rejected_and_masked(
    column: str, value: str
) -> None:
    # when
    chunk = checked(a_row(**{column: value}))
    # then
    assert chunk.reasons == {2: [f"{column}: looks like a full card number (removed)"]}
    assert chunk.rejects_frame()[column].tolist() == [PAN_MARKER]


def test_given_tokens_whose_digits_pass_luhn_when_checked_then_they_are_kept() -> None:
    # when: the demo book's token shape, a letter glued to a Luhn-valid run of 14 digits
    chunk = checked(
        a_row(card_token="tok_r00012739561822"), a_row(transaction_id="T-2", card_token="tok_r12345639561822")
    )
    # then
    assert chunk.reasons == {}


def test_given_timestamps_when_parsed_then_offsets_are_kept_and_instants_are_utc() -> None:
    # when
    instants, offsets, problems = parse_timestamps(
        ["2026-06-01T23:30:00+05:30", "2026-06-01T10:00:00Z", "noon"]
    )
    # then
    assert instants[:2] == [datetime(2026, 6, 1, 18, 0, tzinfo=UTC), datetime(2026, 6, 1, 10, 0, tzinfo=UTC)]
    assert offsets[:2] == [330, 0]
    assert problems == ["", "", "not an ISO 8601 timestamp with offset"]


_READ = [datetime(2026, 6, 1, 18, 0, tzinfo=UTC), datetime(2026, 6, 1, 10, 0, 5, 250, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("values", "read"),
    [
        pytest.param([t.isoformat() for t in _READ], _READ, id="every time read"),
        pytest.param([_READ[0].isoformat(), "noon", _READ[1].isoformat()], [_READ[0], None, None], id="some"),
    ],
)
def test_given_times_read_already_when_parsed_then_the_result_is_that_of_parsing_their_text(
    values: list[str], read: list[datetime | None]
) -> None:
    # when
    found = parse_timestamps(values, read)

    # then
    assert found == parse_timestamps(values)
    assert [i.tzinfo if i else None for i in found[0]] == [
        i.tzinfo if i else None for i in parse_timestamps(values)[0]
    ]


def test_given_amounts_when_parsed_then_each_currency_keeps_its_minor_digits() -> None:
    # when
    amounts, problems = parse_amounts(
        ["10", "10", "1.234"], ["JPY", "USD", "KWD"], np.array([True, True, True])
    )
    # then
    assert amounts == [10, 1000, 1234]
    assert problems == ["", "", ""]


def test_given_a_byte_that_is_not_utf8_when_checked_then_the_rejects_frame_shows_a_replacement_character() -> (
    None
):
    # when: the reader keeps such bytes as lone surrogates (errors="surrogateescape")
    chunk = checked(a_row(transaction_id="T-0"), a_row(city="Z\udcfcrich\x00"))
    # then
    assert chunk.reasons == {3: ["city: contains a NUL character; not UTF-8 text (byte 0xFC)"]}
    frame = chunk.rejects_frame()
    assert frame["city"].tolist() == ["Z\ufffdrich\ufffd"]
    frame.to_csv().encode("utf-8")  # writable as UTF-8


def test_given_the_largest_amount_when_parsed_then_it_is_kept_and_one_minor_unit_more_is_refused() -> None:
    # when
    amounts, problems = parse_amounts(
        ["9999999999.99", "10000000000.00", "999999999999", "1000000000000"],
        ["USD", "USD", "JPY", "JPY"],
        np.array([True] * 4),
    )
    # then
    assert amounts[0] == 10**12 - 1
    assert amounts[2] == 10**12 - 1
    assert problems == ["", "more than 9999999999.99 USD", "", "more than 999999999999 JPY"]
