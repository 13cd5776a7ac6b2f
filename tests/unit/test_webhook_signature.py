"""Webhook signature verification against the vendor's own vector (contract 9.4), plus payload parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recycle_engine.adapters.flexfactor_webhooks import (
    InMemoryNonceCache,
    VerifiedDelivery,
    WebhookMalformed,
    WebhookRejected,
    event_outcome,
    parse_event,
    verify_signature,
)
from recycle_engine.domain.states import Event
from recycle_engine.errors import InputError
from tests.conftest import load_fixture

SIGNED_AT = datetime(2023, 3, 20, 17, 16, 40, tzinfo=UTC)
TOLERANCE_S = 300


@pytest.fixture
def vector() -> dict[str, Any]:
    return load_fixture("webhook-signature-vector.json")


def _verify(
    vector: dict[str, Any],
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str | None = None,
    key: str | None = None,
    now: datetime = SIGNED_AT,
    nonces: InMemoryNonceCache | None = None,
) -> VerifiedDelivery:
    return verify_signature(
        body if body is not None else vector["body"].encode("utf-8"),
        headers if headers is not None else dict(vector["headers"]),
        signing_key_b64=key if key is not None else vector["signing_key_base64"],
        host=host if host is not None else vector["endpoint_host"],
        now=now,
        tolerance_s=TOLERANCE_S,
        nonces=nonces if nonces is not None else InMemoryNonceCache(),
    )


def test_given_the_vendor_vector_when_verified_at_its_date_then_it_is_accepted(
    vector: dict[str, Any],
) -> None:
    # given
    body = vector["body"].encode("utf-8")

    # when
    delivery = _verify(vector, body=body)

    # then
    assert len(body) == 255
    assert delivery.nonce == "5f1c2de28a76457c9cb79d1740f2260a"
    assert delivery.signed_at == SIGNED_AT
    assert delivery.body_signature_ok is True


def test_given_header_names_in_other_cases_when_verified_then_accepted(vector: dict[str, Any]) -> None:
    # given
    headers = {k.upper(): v for k, v in vector["headers"].items()}

    # when
    delivery = _verify(vector, headers=headers)

    # then
    assert delivery.body_signature_ok is True


def test_given_one_body_byte_changed_when_verified_then_content_hash_mismatch(vector: dict[str, Any]) -> None:
    # given
    body = bytearray(vector["body"].encode("utf-8"))
    body[10] ^= 0x01

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, body=bytes(body))
    assert caught.value.reason == "content hash mismatch"


def test_given_a_changed_body_with_a_matching_hash_header_when_verified_then_bad_signature(
    vector: dict[str, Any],
) -> None:
    # given: an attacker recomputes the content hash but cannot sign it
    body = vector["body"].replace("order.completed", "order.cancelled").encode()
    headers = dict(vector["headers"])
    headers["x-fc-content-sha512"] = base64.b64encode(hashlib.sha512(body).digest()).decode()

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, body=body, headers=headers)
    assert caught.value.reason == "bad signature"


@pytest.mark.parametrize(
    ("change", "header", "value"),
    [
        ("the nonce", "x-fc-nonce", "5f1c2de28a76457c9cb79d1740f2260b"),
        ("the date", "x-fc-date", "Mon, 20 Mar 2023 17:16:41 GMT"),
    ],
)
def test_given_a_signed_header_changed_when_verified_then_bad_signature(
    vector: dict[str, Any], change: str, header: str, value: str
) -> None:
    # given
    headers = dict(vector["headers"])
    headers[header] = value

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, headers=headers)
    assert caught.value.reason == "bad signature", change


def test_given_another_host_when_verified_then_bad_signature(vector: dict[str, Any]) -> None:
    # given
    host = "evil.example.com"

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, host=host)
    assert caught.value.reason == "bad signature"


def _signed_for(vector: dict[str, Any], host: str) -> dict[str, str]:
    headers = dict(vector["headers"])
    string_to_sign = (
        f"POST\n{headers['x-fc-nonce']};{headers['x-fc-date']};{host};{headers['x-fc-content-sha512']}"
    )
    key = base64.b64decode(vector["signing_key_base64"])
    signature = base64.b64encode(hmac.new(key, string_to_sign.encode(), hashlib.sha512).digest()).decode()
    headers["x-fc-authorization"] = (
        f"HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512&Signature={signature}"
    )
    return headers


@pytest.mark.parametrize(
    ("signed", "received", "accepted"),
    [
        ("hooks.example.com:8443", "hooks.example.com:8443", True),
        ("hooks.example.com", "hooks.example.com:8443", True),
        ("hooks.example.com", "hooks.example.com:443", True),
        ("[::1]", "[::1]:9000", True),
        ("hooks.example.com:9443", "hooks.example.com:8443", False),
        ("hooks.example.com:8443", "hooks.example.com", False),
        ("other.example.com", "hooks.example.com:8443", False),
    ],
    ids=[
        "with-port",
        "bare-name-for-a-port",
        "bare-name-for-the-default-port",
        "ipv6-bare-name",
        "another-port",
        "port-signed-bare-received",
        "another-name",
    ],
)
def test_given_a_host_with_a_port_when_verified_then_its_own_or_its_bare_name_is_accepted(
    vector: dict[str, Any], signed: str, received: str, accepted: bool
) -> None:
    # given
    headers = _signed_for(vector, signed)

    # when / then
    if accepted:
        _verify(vector, headers=headers, host=received)
    else:
        with pytest.raises(WebhookRejected, match="bad signature"):
            _verify(vector, headers=headers, host=received)


def test_given_another_key_when_verified_then_bad_signature(vector: dict[str, Any]) -> None:
    # given
    key = base64.b64encode(b"\x01" * 64).decode()

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, key=key)
    assert caught.value.reason == "bad signature"


def test_given_the_vector_when_hmac_of_the_body_is_computed_then_it_equals_x_fc_signature(
    vector: dict[str, Any],
) -> None:
    # given
    key = base64.b64decode(vector["signing_key_base64"])

    # when
    signature = base64.b64encode(hmac.new(key, vector["body"].encode(), hashlib.sha512).digest()).decode()

    # then
    assert signature == vector["headers"]["x-fc-signature"]


def test_given_a_wrong_x_fc_signature_when_verified_then_accepted_but_the_mismatch_is_logged(
    vector: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given
    headers = dict(vector["headers"])
    headers["x-fc-signature"] = base64.b64encode(b"\x00" * 64).decode()
    caplog.set_level(logging.WARNING)

    # when
    delivery = _verify(vector, headers=headers)

    # then
    assert delivery.body_signature_ok is False
    assert "x-fc-signature" in caplog.text
    assert vector["signing_key_base64"] not in caplog.text


def test_given_no_x_fc_signature_when_verified_then_accepted_with_no_body_verdict(
    vector: dict[str, Any],
) -> None:
    # given
    headers = {k: v for k, v in vector["headers"].items() if k != "x-fc-signature"}

    # when
    delivery = _verify(vector, headers=headers)

    # then
    assert delivery.body_signature_ok is None


@pytest.mark.parametrize("missing", ["x-fc-nonce", "x-fc-date", "x-fc-content-sha512", "x-fc-authorization"])
def test_given_a_required_header_missing_when_verified_then_rejected_naming_it(
    vector: dict[str, Any], missing: str
) -> None:
    # given
    headers = {k: v for k, v in vector["headers"].items() if k.lower() != missing}

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, headers=headers)
    assert caught.value.reason == f"missing header {missing}"


def test_given_another_scheme_when_verified_then_unsupported_scheme(vector: dict[str, Any]) -> None:
    # given
    headers = dict(vector["headers"])
    headers["x-fc-authorization"] = headers["x-fc-authorization"].replace("HMAC-SHA512", "HMAC-SHA256")

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, headers=headers)
    assert caught.value.reason == "unsupported scheme"


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(seconds=TOLERANCE_S), True),  # exactly at the edge counts as fresh
        (timedelta(seconds=TOLERANCE_S + 1), False),
        (timedelta(seconds=-TOLERANCE_S - 1), False),  # from the future
    ],
)
def test_given_a_clock_around_the_tolerance_when_verified_then_stale_dates_are_refused(
    vector: dict[str, Any], offset: timedelta, accepted: bool
) -> None:
    # given
    now = SIGNED_AT + offset

    # when / then
    if accepted:
        assert _verify(vector, now=now).signed_at == SIGNED_AT
    else:
        with pytest.raises(WebhookRejected) as caught:
            _verify(vector, now=now)
        assert caught.value.reason == "stale date"


def test_given_the_same_delivery_twice_when_verified_then_the_replay_is_refused(
    vector: dict[str, Any],
) -> None:
    # given
    nonces = InMemoryNonceCache()
    _verify(vector, nonces=nonces)

    # when / then
    with pytest.raises(WebhookRejected) as caught:
        _verify(vector, nonces=nonces, now=SIGNED_AT + timedelta(seconds=5))
    assert caught.value.reason == "replayed nonce"


def test_given_a_nonce_past_its_window_when_the_cache_is_used_then_it_is_forgotten() -> None:
    # given
    nonces = InMemoryNonceCache()
    nonces.remember("n1", until=SIGNED_AT, now=SIGNED_AT - timedelta(seconds=1))

    # when
    accepted = nonces.remember(
        "n2", until=SIGNED_AT + timedelta(minutes=5), now=SIGNED_AT + timedelta(seconds=1)
    )

    # then
    assert accepted is True
    assert len(nonces) == 1


def test_given_a_rejection_when_raised_then_it_is_an_input_error_without_the_key(
    vector: dict[str, Any],
) -> None:
    # given
    headers = dict(vector["headers"])
    headers["x-fc-nonce"] = "0" * 32

    # when
    with pytest.raises(InputError) as caught:
        _verify(vector, headers=headers)

    # then
    assert vector["signing_key_base64"] not in str(caught.value)
    assert vector["signing_key_base64"] not in repr(caught.value)


# --- payload parsing -------------------------------------------------------------------------------


def test_given_the_vector_body_when_parsed_then_every_field_is_read(vector: dict[str, Any]) -> None:
    # given
    body = vector["body"].encode()

    # when
    event = parse_event(body)

    # then
    assert event.event == "order.completed"
    assert event.timestamp == datetime(2023, 3, 20, 17, 16, 40, 898703, tzinfo=UTC)
    assert event.flexfactor_order_id == "ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429"
    assert event.external_order_id == "a9735210-1349-49bf-bfde-b737dd07872a"
    assert event.confirmation_id == "22ACD1D9"
    assert (event.is_test_mode, event.is_resent) == (True, False)
    assert event_outcome(event.event) is Event.APPROVED


def test_given_camel_case_names_when_parsed_then_read_case_insensitively() -> None:
    # given
    body = b'{"event":"Order.Expired","orderId":"ff-1","externalOrderId":"sub-1","isResent":true}'

    # when
    event = parse_event(body)

    # then
    assert (event.event, event.flexfactor_order_id, event.external_order_id) == (
        "order.expired",
        "ff-1",
        "sub-1",
    )
    assert event.is_resent is True
    assert event.confirmation_id is None
    assert event_outcome(event.event) is Event.EXPIRED


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1,2]",
        b'{"OrderId":"x"}',
        b'{"Event":"order.completed","TimeStamp":"yesterday"}',
    ],
)
def test_given_a_body_that_is_not_an_event_when_parsed_then_malformed(body: bytes) -> None:
    # given / when / then
    with pytest.raises(WebhookMalformed):
        parse_event(body)
