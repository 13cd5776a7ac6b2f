"""The flows of a real FlexFactor client against the sandbox, each asserting the vendor's recorded answer.

The requests are shaped as ActiveMerchant's FlexCharge gateway builds them (`transactionType`, a raw
test card, `senseKey: null`, `Source`), and the expected answers are those its remote test file recorded
against the vendor sandbox; docs/sandbox-vendor-answers.md lists the sources and our choices.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recycle_engine.sandbox import RunningSandbox, SandboxConfig, run_sandbox
from recycle_engine.sandbox.state import iso
from tests.sandbox_helpers import SandboxApi

NOW = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
MID = "d9d0b5fd-9433-44d3-8051-63fee28768e8"
DAY = 86_400
CIT_CARD = "4111111111111111"  # the recordings' CIT card: CHALLENGE with a payer phone
MIT_CARD = "4000002760003184"  # the recordings' MIT card: APPROVED in sync mode

# The statuses ActiveMerchant counts as success, on /evaluate and on an order look-up alike.
CLIENT_SUCCESS_NAMES = {"APPROVED", "CHALLENGE", "SUBMITTED", "SUCCESS", "PROCESSING", "CAPTUREREQUIRED"}


def a_client_body(
    card: str,
    *,
    is_mit: bool | None,
    phone: str | None = "+99.2001a/+99.2001b",
    expiry: str | None = None,
    transaction_type: str = "Purchase",
) -> dict[str, Any]:
    """A body as the FlexCharge gateway sends it: CIT without `expiry` gets tomorrow, as its tests do."""
    order_id = str(uuid.uuid4())
    body: dict[str, Any] = {
        "transactionType": transaction_type,
        "siteId": "ffae80fd-2b8e-487a-94c3-87503a0c71bb",
        "mid": MID,
        "isDeclined": True,
        "orderId": order_id,
        "idempotencyKey": str(uuid.uuid4()),
        "senseKey": None,
        "transaction": {
            "id": order_id,
            "dynamicDescriptor": "MyShoesStore",
            "timestamp": iso(NOW),
            "timezoneUtcOffset": "-5",
            "amount": 100,
            "currency": "USD",
            "responseCode": "100",
            "responseCodeSource": "nmi",
            "avsResultCode": "200",
            "cvvResultCode": "111",
            "cavvResultCode": "111",
            "cardNotPresent": False,
        },
        "paymentMethod": {
            "holderName": "Cure Tester",
            "cardType": "CREDIT",
            "cardBrand": "VISA",
            "expirationMonth": 9,
            "expirationYear": 2030,
            "cardBinNumber": card[:6],
            "cardLast4Digits": card[-4:],
            "cardNumber": card,
            "verificationValue": "999",
            "Token": False,
        },
        "billingInformation": {
            "firstName": "Cure",
            "lastName": "Tester",
            "country": "CA",
            "phone": "(555)555-5555",  # a billing phone is not the payer's phone
            "countryCode": "CA",
            "addressLine1": "456 My Street",
            "city": "Ottawa",
            "zipCode": "K1C2N6",
        },
        "payer": {"email": "test@gmail.com"},
        "Source": "Spreedly",
    }
    if phone is not None:
        body["payer"]["phone"] = phone
    if is_mit is not None:
        body["isMIT"] = is_mit
        body["isRecurring"] = False
        body["expiryDateUtc"] = expiry
    return body


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox(SandboxConfig(mid=MID)) as running:
        yield running


@pytest.fixture
def api(sandbox: RunningSandbox) -> Iterator[SandboxApi]:
    client = SandboxApi(sandbox.base_url, sandbox.admin_url)
    client.admin("/reset", {})
    client.admin("/clock", {"now": iso(NOW), "frozen": True})
    client.login()
    yield client
    client.close()


def tomorrow() -> str:
    return iso(NOW + timedelta(days=1))


# --- purchase ------------------------------------------------------------------------------------


def test_given_a_cit_purchase_with_a_payer_phone_when_evaluated_then_challenge_and_the_look_up_says_challenge(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(CIT_CARD, is_mit=False, expiry=tomorrow())

    # when
    answer = api.post("/evaluate", body).json()
    looked_up = api.get(f"/orders/{answer['orderId']}").json()

    # then
    assert (answer["success"], answer["status"]) == (True, "CHALLENGE")
    assert (looked_up["status"], looked_up["statusName"]) == (0, "CHALLENGE")


def test_given_a_cit_purchase_without_a_payer_phone_when_evaluated_then_declined_even_on_the_challenge_card(
    api: SandboxApi,
) -> None:
    # given: only the billing address carries a phone, as in the recording
    body = a_client_body(CIT_CARD, is_mit=False, phone=None, expiry=tomorrow())

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 200
    assert answer.json()["status"] == "DECLINED"
    looked_up = api.get(f"/orders/{answer.json()['orderId']}").json()
    assert (looked_up["status"], looked_up["statusName"]) == (2, "DECLINED")


def test_given_a_cit_purchase_without_a_payer_phone_on_the_rescue_card_when_evaluated_then_declined(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(MIT_CARD, is_mit=False, phone=None, expiry=tomorrow())

    # when
    answer = api.post("/evaluate", body).json()

    # then
    assert answer["status"] == "DECLINED"


def test_given_a_cit_purchase_on_the_rescue_card_when_approved_then_the_look_up_names_it_approved(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(MIT_CARD, is_mit=False, phone="998888", expiry=tomorrow())

    # when
    answer = api.post("/evaluate", body).json()
    looked_up = api.get(f"/orders/{answer['orderId']}").json()

    # then
    assert answer["status"] == "APPROVED"
    assert (looked_up["status"], looked_up["statusName"]) == (7, "APPROVED")
    assert looked_up["statusName"] in CLIENT_SUCCESS_NAMES


# --- MIT without an expiry -------------------------------------------------------------------------


def test_given_sync_mode_when_an_mit_is_evaluated_with_a_null_expiry_then_approved(api: SandboxApi) -> None:
    # given
    api.admin("/config", {"mit_mode": {MID: "sync"}})
    body = a_client_body(MIT_CARD, is_mit=True, expiry=None)
    assert body["expiryDateUtc"] is None

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 200
    assert answer.json()["status"] == "APPROVED"
    looked_up = api.get(f"/orders/{answer.json()['orderId']}").json()
    assert (looked_up["status"], looked_up["statusName"], looked_up["expiryDate"]) == (7, "APPROVED", None)


def test_given_sync_mode_when_an_mit_without_expiry_is_not_rescued_then_declined_at_once(
    api: SandboxApi,
) -> None:
    # given: no window means nothing to keep working on
    api.admin("/config", {"mit_mode": {MID: "sync"}})
    body = a_client_body("4000000000000259", is_mit=True, expiry=None)

    # when
    answer = api.post("/evaluate", body).json()
    moved = api.admin("/clock", {"advance_seconds": 30 * DAY})

    # then
    assert answer["status"] == "DECLINED"
    assert moved["settled"] == 0


@pytest.mark.parametrize("expiry", [None, ""], ids=["null", "empty"])
def test_given_managed_mode_when_an_mit_is_evaluated_without_expiry_then_400_names_expiry(
    api: SandboxApi, expiry: str | None
) -> None:
    # given
    body = a_client_body(MIT_CARD, is_mit=True, expiry=expiry)

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 400
    assert answer.json()["ExpiryDateUtc"] == ["The field ExpiryDateUtc is invalid."]
    assert api.orders() == []


# --- authorize, look up, void ----------------------------------------------------------------------


def test_given_an_authorization_when_evaluated_then_capture_required_and_the_look_up_says_so(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(
        MIT_CARD, is_mit=False, phone="998888", expiry=tomorrow(), transaction_type="Authorization"
    )

    # when
    answer = api.post("/evaluate", body).json()
    looked_up = api.get(f"/orders/{answer['orderId']}")

    # then
    assert (answer["success"], answer["status"]) == (True, "CAPTUREREQUIRED")
    assert looked_up.status_code == 200
    assert (looked_up.json()["status"], looked_up.json()["statusName"]) == (5, "CAPTUREREQUIRED")


def test_given_a_capture_required_order_when_voided_then_an_empty_object_and_the_order_is_cancelled(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(
        MIT_CARD, is_mit=False, phone="998888", expiry=tomorrow(), transaction_type="authorization"
    )
    order_id = api.post("/evaluate", body).json()["orderId"]

    # when
    voided = api.post(f"/orders/{order_id}/cancel", {})

    # then
    assert (voided.status_code, voided.json()) == (200, {})
    looked_up = api.get(f"/orders/{order_id}").json()
    assert (looked_up["status"], looked_up["statusName"]) == (2, "CANCELLED")


def test_given_a_purchase_when_approved_then_it_cannot_be_voided(api: SandboxApi) -> None:
    # given: the same card and phone without transactionType Authorization
    body = a_client_body(MIT_CARD, is_mit=False, phone="998888", expiry=tomorrow())
    order_id = api.post("/evaluate", body).json()["orderId"]

    # when
    voided = api.post(f"/orders/{order_id}/cancel", {})

    # then
    assert voided.status_code == 400
    assert api.get(f"/orders/{order_id}").json()["statusName"] == "APPROVED"


def test_given_a_managed_mit_authorization_when_rescued_then_capture_required_with_its_webhook_event(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(
        MIT_CARD, is_mit=True, expiry=iso(NOW + timedelta(days=5)), transaction_type="Authorization"
    )
    order_id = api.post("/evaluate", body).json()["orderId"]

    # when
    api.advance(DAY)

    # then
    looked_up = api.get(f"/orders/{order_id}").json()
    assert (looked_up["status"], looked_up["statusName"]) == (5, "CAPTUREREQUIRED")
    assert [w["event"] for w in api.admin("/webhooks")["items"]] == ["order.capturerequired"]


def test_given_an_unknown_transaction_type_when_evaluated_then_400_names_it(api: SandboxApi) -> None:
    # given
    body = a_client_body(MIT_CARD, is_mit=False, expiry=tomorrow(), transaction_type="Capture")

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 400
    assert set(answer.json()) == {"TraceId", "TransactionType"}


# --- order look-up names -------------------------------------------------------------------------


def test_given_a_managed_mit_when_looked_up_before_and_after_its_rescue_then_submitted_then_approved(
    api: SandboxApi,
) -> None:
    # given
    body = a_client_body(MIT_CARD, is_mit=True, expiry=iso(NOW + timedelta(days=5)))
    order_id = api.post("/evaluate", body).json()["orderId"]

    # when
    before = api.get(f"/orders/{order_id}").json()
    api.advance(DAY)
    after = api.get(f"/orders/{order_id}").json()

    # then
    assert (before["status"], before["statusName"]) == (4, "SUBMITTED")
    assert (after["status"], after["statusName"]) == (7, "APPROVED")


def test_given_a_managed_mit_when_its_window_closes_then_the_look_up_says_expired(api: SandboxApi) -> None:
    # given
    body = a_client_body("4000000000000259", is_mit=True, expiry=iso(NOW + timedelta(days=2)))
    order_id = api.post("/evaluate", body).json()["orderId"]

    # when
    api.advance(2 * DAY)

    # then
    looked_up = api.get(f"/orders/{order_id}").json()
    assert (looked_up["status"], looked_up["statusName"]) == (2, "EXPIRED")


def test_given_orders_when_listed_then_the_status_name_map_uses_the_vendor_words(api: SandboxApi) -> None:
    # given / when
    names = api.get("/orders").json()["statusNames"]

    # then
    assert (names["0"], names["4"], names["5"], names["7"]) == (
        "CHALLENGE",
        "PROCESSING",
        "CAPTUREREQUIRED",
        "APPROVED",
    )
    assert not {"COMPLETED", "DRAFT"} & set(names.values())
