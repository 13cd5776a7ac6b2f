"""The /evaluate body builder: RECYCLE as managed MIT, RERUN and CASCADE as CIT (contract section 5)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body, interval_text
from recycle_engine.domain.states import Source
from recycle_engine.errors import InputError
from tests.conftest import load_fixture

NOW = datetime(2026, 6, 12, 14, 30, tzinfo=UTC)
EST = timezone(timedelta(hours=-5))
TEST_CARD = "4111111111111111"  # public test card number

# The fields contract A2 says the sandbox requires; empty strings count as missing.
A2_REQUIRED = [
    ("isDeclined",),
    ("mid",),
    ("orderId",),
    ("idempotencyKey",),
    ("transaction", "id"),
    ("transaction", "amount"),
    ("transaction", "currency"),
    ("transaction", "responseCode"),
    ("transaction", "responseCodeSource"),
    ("transaction", "avsResultCode"),
    ("transaction", "cvvResultCode"),
    ("transaction", "cavvResultCode"),
    ("payer", "email"),
    ("billingInformation",),
    ("paymentMethod", "cardNumber"),
]


def a_handoff(**overrides: Any) -> HandoffRequest:
    fields: dict[str, Any] = {
        "source": Source.RECYCLE,
        "submission_id": "sub_01J0000000000000000000001",
        "idempotency_key": "3f0c9c2e-2b1a-4c51-9a7e-1d2f3a4b5c6d",
        "mid": "11111111-1111-4111-8111-111111111111",
        "site_id": "22222222-2222-4222-8222-222222222222",
        "expiry_at": NOW + timedelta(days=21),
        "amount_minor": 2749,
        "currency": "usd",
        "transaction_id": "txn-889",
        "declined_at": datetime(2026, 6, 12, 9, 30, tzinfo=EST),
        "response_code": "51",
        "response_text": "Insufficient funds",
        "processor_type": "nmi",
        "card_token": "tok_ff_6a1f09d2",
        "card_bin": "400000",
        "card_last4": "3184",
        "card_exp_month": 9,
        "card_exp_year": 2029,
        "card_brand": "VISA",
        "card_type": "CREDIT",
        "avs": "Y",
        "customer_id": "C-42",
        "email": "jo@example.com",
        "phone": "+15551234567",
        "first_name": "Jo",
        "last_name": "Doe",
        "address1": "1 Main St",
        "city": "Springfield",
        "state": "IL",
        "zip": "62701",
        "country": "us",
        "ip_address": "203.0.113.7",
        "purchase_id": "P-123",
        "billing_interval_days": 30,
        "regular_price_minor": 2999,
        "billing_cycle": 7,
        "total_payments": None,
    }
    fields.update(overrides)
    return HandoffRequest(**fields)


def _path(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaf_paths(v, (*prefix, k))]
    return [prefix]


def test_given_a_recycle_when_built_then_it_is_a_managed_mit_with_a_subscription() -> None:
    # given
    req = a_handoff()

    # when
    body = build_evaluate_body(req)

    # then
    assert (body["isDeclined"], body["isMIT"], body["isRecurring"]) == (True, True, True)
    assert body["expiryDateUtc"] == "2026-07-03T14:30:00Z"
    assert body["orderId"] == req.submission_id
    assert body["idempotencyKey"] == req.idempotency_key
    assert (body["mid"], body["siteId"]) == (req.mid, req.site_id)
    assert body["customerIp"] == "203.0.113.7"
    assert body["subscription"] == {
        "subscriptionId": "P-123",
        "interval": "monthly",
        "price": 2999,
        "currency": "USD",
        "paymentNumber": 7,
        "totalPayments": None,
    }


def test_given_a_recycle_when_built_then_transaction_carries_every_field_of_section_5_3() -> None:
    # given
    req = a_handoff()

    # when
    transaction = build_evaluate_body(req)["transaction"]

    # then
    assert transaction == {
        "id": "txn-889",
        "amount": 2749,
        "currency": "USD",
        "timestampUtc": "2026-06-12T14:30:00Z",
        "timezoneUtcOffset": -5,
        "responseCode": "51",
        "responseCodeSource": "nmi",
        "responseStatus": "DECLINED",
        "responseDescription": "Insufficient funds",
        "avsResultCode": "Y",
        "cvvResultCode": "NA",
        "cavvResultCode": "NA",
        "cardNotPresent": True,
    }


def test_given_a_recycle_when_built_then_payer_billing_and_payment_method_use_contract_names() -> None:
    # given
    req = a_handoff()

    # when
    body = build_evaluate_body(req)

    # then
    assert body["payer"] == {"email": "jo@example.com", "phone": "+15551234567", "id": "C-42"}
    assert body["billingInformation"] == {
        "firstName": "Jo",
        "lastName": "Doe",
        "phone": "+15551234567",
        "addressLine1": "1 Main St",
        "city": "Springfield",
        "state": "IL",
        "zipCode": "62701",
        "countryCode": "US",
        "country": "US",
    }
    assert body["paymentMethod"] == {
        "cardNumber": "tok_ff_6a1f09d2",
        "token": True,
        "holderName": "Jo Doe",
        "cardBrand": "VISA",
        "cardType": "CREDIT",
        "expirationMonth": 9,
        "expirationYear": 2029,
        "cardBinNumber": "400000",
        "cardLast4Digits": "3184",
    }


def test_given_a_rerun_when_built_then_it_is_a_cit_with_expiry_and_no_subscription() -> None:
    # given
    req = a_handoff(source=Source.RERUN, purchase_id="", billing_interval_days=None)

    # when
    body = build_evaluate_body(req)

    # then
    assert (body["isMIT"], body["isRecurring"]) == (False, False)
    assert body["expiryDateUtc"] == "2026-07-03T14:30:00Z"
    assert "subscription" not in body


def test_given_a_cascade_when_built_then_it_is_a_cit_without_expiry_even_if_one_is_given() -> None:
    # given
    req = a_handoff(source=Source.CASCADE)

    # when
    body = build_evaluate_body(req)

    # then
    assert (body["isMIT"], body["isRecurring"]) == (False, False)
    assert "expiryDateUtc" not in body
    assert "subscription" not in body
    assert body["customerIp"] == "203.0.113.7"


def test_given_a_cascade_without_ip_address_when_built_then_refused_locally() -> None:
    # given
    req = a_handoff(source=Source.CASCADE, expiry_at=None, ip_address="")

    # when / then
    with pytest.raises(InputError, match="ip_address"):
        build_evaluate_body(req)


@pytest.mark.parametrize("source", [Source.RECYCLE, Source.RERUN])
def test_given_a_non_cascade_without_expiry_when_built_then_refused(source: Source) -> None:
    # given
    req = a_handoff(source=source, expiry_at=None)

    # when / then
    with pytest.raises(InputError, match="expiry_at"):
        build_evaluate_body(req)


@pytest.mark.parametrize("source", [Source.RERUN, Source.CASCADE])
def test_given_our_cit_body_when_compared_to_the_vendor_accepted_one_then_every_a2_field_is_present(
    source: Source,
) -> None:
    # given
    vendor_body = load_fixture("sandbox-evaluate-request-cit.json")["body"]
    required_in_fixture = [p for p in A2_REQUIRED if _path(vendor_body, p) not in (None, "")]

    # when
    ours = build_evaluate_body(a_handoff(source=source, avs="", cvv="", cavv="", email=""))

    # then
    assert len(required_in_fixture) == len(A2_REQUIRED)
    missing = [".".join(p) for p in required_in_fixture if _path(ours, p) in (None, "")]
    assert missing == []


def test_given_our_cit_body_when_compared_to_the_vendor_accepted_one_then_its_names_are_a_superset() -> None:
    # given: names the vendor sample sends that we deliberately do not
    vendor_body = load_fixture("sandbox-evaluate-request-cit.json")["body"]
    not_ours = {("transaction", "dynamicDescriptor"), ("paymentMethod", "cardCountry")}

    # when
    ours = set(_leaf_paths(build_evaluate_body(a_handoff(source=Source.RERUN))))

    # then
    assert set(_leaf_paths(vendor_body)) - not_ours - ours == set()


def test_given_empty_codes_and_email_when_built_then_na_is_sent_instead_of_empty_strings() -> None:
    # given
    req = a_handoff(avs="", cvv=" ", cavv="", email="", phone="", address2="")

    # when
    body = build_evaluate_body(req)

    # then
    transaction = body["transaction"]
    assert (transaction["avsResultCode"], transaction["cvvResultCode"], transaction["cavvResultCode"]) == (
        "NA",
        "NA",
        "NA",
    )
    assert body["payer"]["email"] == "NA"
    assert "phone" not in body["payer"]
    assert "" not in [v for v in body["billingInformation"].values()]


@pytest.mark.parametrize("token", [TEST_CARD, "4111 1111 1111 1111", "4111-1111-1111-1111"])
def test_given_a_card_number_as_token_when_built_then_refused_without_echoing_it(token: str) -> None:
    # given
    req = a_handoff(card_token=token)

    # when
    with pytest.raises(InputError) as caught:
        build_evaluate_body(req)

    # then
    assert "card number" in str(caught.value)
    assert "1111 1111" not in str(caught.value)
    assert "41111111" not in str(caught.value).replace(" ", "").replace("-", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address2", "4539.5787.6362.1486"),
        ("first_name", "4539  5787  6362  1486"),
        (
            "response_text",
            "card \uff14\uff15\uff13\uff19\uff15\uff17\uff18\uff17\uff16\uff13\uff16\uff12\uff11\uff14\uff18\uff16",
        ),
        ("zip", "4539/5787/6362/1486"),
    ],
)
def test_given_a_card_number_in_a_billing_field_when_built_then_refused_naming_the_field_only(
    field: str, value: str
) -> None:
    # given
    req = a_handoff(**{field: value})
    # when
    with pytest.raises(InputError) as caught:
        build_evaluate_body(req)
    # then
    assert field in str(caught.value)
    assert "1486" not in str(caught.value)


@pytest.mark.parametrize("token", ["tok_r00012739561822", "tok_r12345639561822"])
def test_given_a_token_with_a_luhn_valid_digit_run_when_built_then_it_is_sent(token: str) -> None:
    # when
    body = build_evaluate_body(a_handoff(card_token=token))
    # then
    assert body["paymentMethod"]["cardNumber"] == token


def test_given_a_request_when_printed_then_token_and_personal_data_stay_hidden() -> None:
    # given
    req = a_handoff()

    # when
    text = repr(req)

    # then
    assert req.card_token not in text
    assert req.email not in text
    assert req.submission_id in text


@pytest.mark.parametrize(
    ("days", "text"),
    [
        (7, "weekly"),
        (27, "every 27 days"),
        (28, "monthly"),
        (30, "monthly"),
        (31, "monthly"),
        (32, "every 32 days"),
        (14, "every 14 days"),
    ],
)
def test_given_a_billing_interval_when_described_then_contract_wording(days: int, text: str) -> None:
    # given / when / then
    assert interval_text(days) == text


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (timedelta(0), 0),
        (timedelta(hours=2), 2),
        (timedelta(hours=5, minutes=30), 5.5),
        (timedelta(hours=-3, minutes=-30), -3.5),
    ],
)
def test_given_a_declined_at_offset_when_built_then_timezone_offset_is_hours(
    offset: timedelta, expected: float
) -> None:
    # given
    declined_at = datetime(2026, 6, 12, 9, 30, tzinfo=timezone(offset))

    # when
    transaction = build_evaluate_body(a_handoff(declined_at=declined_at))["transaction"]

    # then
    assert transaction["timezoneUtcOffset"] == expected
    assert transaction["timestampUtc"] == (declined_at.astimezone(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"amount_minor": 0}, "amount_minor"),
        ({"idempotency_key": "not-a-guid"}, "GUID"),
        ({"response_code": ""}, "response_code"),
        ({"declined_at": datetime(2026, 6, 12, 9, 30)}, "timezone-aware"),
        ({"billing_interval_days": None}, "billing_interval_days"),
        ({"purchase_id": ""}, "purchase_id"),
    ],
)
def test_given_a_request_missing_what_flexfactor_requires_when_built_then_refused(
    override: dict[str, Any], complaint: str
) -> None:
    # given
    req = a_handoff(**override)

    # when / then
    with pytest.raises(InputError, match=complaint):
        build_evaluate_body(req)


def test_given_the_same_request_twice_when_built_then_bodies_are_identical() -> None:
    # given: a resend must carry the same body under the same key
    req = a_handoff()

    # when
    first, second = build_evaluate_body(req), build_evaluate_body(dataclasses.replace(req))

    # then
    assert first == second
