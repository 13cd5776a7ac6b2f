"""Every vendor fixture parses as contract section 13 says."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from recycle_engine.adapters import flexfactor_codes as codes
from recycle_engine.domain.states import State
from recycle_engine.ports import VendorStatus
from tests.conftest import load_fixture


def test_given_the_recorded_token_answer_when_read_then_expires_is_epoch_milliseconds() -> None:
    # given
    body = load_fixture("sandbox-token-response.json")["body"]

    # when
    token, expires_at = codes.read_token(body)

    # then
    assert token == body["accessToken"]
    assert expires_at == datetime(2024, 4, 4, 13, 39, 8, 565000, tzinfo=UTC)
    response_date = datetime(2024, 4, 4, 13, 29, 8, tzinfo=UTC)  # the Date header in its note
    assert abs((expires_at - response_date).total_seconds() - 600) < 1


def test_given_the_challenge_answer_when_read_then_our_id_is_the_order_session_key_and_state_submitted() -> (
    None
):
    # given
    artifact = load_fixture("sandbox-evaluate-response-challenge.json")
    sent_order_id = load_fixture("sandbox-evaluate-request-cit.json")["body"]["orderId"]

    # when
    answer = codes.evaluate_answer(artifact["body"])

    # then
    assert answer.flexfactor_order_id == "e97b1ff1-4449-46da-bc6c-a76d23f16353"
    assert answer.flexfactor_order_id != sent_order_id
    assert answer.vendor_status is VendorStatus.CHALLENGE
    assert answer.state is State.SUBMITTED
    assert answer.needs_attention is None
    assert codes.envelope_failure(artifact["body"]) is None


def test_given_the_flat_validation_error_when_parsed_then_trace_id_lifted_and_one_field_error() -> None:
    # given
    artifact = load_fixture("sandbox-error-validation-flat.json")

    # when
    parsed = codes.parse_error_body(artifact["http_status"], artifact["body"])

    # then
    assert parsed.http_status == 400
    assert parsed.trace_id == "00-bf5a1XXXTRACEXXX174b8a-f58XXXIDXXX32-01"
    assert dict(parsed.field_errors) == {"IdempotencyKey": ("The IdempotencyKey field is required.",)}


def test_given_the_nested_validation_error_when_parsed_then_trace_id_lifted_and_seven_field_errors() -> None:
    # given
    artifact = load_fixture("sandbox-error-validation-nested.json")

    # when
    parsed = codes.parse_error_body(artifact["http_status"], artifact["body"])

    # then
    assert parsed.trace_id == "00-3b4af05c51be4aa7dd77104ac75f252b-004c728c64ca280d-01"
    assert len(parsed.field_errors) == 7
    assert "TraceId" not in parsed.field_errors
    assert parsed.field_errors["Transaction.Id"] == ("The Id field is required.",)
    assert codes.field_messages(parsed, "TRANSACTION.AVSRESULTCODE") == (
        "The AvsResultCode field is required.",
    )


def test_given_the_nested_error_as_raw_bytes_when_parsed_then_same_result_as_from_the_object() -> None:
    # given
    body = load_fixture("sandbox-error-validation-nested.json")["body"]

    # when
    from_bytes = codes.parse_error_body(400, json.dumps(body).encode())

    # then
    assert from_bytes == codes.parse_error_body(400, body)


def test_given_the_refund_failure_when_checked_then_business_failure_with_code_2001() -> None:
    # given
    artifact = load_fixture("sandbox-refund-failed.json")

    # when
    failure = codes.envelope_failure(artifact["body"])

    # then
    assert artifact["http_status"] == 200
    assert failure is not None
    assert failure.http_status == 200
    assert "2001" in failure.codes
    assert failure.messages[0].startswith("Amount to refund (1.00) is greater than maximum refund amount")
