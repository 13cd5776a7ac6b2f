"""The FlexFactor client against the sandbox over real HTTP on loopback (no patching of requests)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import pytest
import requests

from recycle_engine.adapters import flexfactor_codes as codes
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.adapters.flexfactor_http import FlexFactorClient
from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.config import BatchingSettings, FlexFactorSettings, HttpSettings
from recycle_engine.domain.states import Source, State
from recycle_engine.errors import (
    FlexFactorConfigError,
    FlexFactorConflict,
    FlexFactorError,
    FlexFactorNotFoundError,
    FlexFactorNotSent,
    FlexFactorProtocolError,
    FlexFactorRateLimited,
    FlexFactorRejected,
    FlexFactorUnknownOutcome,
    InputError,
)
from recycle_engine.ports import VendorStatus
from recycle_engine.sandbox.server import SandboxConfig, run_sandbox
from tests.conftest import load_fixture

APP_SECRET = "sandbox-app-secret"
SIGNING_KEY = "c2lnbmluZy1rZXktbmV2ZXItbG9nZ2VkLWluLWNsaWVudC10ZXN0cw=="
FAST_RETRIES = HttpSettings(
    connect_timeout_s=2.0, read_timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with run_sandbox(SandboxConfig()) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _fresh_sandbox(sandbox: Any) -> None:
    _admin(sandbox, "POST", "/reset")


def _admin(sandbox: Any, method: str, path: str, **kwargs: Any) -> Any:
    answer = requests.request(method, sandbox.admin_url + path, timeout=5, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def _faults(sandbox: Any, **settings: Any) -> None:
    _admin(sandbox, "POST", "/faults", json=settings)


def _logged(sandbox: Any, path: str) -> list[dict[str, Any]]:
    answer = _admin(sandbox, "GET", "/requests", params={"path": path})
    entries = answer.get("items", answer.get("requests")) if isinstance(answer, dict) else answer
    assert isinstance(entries, list)
    return entries


def _settings(sandbox: Any, **overrides: Any) -> FlexFactorSettings:
    fields: dict[str, Any] = {
        "base_url": sandbox.base_url,
        "app_key": "sandbox-app-key",
        "app_secret": APP_SECRET,
        "mid": "11111111-1111-4111-8111-111111111111",
        "site_id": "22222222-2222-4222-8222-222222222222",
        "environment_key": "unused",
        "hmac_signing_key": SIGNING_KEY,
    }
    fields.update(overrides)
    return FlexFactorSettings(**fields)


@pytest.fixture
def make_client(sandbox: Any) -> Iterator[Callable[..., FlexFactorClient]]:
    made: list[FlexFactorClient] = []

    def make(
        http: HttpSettings = FAST_RETRIES,
        batching: BatchingSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **settings: Any,
    ) -> FlexFactorClient:
        client = FlexFactorClient(
            _settings(sandbox, **settings),
            http,
            batching or BatchingSettings(concurrency=64, rate_limit_per_second=10_000),
            SystemClock(),
            gateway_id="ff-test",
            sleep=sleep,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., FlexFactorClient]) -> FlexFactorClient:
    return make_client()


def a_body(card_last4: str = "3184", *, source: Source = Source.RECYCLE, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "source": source,
        "submission_id": f"sub-{uuid.uuid4()}",
        "idempotency_key": str(uuid.uuid4()),
        "mid": "11111111-1111-4111-8111-111111111111",
        "site_id": "22222222-2222-4222-8222-222222222222",
        "expiry_at": None if source is Source.CASCADE else now + timedelta(days=20),
        "amount_minor": 2749,
        "currency": "USD",
        "transaction_id": f"txn-{uuid.uuid4().hex[:8]}",
        "declined_at": now - timedelta(hours=2),
        "response_code": "51",
        "response_text": "Insufficient funds",
        "processor_type": "nmi",
        "card_token": f"tok_{uuid.uuid4().hex[:12]}",
        "card_bin": "400000",
        "card_last4": card_last4,
        "card_exp_month": 9,
        "card_exp_year": 2030,
        "card_brand": "VISA",
        "card_type": "CREDIT",
        "email": "jo@example.com",
        "phone": "+15551234567",
        "first_name": "Jo",
        "last_name": "Doe",
        "address1": "1 Main St",
        "city": "Springfield",
        "state": "IL",
        "zip": "62701",
        "country": "US",
        "ip_address": "203.0.113.7",
        "purchase_id": "P-123",
        "billing_interval_days": 30,
        "regular_price_minor": 2999,
        "billing_cycle": 4,
    }
    fields.update(overrides)
    return build_evaluate_body(HandoffRequest(**fields))


class Window(TypedDict):
    placed_from: datetime
    placed_to: datetime


def _window() -> Window:
    now = datetime.now(UTC)
    return {"placed_from": now - timedelta(hours=1), "placed_to": now + timedelta(hours=1)}


# --- token -----------------------------------------------------------------------------------------


def test_given_a_new_client_when_it_makes_several_calls_then_one_token_is_fetched_and_reused(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    bodies = [a_body() for _ in range(3)]

    # when
    answers = [client.evaluate(b) for b in bodies]
    client.get_order(answers[0].flexfactor_order_id)

    # then
    assert len(_logged(sandbox, "/oauth2/token")) == 1
    assert client.token_fetches == 1


def test_given_a_proxy_variable_at_start_when_calling_then_the_client_goes_through_that_proxy(
    sandbox: Any, make_client: Callable[..., FlexFactorClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a proxy that refuses connections, named before the client is built
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make_client()

    # when / then: the call never reaches the sandbox
    with pytest.raises(FlexFactorError):
        client.evaluate(a_body())
    monkeypatch.delenv("HTTP_PROXY")  # the test's own look at the sandbox log goes direct
    assert _logged(sandbox, "/evaluate") == []


def test_given_a_proxy_variable_set_after_start_when_calling_then_the_client_keeps_its_start_up_route(
    sandbox: Any, make_client: Callable[..., FlexFactorClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the environment is read once, when the client is built
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    client = make_client()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")

    # when
    answer = client.evaluate(a_body())

    # then
    monkeypatch.delenv("HTTP_PROXY")  # the test's own look at the sandbox log goes direct
    assert answer.flexfactor_order_id
    assert len(_logged(sandbox, "/evaluate")) == 1


def test_given_the_token_expired_at_flexfactor_mid_batch_when_calling_then_one_401_one_refetch_and_success(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    client.evaluate(a_body())
    _admin(sandbox, "POST", "/clock", json={"advance_seconds": 11 * 60})

    # when
    answers = [client.evaluate(a_body()) for _ in range(3)]

    # then
    assert all(a.state is State.SUBMITTED for a in answers)
    assert len(_logged(sandbox, "/oauth2/token")) == 2
    assert [e["status"] for e in _logged(sandbox, "/evaluate")] == [200, 401, 200, 200, 200]


def test_given_64_threads_on_a_new_client_when_they_start_together_then_they_share_one_token_fetch(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    bodies = [a_body() for _ in range(64)]
    barrier = threading.Barrier(64)

    def call(body: dict[str, Any]) -> str:
        barrier.wait()
        return client.evaluate(body).flexfactor_order_id

    # when
    with ThreadPoolExecutor(max_workers=64) as pool:
        order_ids = list(pool.map(call, bodies))

    # then
    assert len(set(order_ids)) == 64
    assert len(_logged(sandbox, "/oauth2/token")) == 1
    assert client.token_fetches == 1


def test_given_wrong_credentials_when_calling_then_config_error_naming_the_gateway_without_retry(
    sandbox: Any, make_client: Callable[..., FlexFactorClient]
) -> None:
    # given
    client = make_client(app_secret="wrong-secret-value")

    # when
    with pytest.raises(FlexFactorConfigError) as caught:
        client.evaluate(a_body())

    # then
    assert "ff-test" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    assert len(_logged(sandbox, "/oauth2/token")) == 1
    assert _logged(sandbox, "/evaluate") == []


# --- evaluate outcomes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card_last4", "source", "vendor_status", "state"),
    [
        ("3184", Source.RECYCLE, VendorStatus.SUBMITTED, State.SUBMITTED),  # rescued a day later
        ("0341", Source.RECYCLE, VendorStatus.DECLINED, State.DECLINED),
        ("0119", Source.RECYCLE, VendorStatus.SUBMITTED, State.SUBMITTED),  # cancelled two days later
        ("0259", Source.RECYCLE, VendorStatus.SUBMITTED, State.SUBMITTED),  # expires with its window
        ("1111", Source.RERUN, VendorStatus.CHALLENGE, State.SUBMITTED),
        ("3184", Source.CASCADE, VendorStatus.APPROVED, State.APPROVED),
        ("0341", Source.CASCADE, VendorStatus.DECLINED, State.DECLINED),
    ],
)
def test_given_a_trigger_card_when_evaluated_then_the_sandbox_answer_maps_to_our_state(
    client: FlexFactorClient, card_last4: str, source: Source, vendor_status: VendorStatus, state: State
) -> None:
    # given
    body = a_body(card_last4, source=source)

    # when
    answer = client.evaluate(body)

    # then
    assert (answer.vendor_status, answer.state) == (vendor_status, state)
    assert answer.flexfactor_order_id != body["orderId"]


def test_given_the_vendor_cit_fixture_shape_when_our_cit_is_evaluated_then_accepted(
    client: FlexFactorClient,
) -> None:
    # given: the fixture's values, but with a vault token in place of its raw card number
    vendor = load_fixture("sandbox-evaluate-request-cit.json")["body"]
    body = a_body(
        "1111",
        source=Source.RERUN,
        response_code=vendor["transaction"]["responseCode"],
        avs=vendor["transaction"]["avsResultCode"],
        cvv=vendor["transaction"]["cvvResultCode"],
        cavv=vendor["transaction"]["cavvResultCode"],
        email=vendor["payer"]["email"],
    )

    # when
    answer = client.evaluate(body)

    # then
    assert answer.vendor_status is VendorStatus.CHALLENGE


@pytest.mark.parametrize(
    ("section", "field", "written"),
    [
        ("billingInformation", "addressLine2", "4539.5787.6362.1486"),
        ("payer", "id", "4539  5787  6362  1486"),
        (
            "billingInformation",
            "city",
            "\uff14\uff15\uff13\uff19\uff15\uff17\uff18\uff17\uff16\uff13\uff16\uff12\uff11\uff14\uff18\uff16",
        ),
    ],
)
def test_given_a_card_number_in_a_billing_field_of_a_body_when_evaluated_then_nothing_is_sent(
    sandbox: Any, client: FlexFactorClient, section: str, field: str, written: str
) -> None:
    # given: a body changed after it was built, past the builder's own check
    body = a_body()
    body[section][field] = written

    # when
    with pytest.raises(InputError, match=f"{section}.{field} holds a card number") as caught:
        client.evaluate(body)

    # then
    assert "1486" not in str(caught.value)
    assert _logged(sandbox, "/evaluate") == []


def test_given_a_validation_error_when_evaluated_then_rejected_with_field_errors_and_not_retried(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    body = a_body()
    del body["transaction"]["responseCode"]
    body["payer"]["email"] = ""

    # when
    with pytest.raises(FlexFactorRejected) as caught:
        client.evaluate(body)

    # then
    rejected = caught.value.body
    assert rejected.http_status == 400
    assert rejected.trace_id
    assert codes.field_messages(rejected, "transaction.responsecode")
    assert codes.field_messages(rejected, "Payer.Email")
    assert len(_logged(sandbox, "/evaluate")) == 1


# --- faults ----------------------------------------------------------------------------------------


def test_given_a_429_with_retry_after_when_evaluating_then_the_client_waits_that_long_and_resends_same_key(
    sandbox: Any, make_client: Callable[..., FlexFactorClient]
) -> None:
    # given
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    client = make_client(sleep=sleep)
    body = a_body()
    _faults(sandbox, retry_after_s=1, script=[{"path": "/evaluate", "action": "429", "count": 1}])

    # when
    answer = client.evaluate(body)

    # then
    assert answer.state is State.SUBMITTED
    assert slept == [pytest.approx(1.0, abs=0.05)]
    logged = _logged(sandbox, "/evaluate")
    assert [e["status"] for e in logged] == [429, 200]
    assert {e["idempotency_key"] for e in logged} - {None} == {body["idempotencyKey"]}


def test_given_429_on_every_try_when_evaluating_then_rate_limited_is_raised_and_the_client_slows_down(
    sandbox: Any, make_client: Callable[..., FlexFactorClient]
) -> None:
    # given
    client = make_client(batching=BatchingSettings(concurrency=4, rate_limit_per_second=1_000))
    client.evaluate(a_body())  # the token is fetched before the burst
    _faults(sandbox, retry_after_s=0, script=[{"path": "/evaluate", "action": "429", "count": 4}])

    # when
    with pytest.raises(FlexFactorRateLimited) as raised:
        client.evaluate(a_body())

    # then: nothing was done at FlexFactor, so it is "not sent", and the rate was halved at each 429
    assert isinstance(raised.value, FlexFactorNotSent)
    assert raised.value.retry_after == 0.0
    assert [e["status"] for e in _logged(sandbox, "/evaluate")] == [200, 429, 429, 429, 429]
    slowed = client._limiter.rate
    assert slowed == pytest.approx(1_000 / 16)

    # when it eases, each call that goes through wins some rate back
    client.evaluate(a_body())
    assert slowed < client._limiter.rate < 1_000


def test_given_a_burst_of_5xx_on_an_order_lookup_when_reading_then_the_get_is_retried(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    order_id = client.evaluate(a_body()).flexfactor_order_id
    _faults(
        sandbox,
        script=[
            {"path": "/orders/{id}", "action": "503", "count": 1},
            {"path": "/orders/{id}", "action": "502", "count": 1},
        ],
    )

    # when
    order = client.get_order(order_id)

    # then
    assert order.flexfactor_order_id == order_id
    assert [e["status"] for e in _logged(sandbox, f"/orders/{order_id}")] == [503, 502, 200]


@pytest.mark.parametrize("action", ["503", "502", "500_after"])
def test_given_a_5xx_on_evaluate_when_sending_then_unknown_outcome_and_no_blind_resend(
    sandbox: Any, client: FlexFactorClient, action: str
) -> None:
    # given
    body = a_body()
    _faults(sandbox, script=[{"path": "/evaluate", "action": action, "count": 1}])

    # when
    with pytest.raises(FlexFactorUnknownOutcome):
        client.evaluate(body)

    # then
    assert len(_logged(sandbox, "/evaluate")) == 1
    held = client.find_by_external_id(body["orderId"], **_window())
    assert (held is not None) is (action == "500_after")  # 500 after processing: FlexFactor holds it


def test_given_a_read_timeout_on_evaluate_when_the_same_key_and_body_are_replayed_later_then_same_order(
    sandbox: Any, make_client: Callable[..., FlexFactorClient]
) -> None:
    # given
    client = make_client(http=HttpSettings(read_timeout_s=0.3, max_retries=0, backoff_base_s=0.01))
    body = a_body()
    _faults(
        sandbox, timeout_hang_s=0.8, script=[{"path": "/evaluate", "action": "timeout_after", "count": 1}]
    )
    with pytest.raises(FlexFactorUnknownOutcome):
        client.evaluate(body)

    # when
    first = client.evaluate(body)
    again = client.evaluate(body)

    # then
    held = client.find_by_external_id(body["orderId"], **_window())
    assert held is not None
    assert first.flexfactor_order_id == again.flexfactor_order_id == held.flexfactor_order_id


def test_given_a_replay_while_the_first_request_is_in_progress_when_sending_then_conflict_then_same_order(
    sandbox: Any, make_client: Callable[..., FlexFactorClient]
) -> None:
    # given: the first request hangs before FlexFactor finishes it
    client = make_client(http=HttpSettings(read_timeout_s=0.2, max_retries=0))
    body = a_body()
    _faults(sandbox, timeout_hang_s=0.8, script=[{"path": "/evaluate", "action": "timeout", "count": 1}])
    with pytest.raises(FlexFactorUnknownOutcome):
        client.evaluate(body)

    # when
    with pytest.raises(FlexFactorConflict):
        client.evaluate(body)
    time.sleep(0.9)
    later = client.evaluate(body)

    # then
    held = client.find_by_external_id(body["orderId"], **_window())
    assert held is not None
    assert later.flexfactor_order_id == held.flexfactor_order_id


def test_given_malformed_json_on_evaluate_when_sending_then_unknown_outcome_because_the_order_may_exist(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    body = a_body()
    _faults(sandbox, script=[{"path": "/evaluate", "action": "malformed", "count": 1}])

    # when
    with pytest.raises(FlexFactorUnknownOutcome) as caught:
        client.evaluate(body)

    # then
    assert isinstance(caught.value.__cause__, FlexFactorProtocolError)
    assert client.find_by_external_id(body["orderId"], **_window()) is not None


def test_given_malformed_json_on_an_order_lookup_when_reading_then_protocol_error(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    order_id = client.evaluate(a_body()).flexfactor_order_id
    _faults(sandbox, script=[{"path": "/orders/{id}", "action": "malformed", "count": 1}])

    # when / then
    with pytest.raises(FlexFactorProtocolError, match="ff-test"):
        client.get_order(order_id)


def test_given_nothing_listens_when_calling_then_not_sent_after_bounded_retries(
    make_client: Callable[..., FlexFactorClient],
) -> None:
    # given: a loopback port we bound and closed, so connections are refused
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1")

    # when / then
    with pytest.raises(FlexFactorNotSent):
        client.evaluate(a_body())


# --- orders ----------------------------------------------------------------------------------------


def test_given_an_evaluated_order_when_looked_up_then_snapshot_matches_and_unknown_id_is_not_found(
    client: FlexFactorClient,
) -> None:
    # given
    body = a_body("3184")
    order_id = client.evaluate(body).flexfactor_order_id

    # when
    order = client.get_order(order_id)

    # then
    assert order.external_order_id == body["orderId"]
    assert (order.status_code, order.state) == (4, None)
    assert (order.amount_minor, order.currency) == (2749, "USD")
    with pytest.raises(FlexFactorNotFoundError):
        client.get_order(str(uuid.uuid4()))


def test_given_more_orders_than_a_page_when_listing_then_every_page_is_read(
    sandbox: Any, client: FlexFactorClient
) -> None:
    # given
    sent = {client.evaluate(a_body()).flexfactor_order_id for _ in range(5)}

    # when
    listed = list(client.list_orders(page_size=2, **_window()))

    # then
    assert {o.flexfactor_order_id for o in listed} == sent
    assert len(listed) == 5
    assert len(_logged(sandbox, "/orders")) == 3


def test_given_a_status_filter_when_listing_then_only_those_statuses_come_back(
    client: FlexFactorClient,
) -> None:
    # given
    client.evaluate(a_body("0341"))  # declined at once: status 2
    processing = client.evaluate(a_body("3184")).flexfactor_order_id  # status 4

    # when
    listed = list(client.list_orders(statuses=[4], **_window()))

    # then
    assert [o.flexfactor_order_id for o in listed] == [processing]


def test_given_our_order_id_when_finding_by_external_id_then_exact_match_or_none(
    client: FlexFactorClient,
) -> None:
    # given
    body = a_body()
    order_id = client.evaluate(body).flexfactor_order_id
    client.evaluate(a_body())

    # when
    found = client.find_by_external_id(body["orderId"], **_window())
    missing = client.find_by_external_id("sub-never-sent", **_window())

    # then
    assert found is not None
    assert found.flexfactor_order_id == order_id
    assert missing is None


def test_given_an_open_order_when_cancelled_twice_then_none_then_the_final_order_is_returned(
    client: FlexFactorClient,
) -> None:
    # given
    order_id = client.evaluate(a_body("3184")).flexfactor_order_id

    # when
    first = client.cancel(order_id)
    second = client.cancel(order_id)

    # then
    assert first is None
    assert second is not None
    assert second.state is State.CANCELLED
    assert client.get_order(order_id).state is State.CANCELLED


def test_given_our_order_id_when_external_cancelled_twice_then_none_then_the_final_order_is_returned(
    client: FlexFactorClient,
) -> None:
    # given
    body = a_body("3184")
    order_id = client.evaluate(body).flexfactor_order_id

    # when
    first = client.external_cancel(body["orderId"])
    second = client.external_cancel(body["orderId"])

    # then
    assert first is None
    assert second is not None
    assert (second.flexfactor_order_id, second.state) == (order_id, State.CANCELLED)
    with pytest.raises(FlexFactorNotFoundError):
        client.external_cancel("sub-never-sent")


def test_given_a_declined_order_when_cancelled_then_the_final_declined_order_is_returned(
    client: FlexFactorClient,
) -> None:
    # given
    order_id = client.evaluate(a_body("0341")).flexfactor_order_id

    # when
    order = client.cancel(order_id)

    # then
    assert order is not None
    assert order.status_code == 2
    assert order.state is State.CANCELLED


# --- secrets ---------------------------------------------------------------------------------------


def test_given_a_session_with_failures_when_logs_and_errors_are_read_then_no_secret_or_card_number_appears(
    sandbox: Any, make_client: Callable[..., FlexFactorClient], caplog: pytest.LogCaptureFixture
) -> None:
    # given
    caplog.set_level(logging.DEBUG)
    client = make_client()
    texts: list[str] = [repr(client)]
    card_number = load_fixture("sandbox-evaluate-request-cit.json")["body"]["paymentMethod"]["cardNumber"]

    # when
    client.evaluate(a_body())
    _admin(sandbox, "POST", "/clock", json={"advance_seconds": 11 * 60})
    _faults(sandbox, script=[{"path": "/evaluate", "action": "503", "count": 1}])
    raw_card_body = a_body()
    raw_card_body["paymentMethod"]["cardNumber"] = card_number
    bad_body = a_body()
    del bad_body["transaction"]["responseCode"]
    for body in (a_body(), raw_card_body, bad_body):
        with pytest.raises((FlexFactorError, InputError)) as caught:
            client.evaluate(body)
        texts += [str(caught.value), repr(caught.value), str(caught.value.__cause__)]
    with pytest.raises(FlexFactorConfigError) as config_error:
        make_client(app_secret="wrong-secret-value").get_order("x")
    texts += [str(config_error.value), repr(config_error.value)]
    tokens = list(sandbox.state.store.tokens)

    # then
    assert len(tokens) == 2
    haystack = caplog.text + "\n".join(texts)
    for secret in (APP_SECRET, "wrong-secret-value", SIGNING_KEY, card_number, *tokens):
        assert secret not in haystack
    assert not [
        r
        for r in caplog.records
        if r.name == "recycle_engine.adapters.flexfactor_http" and not hasattr(r, "gateway")
    ]
