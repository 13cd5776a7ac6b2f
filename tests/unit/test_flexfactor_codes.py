"""Every FlexFactor status, error shape, webhook event and caught transport error has a mapping."""

from __future__ import annotations

import inspect
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import requests
import requests.exceptions
import urllib3.exceptions

from recycle_engine.adapters import flexfactor_codes as codes
from recycle_engine.domain.states import Event, State
from recycle_engine.errors import (
    FlexFactorConfigError,
    FlexFactorError,
    FlexFactorNotSent,
    FlexFactorProtocolError,
    FlexFactorRejected,
    FlexFactorUnknownOutcome,
)
from recycle_engine.ports import VendorStatus
from tests.conftest import load_fixture

NOW = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)

# Contract 5.6, written out again so that a change to the table in code is a visible test change.
DOCUMENTED_EVALUATE = {
    "APPROVED": (State.APPROVED, None),
    "DECLINED": (State.DECLINED, None),
    "CHALLENGE": (State.SUBMITTED, None),
    "SUBMITTED": (State.SUBMITTED, None),
    "PROCESSING": (State.SUBMITTED, None),
    "CAPTUREREQUIRED": (State.SUBMITTED, codes.ATTENTION_CAPTURE_REQUIRED),
    "EXPIRED": (State.EXPIRED, None),
    "CANCELLED": (State.CANCELLED, None),
}

# Contract section 6, with the window still open (status 2 reads CANCELLED).
DOCUMENTED_ORDER = {
    0: ("Draft", None, None),
    1: ("Onhold", None, None),
    2: ("Cancelled", State.CANCELLED, None),
    3: ("Problem", None, codes.ATTENTION_PROBLEM),
    4: ("Processing", None, None),
    5: ("Capturerequired", None, codes.ATTENTION_CAPTURE_REQUIRED),
    6: ("Returned", State.APPROVED, codes.ATTENTION_RETURNED),
    7: ("Completed", State.APPROVED, None),
}


def _requests_exception_classes() -> list[type[requests.RequestException]]:
    return [
        cls
        for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
        if issubclass(cls, requests.RequestException) and cls.__module__ == "requests.exceptions"
    ]


# --- evaluate statuses -----------------------------------------------------------------------------


def test_given_every_vendor_status_when_looking_up_the_table_then_each_is_mapped() -> None:
    # given / when
    unmapped = set(VendorStatus) - set(codes.EVALUATE_STATUSES)

    # then
    assert unmapped == set()
    assert set(DOCUMENTED_EVALUATE) == {s.value for s in VendorStatus}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_EVALUATE))
@pytest.mark.parametrize("spelling", [str.upper, str.lower, str.title])
def test_given_a_documented_evaluate_status_in_any_case_when_read_then_it_maps_per_contract_table(
    name: str, spelling: object
) -> None:
    # given
    wire = spelling(name)  # type: ignore[operator]

    # when
    vendor_status, state, attention = codes.read_evaluate_status(wire)

    # then
    assert vendor_status is VendorStatus(name)
    assert (state, attention) == DOCUMENTED_EVALUATE[name]


@pytest.mark.parametrize("name", ["PENDING", "FAILED", "", "APPROVED_PARTIAL"])
def test_given_an_unknown_evaluate_status_when_read_then_protocol_error_names_it(name: str) -> None:
    # given / when
    with pytest.raises(FlexFactorProtocolError) as caught:
        codes.read_evaluate_status(name)

    # then
    assert repr(name) in str(caught.value)


def test_given_an_answer_without_order_session_key_when_read_then_order_id_stands_in() -> None:
    # given
    body = {"orderId": "ff-1", "status": "submitted"}

    # when
    answer = codes.evaluate_answer(body)

    # then
    assert answer.flexfactor_order_id == "ff-1"
    assert answer.state is State.SUBMITTED


def test_given_an_answer_without_any_order_id_when_read_then_protocol_error() -> None:
    # given
    body = {"status": "APPROVED"}

    # when / then
    with pytest.raises(FlexFactorProtocolError):
        codes.evaluate_answer(body)


# --- order statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(DOCUMENTED_ORDER))
def test_given_each_order_status_0_to_7_when_read_then_it_maps_per_contract_section_6(code: int) -> None:
    # given
    name, expected_state, expected_attention = DOCUMENTED_ORDER[code]

    # when
    status, state = codes.read_order_status(code, name, expiry_at=NOW + timedelta(days=1), now=NOW)

    # then
    assert status.code == code
    assert state is expected_state
    assert status.needs_attention == expected_attention


def test_given_the_order_table_when_walked_then_it_covers_exactly_0_to_7() -> None:
    # given / when
    documented = set(codes.ORDER_STATUSES)

    # then
    assert documented == set(range(8))


@pytest.mark.parametrize(
    ("expiry_offset", "expected"),
    [
        (timedelta(seconds=1), State.CANCELLED),  # one second before the window closes
        (timedelta(0), State.EXPIRED),  # exactly at: the window has closed
        (timedelta(seconds=-1), State.EXPIRED),  # one second after
    ],
)
def test_given_status_2_when_read_around_expiry_then_expired_only_once_the_window_closed(
    expiry_offset: timedelta, expected: State
) -> None:
    # given
    expiry_at = NOW + expiry_offset

    # when
    _, state = codes.read_order_status(2, "CANCELLED", expiry_at=expiry_at, now=NOW)

    # then
    assert state is expected


def test_given_status_2_without_expiry_when_read_then_cancelled() -> None:
    # given / when
    _, state = codes.read_order_status(2, "Cancelled", expiry_at=None, now=NOW)

    # then
    assert state is State.CANCELLED


def test_given_a_number_and_a_disagreeing_name_when_read_then_the_number_wins_and_it_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given
    caplog.set_level(logging.WARNING, logger=codes.__name__)

    # when
    status, state = codes.read_order_status(7, "PROCESSING", expiry_at=None, now=NOW)

    # then
    assert (status.name, state) == ("COMPLETED", State.APPROVED)
    assert "disagree" in caplog.text


def test_given_only_a_name_in_recorded_traffic_case_when_read_then_it_is_used() -> None:
    # given / when
    status, state = codes.read_order_status(None, "CAPTUREREQUIRED", expiry_at=None, now=NOW)

    # then
    assert status.code == 5
    assert state is None
    assert status.needs_attention == codes.ATTENTION_CAPTURE_REQUIRED


@pytest.mark.parametrize(("code", "name"), [(8, "Mystery"), (None, "Mystery"), (-1, None), (True, None)])
def test_given_an_unknown_order_status_when_read_then_protocol_error(code: object, name: object) -> None:
    # given / when / then
    with pytest.raises(FlexFactorProtocolError, match="unknown FlexFactor order status"):
        codes.read_order_status(code, name, expiry_at=None, now=NOW)


def test_given_a_sandbox_order_body_when_read_then_snapshot_carries_every_field() -> None:
    # given
    body = {
        "id": "ff-9",
        "status": 4,
        "statusName": "PROCESSING",
        "orderPlacedDate": "2026-06-09T12:00:00Z",
        "expiryDate": "2026-06-30T12:00:00",
        "externalOrderId": "sub-1",
        "amount": 2749,
        "currencyCode": "USD",
    }

    # when
    snapshot = codes.order_snapshot(body, now=NOW)

    # then
    assert snapshot.flexfactor_order_id == "ff-9"
    assert snapshot.external_order_id == "sub-1"
    assert snapshot.state is None
    assert snapshot.order_placed_at == datetime(2026, 6, 9, 12, tzinfo=UTC)
    assert snapshot.expiry_at == datetime(2026, 6, 30, 12, tzinfo=UTC)  # no offset reads as UTC
    assert (snapshot.amount_minor, snapshot.currency) == (2749, "USD")


# --- error bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture",
    [
        "sandbox-error-validation-flat.json",
        "sandbox-error-validation-nested.json",
        "sandbox-refund-failed.json",
    ],
)
def test_given_every_error_shape_fixture_when_parsed_then_something_is_extracted(fixture: str) -> None:
    # given
    artifact = load_fixture(fixture)

    # when
    parsed = codes.parse_error_body(artifact["http_status"], artifact["body"])

    # then
    assert parsed.http_status == artifact["http_status"]
    assert parsed.field_errors or parsed.messages
    assert "no detail" not in parsed.summary()


def test_given_problem_details_when_parsed_then_title_is_a_message_and_errors_are_fields() -> None:
    # given
    raw = (
        b'{"type":"https://tools.ietf.org/html/rfc7231#section-6.5.1","title":"One or more validation errors'
        b' occurred.","status":400,"traceId":"00-abc-01","errors":{"Transaction.Amount":["must be > 0"]}}'
    )

    # when
    parsed = codes.parse_error_body(400, raw)

    # then
    assert parsed.trace_id == "00-abc-01"
    assert dict(parsed.field_errors) == {"Transaction.Amount": ("must be > 0",)}
    assert parsed.messages == ("One or more validation errors occurred.",)


def test_given_a_field_path_in_another_case_when_looked_up_then_it_matches() -> None:
    # given
    parsed = codes.parse_error_body(400, load_fixture("sandbox-error-validation-nested.json")["body"])

    # when
    found = codes.field_messages(parsed, "transaction.responsecode")

    # then
    assert found == ("The ResponseCode field is required.",)


def test_given_a_non_json_body_when_parsed_then_its_first_500_characters_are_kept() -> None:
    # given
    raw = "<html>" + "x" * 1000

    # when
    parsed = codes.parse_error_body(502, raw)

    # then
    assert parsed.messages == (raw[:500],)
    assert parsed.field_errors == {}


@pytest.mark.parametrize("raw", [None, b"", "   "])
def test_given_an_empty_body_when_parsed_then_only_the_status_is_known(raw: bytes | str | None) -> None:
    # given / when
    parsed = codes.parse_error_body(503, raw)

    # then
    assert parsed.summary() == "HTTP 503: no detail"


def test_given_an_error_message_echoing_a_card_number_when_parsed_then_it_is_masked() -> None:
    # given
    raw = '{"PaymentMethod.CardNumber":["4111111111111111 is not a token"]}'

    # when
    parsed = codes.parse_error_body(400, raw)

    # then
    assert "4111111111111111" not in parsed.summary()
    assert "************1111" in parsed.summary()


@pytest.mark.parametrize("written", ["4539.5787.6362.1486", "4539  5787  6362  1486", "4539/5787/6362/1486"])
def test_given_an_error_message_echoing_a_grouped_card_number_when_parsed_then_it_is_masked(
    written: str,
) -> None:
    # given
    raw = json.dumps({"errors": {"BillingInformation.AddressLine2": [f"'{written}' is too long"]}})

    # when
    parsed = codes.parse_error_body(400, raw)

    # then
    assert "5787" not in parsed.summary()
    assert "************1486" in parsed.summary()


def test_given_a_success_envelope_when_checked_then_no_business_failure() -> None:
    # given
    body = load_fixture("sandbox-evaluate-response-challenge.json")["body"]

    # when / then
    assert codes.envelope_failure(body) is None


def test_given_success_false_without_failed_status_when_checked_then_success_is_ignored() -> None:
    # given
    body = {"success": False, "status": "SUBMITTED", "orderSessionKey": "ff-1"}

    # when / then
    assert codes.envelope_failure(body) is None


def test_given_a_rejection_when_its_summary_is_read_then_fields_messages_codes_and_trace_appear() -> None:
    # given
    body = codes.parse_error_body(200, load_fixture("sandbox-refund-failed.json")["body"])

    # when
    text = str(FlexFactorRejected(body))

    # then
    assert "code 2001" in text
    assert "greater than maximum refund amount" in text


# --- webhook events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("order.completed", Event.APPROVED),
        ("Order.Expired", Event.EXPIRED),
        ("ORDER.CANCELLED", Event.CANCELLED),
        ("order.refunded", None),
        ("payment.chargeback.received", None),
        ("order.capturerequired", None),
        ("challenge.presented", None),
        ("challenge.attempted", None),
        ("challenge.passed", None),
        ("challenge.failed", None),
        ("payout.created", None),
        ("payout.updated", None),
        ("something.new", None),
    ],
)
def test_given_a_webhook_event_name_when_mapped_then_only_order_outcomes_move_a_handoff(
    name: str, expected: Event | None
) -> None:
    # given / when
    outcome = codes.event_outcome(name)

    # then
    assert outcome is expected


def test_given_the_documented_events_when_walked_then_each_is_listed() -> None:
    # given
    documented = {
        "order.completed",
        "order.expired",
        "order.cancelled",
        "order.refunded",
        "payment.chargeback.received",
        "order.capturerequired",
        "challenge.presented",
        "challenge.attempted",
        "challenge.passed",
        "challenge.failed",
        "payout.created",
        "payout.updated",
    }

    # when / then
    assert set(codes.WEBHOOK_EVENTS) == documented


# --- transport errors ------------------------------------------------------------------------------


def test_given_every_requests_exception_class_when_looked_up_then_each_is_mapped_explicitly() -> None:
    # given
    classes = _requests_exception_classes()

    # when
    unmapped = [
        c.__qualname__
        for c in classes
        if f"requests.exceptions.{c.__qualname__}" not in codes.TRANSPORT_ERRORS
    ]

    # then
    assert len(classes) > 15
    assert unmapped == []


@pytest.mark.parametrize("cls", _requests_exception_classes(), ids=lambda c: c.__qualname__)
def test_given_an_instance_of_each_requests_exception_when_classified_then_a_flexfactor_error_class(
    cls: type[requests.RequestException],
) -> None:
    # given
    exc = cls("boom", "{", 0) if cls is requests.exceptions.JSONDecodeError else cls("boom")

    # when
    kind = codes.error_for_transport(exc)

    # then
    assert issubclass(kind, FlexFactorError)
    assert kind is codes.TRANSPORT_ERRORS[f"requests.exceptions.{cls.__qualname__}"]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectTimeout("connect"), FlexFactorNotSent),
        (requests.exceptions.ReadTimeout("read"), FlexFactorUnknownOutcome),
        (requests.exceptions.SSLError("handshake"), FlexFactorNotSent),
        (requests.exceptions.ChunkedEncodingError("cut"), FlexFactorUnknownOutcome),
        (requests.exceptions.MissingSchema("no scheme"), FlexFactorConfigError),
        (requests.exceptions.ContentDecodingError("gzip"), FlexFactorProtocolError),
    ],
)
def test_given_a_typical_requests_failure_when_classified_then_sent_or_not_is_decided_safely(
    exc: requests.RequestException, expected: type[FlexFactorError]
) -> None:
    # given / when
    kind = codes.error_for_transport(exc)

    # then
    assert kind is expected


def test_given_connection_refused_as_requests_reports_it_when_classified_then_not_sent() -> None:
    # given: requests wraps urllib3's MaxRetryError(reason=NewConnectionError) in ConnectionError
    reason = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
    exc = requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/evaluate", reason))  # type: ignore[arg-type]

    # when
    kind = codes.error_for_transport(exc)

    # then
    assert kind is FlexFactorNotSent


def test_given_a_connection_reset_after_sending_when_classified_then_unknown_outcome() -> None:
    # given: requests wraps urllib3's ProtocolError("Connection aborted.") in ConnectionError
    cause = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    exc = requests.exceptions.ConnectionError(cause)

    # when
    kind = codes.error_for_transport(exc)

    # then
    assert kind is FlexFactorUnknownOutcome


def test_given_an_exception_requests_never_raises_when_classified_then_unknown_outcome_is_assumed() -> None:
    # given
    exc = RuntimeError("surprise")

    # when
    kind = codes.error_for_transport(exc)

    # then
    assert kind is FlexFactorUnknownOutcome


# The words vendor look-ups use (ActiveMerchant's recordings and accepted names), with their numbers.
VENDOR_ORDER_NAMES = [
    ("APPROVED", 7, State.APPROVED),
    ("SUCCESS", 7, State.APPROVED),
    ("CHALLENGE", 0, None),
    ("SUBMITTED", 4, None),
    ("PROCESSING", 4, None),
    ("CAPTUREREQUIRED", 5, None),
    ("DECLINED", 2, State.CANCELLED),
    ("EXPIRED", 2, State.EXPIRED),
    ("REFUNDED", 6, State.APPROVED),
]


@pytest.mark.parametrize(
    ("name", "code", "expected"), VENDOR_ORDER_NAMES, ids=[n[0] for n in VENDOR_ORDER_NAMES]
)
def test_given_a_vendor_status_name_when_read_alone_or_with_its_number_then_both_agree_without_warning(
    caplog: pytest.LogCaptureFixture, name: str, code: int, expected: State | None
) -> None:
    # given
    caplog.set_level(logging.WARNING, logger=codes.__name__)

    # when
    by_name, name_state = codes.read_order_status(None, name.lower(), expiry_at=None, now=NOW)
    by_both, both_state = codes.read_order_status(code, name, expiry_at=None, now=NOW)

    # then
    assert by_name is by_both
    assert by_name.code == code
    assert name_state is both_state is expected
    assert "disagree" not in caplog.text


def test_given_status_2_named_expired_while_the_window_is_open_when_read_then_expired() -> None:
    # given / when
    _, state = codes.read_order_status(2, "EXPIRED", expiry_at=NOW + timedelta(days=1), now=NOW)

    # then
    assert state is State.EXPIRED
