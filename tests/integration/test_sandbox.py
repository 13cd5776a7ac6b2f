"""The FlexFactor sandbox over real HTTP: token, evaluate, idempotency, outcomes, webhooks, orders, faults."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from recycle_engine.sandbox import SANDBOX_SIGNING_KEY_B64, RunningSandbox, SandboxConfig, run_sandbox
from recycle_engine.sandbox.signing import http_date, sign_webhook
from recycle_engine.sandbox.state import iso
from tests.conftest import load_fixture
from tests.sandbox_helpers import CIT_FIXTURE, Delivery, SandboxApi, WebhookReceiver, a_cit_body, a_mit_body

NOW = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
FIXTURE_MID = load_fixture(CIT_FIXTURE)["body"]["mid"]
DAY = 86_400


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    # The merchant of the recorded CIT request, so that request is accepted exactly as recorded.
    with run_sandbox(SandboxConfig(mid=FIXTURE_MID)) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def api(sandbox: RunningSandbox, receiver: WebhookReceiver) -> Iterator[SandboxApi]:
    """A logged-in client on a fresh sandbox whose clock is frozen at NOW and whose webhooks reach `receiver`."""
    client = SandboxApi(sandbox.base_url, sandbox.admin_url)
    client.admin("/reset", {})
    client.admin("/clock", {"now": iso(NOW), "frozen": True})
    client.admin("/config", {"webhook_url": receiver.url})
    receiver.deliveries.clear()
    receiver.answer_status = 200
    client.login()
    yield client
    client.close()


def assert_signed(delivery: Delivery) -> None:
    h = delivery.headers
    expected = sign_webhook(
        delivery.body, SANDBOX_SIGNING_KEY_B64, nonce=h["x-fc-nonce"], date=h["x-fc-date"], host=h["host"]
    )
    for name, value in expected.items():
        assert h[name] == value, name


# --- token ----------------------------------------------------------------------------------------


def test_given_the_sandbox_keys_when_a_token_is_requested_then_the_body_has_the_recorded_keys(
    api: SandboxApi,
) -> None:
    # given
    recorded = load_fixture("sandbox-token-response.json")["body"]

    # when
    answer = api.post("/oauth2/token", {"appKey": "sandbox-app-key", "APPSECRET": "sandbox-app-secret"})

    # then
    assert answer.status_code == 200
    body = answer.json()
    assert list(body) == list(recorded)
    assert body["expires"] == int((NOW + timedelta(seconds=600)).timestamp() * 1000)
    assert body["accessToken"].count(".") == 2


def test_given_wrong_keys_when_a_token_is_requested_then_400_with_a_flat_body(api: SandboxApi) -> None:
    # given / when
    answer = api.post("/oauth2/token", {"AppKey": "sandbox-app-key", "AppSecret": "wrong"})

    # then
    assert answer.status_code == 400
    assert set(answer.json()) == {"TraceId", "AppKey"}


def test_given_a_token_when_the_clock_passes_its_expiry_then_calls_get_401(api: SandboxApi) -> None:
    # given
    api.admin("/clock", {"advance_seconds": 599})
    assert api.get("/orders").status_code == 200

    # when
    api.admin("/clock", {"advance_seconds": 1})
    expired = api.get("/orders")

    # then
    assert expired.status_code == 401
    api.session.headers.pop("Authorization")
    assert api.get("/orders").status_code == 401


# --- evaluate: validation and acceptance -------------------------------------------------------


def test_given_the_recorded_cit_request_when_sent_unchanged_then_it_is_accepted_with_challenge(
    api: SandboxApi,
) -> None:
    # given
    body = load_fixture(CIT_FIXTURE)["body"]

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 200
    payload = answer.json()
    assert list(payload) == list(load_fixture("sandbox-evaluate-response-challenge.json")["body"])
    assert payload["status"] == "CHALLENGE"
    assert payload["orderId"] == payload["orderSessionKey"] != body["orderId"]
    order = api.get(f"/orders/{payload['orderSessionKey']}").json()
    assert (order["status"], order["statusName"], order["externalOrderId"]) == (
        0,
        "CHALLENGE",
        body["orderId"],
    )


def test_given_no_idempotency_key_when_evaluated_then_400_in_the_recorded_flat_shape(api: SandboxApi) -> None:
    # given
    body = a_cit_body()
    del body["idempotencyKey"]

    # when
    answer = api.post("/evaluate", body)

    # then
    recorded = load_fixture("sandbox-error-validation-flat.json")
    assert answer.status_code == recorded["http_status"]
    assert set(answer.json()) == set(recorded["body"])
    assert answer.json()["IdempotencyKey"] == recorded["body"]["IdempotencyKey"]
    assert answer.json()["TraceId"][0].startswith("00-")


def test_given_nested_errors_configured_when_fields_are_missing_then_400_in_the_recorded_nested_shape(
    api: SandboxApi,
) -> None:
    # given
    recorded = load_fixture("sandbox-error-validation-nested.json")["body"]
    api.admin("/config", {"error_shape": "nested"})
    body = a_cit_body()
    for name in ("orderId", "isDeclined", "idempotencyKey"):
        del body[name]
    for name in ("id", "responseCode", "avsResultCode"):
        del body["transaction"][name]
    body["transaction"]["cvvResultCode"] = ""  # an empty string counts as missing

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 400
    payload = answer.json()
    assert payload["status"] == recorded["status"]
    assert set(payload["errors"]) == set(recorded["errors"])
    for path, messages in recorded["errors"].items():
        if path != "TraceId":
            assert payload["errors"][path] == messages, path


@pytest.mark.parametrize(
    ("expiry_days", "accepted"),
    [(-1 / DAY, False), (0, False), (1 / DAY, True), (21, True), (21 + 1 / DAY, False)],
    ids=["one-second-ago", "exactly-now", "one-second-ahead", "exactly-21-days", "21-days-and-one-second"],
)
def test_given_an_mit_expiry_when_evaluated_then_it_must_lie_in_the_next_21_days(
    api: SandboxApi, expiry_days: float, accepted: bool
) -> None:
    # given
    body = a_mit_body(NOW, expiry_days=expiry_days)

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == (200 if accepted else 400)
    if not accepted:
        assert set(answer.json()) == {"TraceId", "ExpiryDateUtc"}


@pytest.mark.parametrize(
    ("change", "field_path"),
    [
        (lambda b: b.pop("expiryDateUtc"), "ExpiryDateUtc"),
        (lambda b: b.update(mid="00000000-0000-4000-8000-000000000000"), "Mid"),
        (lambda b: b["transaction"].update(amount=0), "Transaction.Amount"),
        (lambda b: b["transaction"].update(amount=27.49), "Transaction.Amount"),
        (lambda b: b["transaction"].pop("cavvResultCode"), "Transaction.CavvResultCode"),
        (lambda b: b["transaction"].update(responseCodeSource=" "), "Transaction.ResponseCodeSource"),
        (lambda b: b["payer"].pop("email"), "Payer.Email"),
        (lambda b: b.pop("billingInformation"), "BillingInformation"),
        (lambda b: b["paymentMethod"].update(cardNumber=""), "PaymentMethod.CardNumber"),
    ],
)
def test_given_an_mit_body_missing_a_required_value_when_evaluated_then_400_names_its_path(
    api: SandboxApi, change: Any, field_path: str
) -> None:
    # given
    body = a_mit_body(NOW)
    change(body)

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 400
    assert set(answer.json()) == {"TraceId", field_path}
    assert api.orders() == []


def test_given_pascal_case_names_when_evaluated_then_they_bind_like_camel_case(api: SandboxApi) -> None:
    # given
    body = a_mit_body(NOW, last4="3184")
    body["Transaction"] = body.pop("transaction")
    body["Transaction"]["ResponseCode"] = body["Transaction"].pop("responseCode")
    body["IsMIT"] = body.pop("isMIT")

    # when
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 200
    assert answer.json()["status"] == "SUBMITTED"


# --- idempotency ---------------------------------------------------------------------------------


def test_given_a_repeated_key_and_body_when_evaluated_again_then_the_first_answer_replays(
    api: SandboxApi,
) -> None:
    # given
    body = a_mit_body(NOW)
    first = api.post("/evaluate", body)

    # when
    api.advance(23 * 3600)
    again = api.post("/evaluate", json.loads(json.dumps(body, sort_keys=True)))

    # then
    assert again.status_code == 200
    assert again.content == first.content
    assert len(api.orders()) == 1


def test_given_a_used_key_when_sent_with_another_body_then_409(api: SandboxApi) -> None:
    # given
    body = a_mit_body(NOW)
    api.post("/evaluate", body)

    # when
    body["transaction"]["amount"] = 2500
    answer = api.post("/evaluate", body)

    # then
    assert answer.status_code == 409
    assert "IdempotencyKey" in answer.json()


def test_given_a_key_older_than_24_hours_when_reused_then_a_new_order_is_made(api: SandboxApi) -> None:
    # given
    body = a_mit_body(NOW, expiry_days=3)
    first = api.post("/evaluate", body).json()

    # when
    api.advance(DAY)
    second = api.post("/evaluate", body).json()

    # then
    assert second["orderSessionKey"] != first["orderSessionKey"]


def test_given_a_key_still_in_progress_when_sent_again_then_409(api: SandboxApi) -> None:
    # given
    api.admin("/faults", {"latency_ms": 600})
    body = a_mit_body(NOW)
    url, headers = f"{api.base_url}/evaluate", dict(api.session.headers)
    first: dict[str, requests.Response] = {}
    thread = threading.Thread(
        target=lambda: first.update(answer=requests.post(url, json=body, headers=headers))
    )
    thread.start()
    while not api.admin("/requests?path=/evaluate")["items"]:
        threading.Event().wait(0.01)

    # when
    second = requests.post(url, json=body, headers=headers, timeout=5)
    thread.join()

    # then
    assert second.status_code == 409
    assert first["answer"].status_code == 200
    assert len(api.orders()) == 1


# --- outcomes and webhooks -----------------------------------------------------------------------

OUTCOMES = [
    # (kind, mit mode, last 4, answer, status now, days to wait, final status, webhook event)
    ("mit", "managed", "3184", "SUBMITTED", 4, 1, 7, "order.completed"),
    ("mit", "sync", "3184", "APPROVED", 7, None, 7, None),
    ("mit", "managed", "0341", "DECLINED", 2, None, 2, None),
    ("mit", "managed", "0119", "SUBMITTED", 4, 2, 2, "order.cancelled"),
    ("mit", "sync", "0119", "SUBMITTED", 4, 2, 2, "order.cancelled"),
    ("mit", "managed", "0259", "SUBMITTED", 4, 20, 2, "order.expired"),
    ("cit", "managed", "3184", "APPROVED", 7, None, 7, None),
    ("cit", "managed", "0341", "DECLINED", 2, None, 2, None),
    ("cit", "managed", "1111", "CHALLENGE", 0, None, 0, None),
    ("cit-no-phone", "managed", "4242", "DECLINED", 2, None, 2, None),
]


@pytest.mark.parametrize(
    ("kind", "mode", "last4", "answer", "status_now", "days", "final_status", "event"),
    OUTCOMES,
    ids=[f"{o[0]}-{o[1]}-{o[2]}" for o in OUTCOMES],
)
def test_given_a_trigger_card_when_evaluated_then_the_planned_outcome_follows(
    api: SandboxApi,
    receiver: WebhookReceiver,
    kind: str,
    mode: str,
    last4: str,
    answer: str,
    status_now: int,
    days: int | None,
    final_status: int,
    event: str | None,
) -> None:
    # given
    api.admin("/config", {"mit_mode": {FIXTURE_MID: mode}})
    if kind == "mit":
        body = a_mit_body(NOW, last4=last4)
    else:
        body = a_cit_body()
        body["paymentMethod"]["cardLast4Digits"] = last4
        if kind == "cit-no-phone":
            del body["payer"]["phone"]

    # when
    evaluated = api.post("/evaluate", body).json()
    order_id = evaluated["orderSessionKey"]
    before = api.get(f"/orders/{order_id}").json()["status"]
    api.advance((days or 30) * DAY - 1)
    moved = api.advance(1)

    # then
    assert evaluated["status"] == answer
    assert before == status_now
    assert api.get(f"/orders/{order_id}").json()["status"] == final_status
    assert moved["settled"] == (1 if event and days else 0)
    events = [json.loads(d.body)["Event"] for d in receiver.wait_for(1 if event else 0, timeout_s=1)]
    assert events == ([event] if event else [])


def test_given_a_managed_mit_rescue_when_its_day_comes_then_a_signed_webhook_is_delivered(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    body = a_mit_body(NOW, last4="3184")
    order_id = api.post("/evaluate", body).json()["orderSessionKey"]

    # when
    moved = api.admin("/clock", {"advance_seconds": DAY})

    # then
    assert (moved["settled"], moved["delivered"]) == (1, 1)
    [delivery] = receiver.wait_for(1)
    assert delivery.headers["content-type"] == "text/plain; charset=utf-8"
    assert delivery.headers["x-fc-date"] == http_date(NOW + timedelta(days=1))
    assert len(delivery.headers["x-fc-nonce"]) == 32
    assert_signed(delivery)
    payload = json.loads(delivery.body)
    assert list(payload) == [
        "Event",
        "TimeStamp",
        "EventData",
        "ExternalOrderId",
        "OrderId",
        "ConfirmationId",
        "IsTestMode",
        "IsResent",
    ]
    assert payload["Event"] == "order.completed"
    assert (payload["OrderId"], payload["ExternalOrderId"]) == (order_id, body["orderId"])
    assert payload["TimeStamp"] == "2026-06-11T06:00:00.000000Z"
    assert len(payload["ConfirmationId"]) == 8
    assert payload["ConfirmationId"] == payload["ConfirmationId"].upper()
    assert (payload["EventData"], payload["IsTestMode"], payload["IsResent"]) == (None, True, False)


def test_given_webhooks_dropped_when_an_outcome_falls_due_then_nothing_arrives_but_the_order_changes(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    api.admin("/faults", {"drop_webhook_rate": 1})
    order_id = api.post("/evaluate", a_mit_body(NOW, last4="3184")).json()["orderSessionKey"]

    # when
    moved = api.advance(DAY)
    api.admin("/tick", {})

    # then
    assert (moved["settled"], moved["delivered"]) == (1, 0)
    assert receiver.wait_for(1, timeout_s=0.3) == []
    assert api.get(f"/orders/{order_id}").json()["status"] == 7
    assert [w["state"] for w in api.admin("/webhooks")["items"]] == ["dropped"]


def test_given_webhooks_duplicated_when_an_outcome_falls_due_then_a_signed_resend_follows(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    api.admin("/faults", {"duplicate_webhook_rate": 1})
    api.post("/evaluate", a_mit_body(NOW, last4="3184"))

    # when
    moved = api.admin("/clock", {"advance_seconds": DAY})

    # then
    assert moved["delivered"] == 2
    first, second = receiver.wait_for(2)
    assert [json.loads(d.body)["IsResent"] for d in (first, second)] == [False, True]
    assert first.headers["x-fc-nonce"] != second.headers["x-fc-nonce"]
    assert_signed(first)
    assert_signed(second)


def test_given_a_failing_receiver_when_the_clock_moves_again_then_the_webhook_is_retried_as_resent(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    api.post("/evaluate", a_mit_body(NOW, last4="3184"))
    receiver.answer_status = 503
    failed = api.admin("/clock", {"advance_seconds": DAY})

    # when
    receiver.answer_status = 200
    retried = api.admin("/tick", {})

    # then
    assert (failed["delivered"], retried["delivered"]) == (0, 1)
    [delivery] = receiver.wait_for(1)
    assert json.loads(delivery.body)["IsResent"] is True
    assert_signed(delivery)


def test_given_an_order_when_a_webhook_is_sent_on_demand_then_it_arrives_as_asked(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    order_id = api.post("/evaluate", a_mit_body(NOW, last4="3184")).json()["orderSessionKey"]

    # when
    sent = api.admin(
        "/webhooks/send", {"flexfactor_order_id": order_id, "event": "order.expired", "resent": True}
    )

    # then
    assert sent == {"delivered": True, "error": None}
    [delivery] = receiver.wait_for(1)
    payload = json.loads(delivery.body)
    assert (payload["Event"], payload["IsResent"], payload["ConfirmationId"]) == ("order.expired", True, None)


def test_given_cards_without_triggers_when_evaluated_then_the_order_id_hash_decides_stably(
    api: SandboxApi,
) -> None:
    # given
    bodies = [a_mit_body(NOW, orderId=f"sub_{n:04d}") for n in range(200)]

    # when
    for body in bodies:
        api.post("/evaluate", body)
    first_run = {o["external_order_id"]: (o["outcome"], o["outcome_at"]) for o in api.orders()}
    api.admin("/reset", {})
    api.admin("/clock", {"now": iso(NOW), "frozen": True})
    api.login()
    for body in bodies:
        api.post("/evaluate", dict(body, idempotencyKey=body["idempotencyKey"] + "-again"))
    second_run = {o["external_order_id"]: (o["outcome"], o["outcome_at"]) for o in api.orders()}

    # then
    assert first_run == second_run
    rescued = [at for outcome, at in first_run.values() if outcome == "APPROVED"]
    assert 0.35 <= len(rescued) / len(bodies) <= 0.55  # approve_share 0.45
    days = {(datetime.fromisoformat(at) - NOW).days for at in rescued}
    assert days <= set(range(1, 20))  # day 20 would meet the 20-day window's end: it expires instead
    expired = [at for outcome, at in first_run.values() if outcome != "APPROVED"]
    assert set(expired) == {iso(NOW + timedelta(days=20))}


# --- orders --------------------------------------------------------------------------------------


def test_given_an_unknown_order_id_when_looked_up_then_404(api: SandboxApi) -> None:
    # given / when
    answer = api.get("/orders/6d1f7b0e-0000-4000-8000-000000000000")

    # then
    assert answer.status_code == 404


def test_given_25_orders_when_listed_by_pages_of_10_then_the_third_page_holds_5_and_is_last(
    api: SandboxApi,
) -> None:
    # given
    for minute in range(25):
        api.admin("/clock", {"now": iso(NOW + timedelta(minutes=minute))})
        api.login()
        api.post("/evaluate", a_mit_body(NOW, last4="0341" if minute % 5 == 0 else "4242"))

    # when
    first = api.get("/orders", params={"pageSize": 10, "sort": "asc", "mid": FIXTURE_MID}).json()
    third = api.get("/orders", params={"pageSize": 10, "pageNumber": 3, "sort": "asc"}).json()
    declined = api.get("/orders", params={"status": [2], "pageSize": 50}).json()
    window = api.get(
        "/orders", params={"from": iso(NOW + timedelta(minutes=10)), "to": iso(NOW + timedelta(minutes=14))}
    )

    # then
    assert (first["pageCount"], first["totalItemCount"], first["hasNextPage"], first["isLastPage"]) == (
        3,
        25,
        True,
        False,
    )
    assert len(third["items"]) == 5
    assert (third["hasNextPage"], third["isLastPage"]) == (False, True)
    assert first["items"][0]["orderPlacedDate"] < first["items"][1]["orderPlacedDate"]
    assert declined["totalItemCount"] == 5
    assert window.json()["totalItemCount"] == 5
    assert first["statusNames"]["7"] == "APPROVED"


def test_given_an_order_when_listed_by_query_then_only_the_exact_external_id_matches(api: SandboxApi) -> None:
    # given
    body = a_mit_body(NOW)
    api.post("/evaluate", body)
    api.post("/evaluate", a_mit_body(NOW, orderId=body["orderId"] + "x"))

    # when
    found = api.get("/orders", params={"query": body["orderId"]}).json()

    # then
    assert [item["externalOrderId"] for item in found["items"]] == [body["orderId"]]


# --- cancel --------------------------------------------------------------------------------------


def test_given_an_order_in_processing_when_cancelled_then_it_is_cancelled_once_with_a_webhook(
    api: SandboxApi, receiver: WebhookReceiver
) -> None:
    # given
    order_id = api.post("/evaluate", a_mit_body(NOW, last4="3184")).json()["orderSessionKey"]

    # when
    cancelled = api.post(f"/orders/{order_id}/cancel")
    again = api.post(f"/orders/{order_id}/cancel")

    # then
    assert (cancelled.status_code, cancelled.json()) == (200, {})
    assert again.status_code == 400
    assert api.get(f"/orders/{order_id}").json()["status"] == 2
    [delivery] = receiver.wait_for(1)
    assert json.loads(delivery.body)["Event"] == "order.cancelled"
    assert api.admin("/clock", {"advance_seconds": 2 * DAY})["settled"] == 0


def test_given_our_order_id_when_externally_cancelled_then_the_order_is_cancelled(api: SandboxApi) -> None:
    # given
    body = a_mit_body(NOW)
    order_id = api.post("/evaluate", body).json()["orderSessionKey"]

    # when
    answer = api.post(f"/orders/{body['orderId']}/external-cancel")

    # then
    assert answer.status_code == 200
    assert api.get(f"/orders/{order_id}").json()["statusName"] == "CANCELLED"
    assert api.post("/orders/sub_unknown/external-cancel").status_code == 404
    assert api.post("/orders/6d1f7b0e-0000-4000-8000-000000000000/cancel").status_code == 404


def test_given_a_cancel_key_when_reused_then_it_replays_and_another_payload_gives_409(
    api: SandboxApi,
) -> None:
    # given
    first_id = api.post("/evaluate", a_mit_body(NOW)).json()["orderSessionKey"]
    other_id = api.post("/evaluate", a_mit_body(NOW)).json()["orderSessionKey"]
    key = {"idempotencyKey": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    api.post(f"/orders/{first_id}/cancel", key)

    # when
    replayed = api.post(f"/orders/{first_id}/cancel", key)
    conflict = api.post(f"/orders/{other_id}/cancel", key)

    # then
    assert (replayed.status_code, replayed.json()) == (200, {})
    assert conflict.status_code == 409


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["503", "502", "429"])
def test_given_a_scripted_refusal_when_evaluated_then_it_answers_without_making_an_order(
    api: SandboxApi, action: str
) -> None:
    # given
    api.admin(
        "/faults", {"retry_after_s": 3, "script": [{"path": "/evaluate", "action": action, "count": 1}]}
    )
    body = a_mit_body(NOW)

    # when
    refused = api.post("/evaluate", body)
    retried = api.post("/evaluate", body)

    # then
    assert refused.status_code == int(action)
    if action == "429":
        assert refused.headers["Retry-After"] == "3"
    assert retried.status_code == 200
    assert len(api.orders()) == 1


def test_given_a_429_as_an_http_date_when_evaluated_then_date_and_retry_after_follow_the_sandbox_clock(
    api: SandboxApi,
) -> None:
    # given: the sandbox clock stands at the night, months from the real date
    api.admin("/clock", {"now": NOW.isoformat(), "frozen": True})
    api.admin(
        "/faults",
        {
            "retry_after_s": 3,
            "retry_after_as": "http-date",
            "script": [{"path": "/evaluate", "action": "429"}],
        },
    )

    body = a_mit_body(NOW)

    # when
    refused = api.post("/evaluate", body)
    answered = api.post("/evaluate", body)

    # then: the quiet ends three seconds after the answer's Date, both by the sandbox clock
    assert refused.status_code == 429
    assert parsedate_to_datetime(refused.headers["Date"]) == NOW
    assert parsedate_to_datetime(refused.headers["Retry-After"]) == NOW + timedelta(seconds=3)
    assert parsedate_to_datetime(answered.headers["Date"]) == NOW
    logged = api.admin("/requests?path=/evaluate")["items"]
    assert [e["retry_after"] for e in logged] == [refused.headers["Retry-After"], None]


def test_given_an_unknown_retry_after_form_when_posted_then_the_admin_api_names_the_forms(
    api: SandboxApi,
) -> None:
    # given / when
    answer = api.session.post(f"{api.admin_url}/faults", json={"retry_after_as": "minutes"}, timeout=5)

    # then
    assert answer.status_code == 400
    assert "retry_after_as must be one of ['seconds', 'http-date']" in answer.text


def test_given_500_after_processing_when_resent_with_the_same_key_then_the_first_order_replays(
    api: SandboxApi,
) -> None:
    # given
    api.admin("/faults", {"script": [{"path": "/evaluate", "action": "500_after"}]})
    body = a_mit_body(NOW)

    # when
    failed = api.post("/evaluate", body)
    resent = api.post("/evaluate", body)

    # then
    assert failed.status_code == 500
    [order] = api.orders()
    assert resent.json()["orderSessionKey"] == order["id"]
    logged = api.admin("/requests?path=/evaluate")["items"]
    assert [(e["status"], e["order_id"]) for e in logged] == [(500, body["orderId"]), (200, body["orderId"])]


def test_given_a_lost_answer_when_the_client_times_out_then_the_order_exists_all_the_same(
    api: SandboxApi,
) -> None:
    # given
    api.admin(
        "/faults", {"timeout_hang_s": 0.6, "script": [{"path": "/evaluate", "action": "timeout_after"}]}
    )
    body = a_mit_body(NOW)

    # when
    with pytest.raises(requests.ReadTimeout):
        api.post("/evaluate", body, timeout=0.2)

    # then
    [order] = api.orders()
    assert order["external_order_id"] == body["orderId"]
    assert api.post("/evaluate", body).json()["orderSessionKey"] == order["id"]


def test_given_a_hang_before_processing_when_resent_during_it_then_409_and_the_order_appears_later(
    api: SandboxApi,
) -> None:
    # given
    api.admin("/faults", {"timeout_hang_s": 0.6, "script": [{"path": "/evaluate", "action": "timeout"}]})
    body = a_mit_body(NOW)
    with pytest.raises(requests.ReadTimeout):
        api.post("/evaluate", body, timeout=0.2)

    # when
    during = api.post("/evaluate", body)
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    while not api.orders() and datetime.now(UTC) < deadline:
        threading.Event().wait(0.05)

    # then
    assert during.status_code == 409
    assert len(api.orders()) == 1
    assert api.post("/evaluate", body).status_code == 200


def test_given_a_malformed_answer_scripted_when_evaluated_then_the_body_is_not_json(api: SandboxApi) -> None:
    # given
    api.admin("/faults", {"script": [{"path": "/evaluate", "action": "malformed"}]})

    # when
    answer = api.post("/evaluate", a_mit_body(NOW))

    # then
    assert answer.status_code == 200
    with pytest.raises(ValueError, match="Expecting value"):
        answer.json()
    assert len(api.orders()) == 1


def test_given_a_5xx_rate_when_many_calls_are_made_then_the_seeded_share_fails(api: SandboxApi) -> None:
    # given
    api.admin("/faults", {"error_5xx_rate": 0.5})

    # when
    statuses = [api.get("/orders").status_code for _ in range(40)]

    # then
    assert 8 <= sum(s >= 500 for s in statuses) <= 32
    assert api.admin("/faults", {"reset": True})["error_5xx_rate"] == 0.0


def test_given_a_bad_fault_when_posted_then_the_admin_api_answers_400(api: SandboxApi) -> None:
    # given / when
    answer = api.session.post(f"{api.admin_url}/faults", json={"script": [{"action": "explode"}]}, timeout=5)

    # then
    assert answer.status_code == 400


# --- logs and admin --------------------------------------------------------------------------------


def test_given_the_cit_test_card_when_evaluated_then_no_log_line_carries_the_card_number(
    api: SandboxApi, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # given
    body = load_fixture(CIT_FIXTURE)["body"]
    card_number = body["paymentMethod"]["cardNumber"]
    caplog.set_level(logging.DEBUG)

    # when
    api.post("/evaluate", body)
    api.post("/evaluate", dict(body, idempotencyKey=""))
    api.admin("/clock", {"advance_seconds": DAY})

    # then
    captured = capfd.readouterr()
    assert any(r.name == "recycle_engine.sandbox" for r in caplog.records)
    for text in (caplog.text, captured.out, captured.err, json.dumps(api.admin("/requests"))):
        assert card_number not in text


def test_given_a_reset_when_it_runs_then_orders_logs_and_faults_are_gone(api: SandboxApi) -> None:
    # given
    api.post("/evaluate", a_mit_body(NOW))
    api.admin("/faults", {"latency_ms": 5})

    # when
    api.admin("/reset", {})

    # then
    assert api.orders() == []
    assert api.admin("/requests")["items"] == []
    assert api.admin("/faults")["latency_ms"] == 0
    assert api.get("/orders").status_code == 401


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_given_the_cli_command_when_started_and_signalled_then_it_serves_then_exits_cleanly(
    stop_signal: signal.Signals,
) -> None:
    # given
    command = [sys.executable, "-m", "recycle_engine", "sandbox", "--port", "0", "--app-key", "cli-key"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    base_url = process.stdout.readline().strip()

    # when
    with requests.Session() as session:
        answer = session.post(
            f"{base_url}/oauth2/token",
            json={"AppKey": "cli-key", "AppSecret": "sandbox-app-secret"},
            timeout=5,
        )
    process.send_signal(stop_signal)
    _, errors = process.communicate(timeout=10)

    # then
    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/v1")
    assert answer.status_code == 200
    assert process.returncode == 0
    assert "Traceback" not in errors
