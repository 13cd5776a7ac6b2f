"""The sandbox webhook signer reproduces the vendor's published signature vector."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook, signed_host
from tests.conftest import load_fixture

SIGNATURE_HEADERS = ("x-fc-content-sha512", "x-fc-authorization", "x-fc-signature")


def test_given_the_vendor_vector_when_signing_its_body_then_all_three_headers_match_byte_for_byte() -> None:
    # given
    vector = load_fixture("webhook-signature-vector.json")
    headers = vector["headers"]

    # when
    signed = sign_webhook(
        vector["body"].encode("utf-8"),
        vector["signing_key_base64"],
        nonce=headers["x-fc-nonce"],
        date=headers["x-fc-date"],
        host=vector["endpoint_host"],
    )

    # then
    assert set(signed) == set(SIGNATURE_HEADERS)
    for name in SIGNATURE_HEADERS:
        assert signed[name] == headers[name], name


def test_given_the_vector_when_one_body_byte_changes_then_every_signature_header_changes() -> None:
    # given
    vector = load_fixture("webhook-signature-vector.json")
    headers = vector["headers"]
    tampered = vector["body"].replace("22ACD1D9", "22ACD1D8").encode("utf-8")

    # when
    signed = sign_webhook(
        tampered,
        vector["signing_key_base64"],
        nonce=headers["x-fc-nonce"],
        date=headers["x-fc-date"],
        host=vector["endpoint_host"],
    )

    # then
    for name in SIGNATURE_HEADERS:
        assert signed[name] != headers[name], name


def test_given_the_vector_when_host_differs_then_only_the_authorization_changes() -> None:
    # given
    vector = load_fixture("webhook-signature-vector.json")
    headers = vector["headers"]

    # when
    signed = sign_webhook(
        vector["body"].encode("utf-8"),
        vector["signing_key_base64"],
        nonce=headers["x-fc-nonce"],
        date=headers["x-fc-date"],
        host="127.0.0.1:9999",
    )

    # then
    assert signed["x-fc-authorization"] != headers["x-fc-authorization"]
    assert signed["x-fc-content-sha512"] == headers["x-fc-content-sha512"]
    assert signed["x-fc-signature"] == headers["x-fc-signature"]


def test_given_the_vector_instant_when_formatting_http_date_then_it_matches_x_fc_date() -> None:
    # given
    at = datetime(2023, 3, 20, 17, 16, 40, 898703, tzinfo=UTC)

    # when
    formatted = http_date(at)

    # then
    assert formatted == load_fixture("webhook-signature-vector.json")["headers"]["x-fc-date"]


def test_given_two_nonces_when_generated_then_they_are_32_hex_characters_and_differ() -> None:
    # given / when
    first, second = new_nonce(), new_nonce()

    # then
    assert len(first) == 32
    assert set(first) <= set("0123456789abcdef")
    assert first != second


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://fctestwebhook.free.beeceptor.com/", "fctestwebhook.free.beeceptor.com"),
        ("https://fctestwebhook.free.beeceptor.com:443/hook", "fctestwebhook.free.beeceptor.com"),
        ("http://hooks.example.com:80/hook", "hooks.example.com"),
        ("https://Hooks.Example.com:8443/webhooks/flexfactor/ff", "hooks.example.com:8443"),
        ("http://127.0.0.1:8080/webhooks/flexfactor/ff", "127.0.0.1:8080"),
        ("https://user:secret@hooks.example.com/hook", "hooks.example.com"),
        ("http://[::1]:9000/hook", "[::1]:9000"),
        ("https://[::1]/hook", "[::1]"),
    ],
    ids=[
        "bare",
        "default-https-port",
        "default-http-port",
        "port",
        "loopback-port",
        "user-info",
        "ipv6-port",
        "ipv6",
    ],
)
def test_given_a_webhook_url_when_its_signed_host_is_derived_then_it_is_the_host_header_value(
    url: str, host: str
) -> None:
    # given / when
    derived = signed_host(url)

    # then
    assert derived == host


def test_given_the_vector_endpoint_as_a_url_when_signed_by_its_derived_host_then_the_vector_is_reproduced() -> (
    None
):
    # given: the vendor's sample posts to its endpoint over HTTPS without a port
    vector = load_fixture("webhook-signature-vector.json")
    headers = vector["headers"]
    url = f"https://{vector['endpoint_host']}:443/"

    # when
    signed = sign_webhook(
        vector["body"].encode("utf-8"),
        vector["signing_key_base64"],
        nonce=headers["x-fc-nonce"],
        date=headers["x-fc-date"],
        host=signed_host(url),
    )

    # then
    assert signed["x-fc-authorization"] == headers["x-fc-authorization"]


@pytest.mark.parametrize("url", ["not a url", "https://:8443/hook"])
def test_given_a_url_without_a_host_when_its_signed_host_is_derived_then_value_error(url: str) -> None:
    # given / when / then
    with pytest.raises(ValueError, match="no host"):
        signed_host(url)
