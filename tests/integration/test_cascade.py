"""Real-time cascades against the sandbox over HTTP: eligibility, cascade paths, instant results, POST /cascade."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.flexfactor_webhooks import WebhookEvent
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.services.initial_sales.cascade import CascadeAnswer, cascade_order
from recycle_engine.services.initial_sales.new_sales import Refused
from recycle_engine.services.initial_sales.rerun import rerun_orders
from recycle_engine.services.nightly.submit import run_submit
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.services.outcomes.webhook_events import store_delivery
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Fulfillment, Handoff, Order
from recycle_engine.web.webhook_app import create_app, serving
from tests.factories import outcome_applied
from tests.factories_sales import (
    API_KEY,
    NIGHT,
    a_declined_sale,
    a_sales_settings_file,
    admin,
    evaluates,
    handoff_count,
    insert_declined_sale,
    load_sales_settings,
    one,
    reset_sandbox,
)


@dataclass
class World:
    settings: Settings
    engine: Engine
    sandbox: RunningSandbox

    def cascade(self, order_id: str = "ord-s1") -> CascadeAnswer | Refused:
        clients = flexfactor_clients(self.settings, FixedClock(NIGHT))
        return cascade_order(self.settings, self.engine, clients, order_id, now=NIGHT)

    def answer(self, order_id: str = "ord-s1") -> CascadeAnswer:
        outcome = self.cascade(order_id)
        assert isinstance(outcome, CascadeAnswer), outcome
        return outcome


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        yield sb


@pytest.fixture
def make_world(tmp_path: Path, db_url: str, sandbox_server: RunningSandbox) -> Iterator[Callable[..., World]]:
    engine = make_engine(db_url)
    sandbox = reset_sandbox(sandbox_server)

    def make(**settings: Any) -> World:
        settings.setdefault("base_url", sandbox.base_url)
        path = a_sales_settings_file(tmp_path, db_url=db_url, **settings)
        return World(load_sales_settings(path), engine, sandbox)

    yield make
    engine.dispose()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


# --- the service ---------------------------------------------------------------------------------


def test_given_a_soft_declined_sale_with_an_ip_address_when_it_cascades_then_the_instant_approval_is_applied(
    world: World,
) -> None:
    # given: declined on nmi, which ATRI profile atri-1 cascades through casc-1 to ff
    insert_declined_sale(world.engine, a_declined_sale())
    # when
    answer = world.answer()
    # then
    assert (answer.result.value, answer.reason) == ("approved", None)
    h = one(world.engine, select(Handoff))
    assert (h.id, h.source, h.gateway_id, h.state) == (answer.handoff_id, "CASCADE", "ff", "APPROVED")
    assert (h.outcome_source, h.expires_at, h.dedupe_key) == ("RESPONSE", None, "CASCADE:ord-s1:txn-s1")
    assert outcome_applied(world.engine, h.id)
    body = json.loads(h.request_body)
    assert (body["isMIT"], "expiryDateUtc" in body, body["customerIp"]) == (False, False, "203.0.113.9")
    assert one(world.engine, select(Order.status)).status == "COMPLETE"
    assert one(world.engine, select(Fulfillment.order_id)).order_id == "ord-s1"


@pytest.mark.parametrize(
    ("decline", "status", "code"),
    [
        pytest.param({"ip_address": None}, "DECLINED", "NO_IP_ADDRESS", id="without-ip-address"),
        pytest.param(
            {"response_type": "HARD_DECLINE", "decline_type": "HARD", "response_text": "Stolen card"},
            "DECLINED",
            "HARD_DECLINE",
            id="hard-decline",
        ),
        pytest.param(
            {"response_text": "Insufficient Funds (51)"},
            "DECLINED",
            "INSUFFICIENT_FUNDS",
            id="insufficient-funds",
        ),
        pytest.param({"gateway_id": "nmi-2"}, "DECLINED", "NOT_IN_CASCADE_PATH", id="no-cascade-path"),
        pytest.param({"order_type": "UPSALE"}, "DECLINED", "NOT_NEW_SALE", id="upsale"),
        pytest.param({}, "COMPLETE", "ORDER_COMPLETE", id="complete"),
    ],
)
def test_given_a_decline_that_may_not_cascade_when_asked_then_it_is_refused_locally_and_nothing_is_sent(
    world: World, decline: dict[str, Any], status: str, code: str
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale(**decline), status=status)
    # when
    outcome = world.cascade()
    # then
    assert isinstance(outcome, Refused)
    assert outcome.code == code
    assert handoff_count(world.engine) == 0
    assert evaluates(world.sandbox) == []


def test_given_a_queued_rerun_when_the_order_cascades_then_it_is_refused_for_its_open_hand_off(
    world: World,
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale())
    rerun_orders(world.settings, world.engine, {}, ["ord-s1"], gateway_id="ff", now=NIGHT, send_now=False)
    # when
    outcome = world.cascade()
    # then
    assert isinstance(outcome, Refused)
    assert outcome.code == "OPEN_HANDOFF"


def test_given_a_decline_already_cascaded_when_it_cascades_again_then_it_is_refused(world: World) -> None:
    # given: the first cascade was declined (card 0341)
    insert_declined_sale(world.engine, a_declined_sale(card_last4="0341"))
    first = world.answer()
    # when
    second = world.cascade()
    # then
    assert first.result.value == "declined"
    assert isinstance(second, Refused)
    assert second.code == "ALREADY_HANDED_OFF"
    assert len(evaluates(world.sandbox)) == 1


@pytest.mark.parametrize("declining_gateway", ["nmi", "nmi-2"])
def test_given_cascade_all_on_a_flexfactor_gateway_when_a_sale_cascades_then_it_goes_there_over_any_profile(
    make_world: Callable[..., World], declining_gateway: str
) -> None:
    # given: nmi's profile leads to ff, nmi-2 has none; ff-all sets cascade_all
    world = make_world(cascade_all=True)
    insert_declined_sale(world.engine, a_declined_sale(gateway_id=declining_gateway))
    # when
    answer = world.answer()
    # then
    assert answer.result.value == "approved"
    assert one(world.engine, select(Handoff.gateway_id)).gateway_id == "ff-all"


def test_given_a_card_flexfactor_declines_when_it_cascades_then_the_caller_hears_declined_and_the_order_stays_declined(
    world: World,
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale(card_last4="0341"))
    # when
    answer = world.answer()
    # then
    assert answer.result.value == "declined"
    h = one(world.engine, select(Handoff))
    assert (h.state, h.outcome_source) == ("DECLINED", "RESPONSE")
    assert outcome_applied(world.engine, h.id)
    assert one(world.engine, select(Order.status)).status == "DECLINED"


def test_given_a_challenge_when_it_cascades_then_the_caller_hears_declined_and_a_later_approval_still_applies(
    world: World,
) -> None:
    # given: card 1111 makes FlexFactor answer CHALLENGE to a CIT
    insert_declined_sale(world.engine, a_declined_sale(card_last4="1111"))
    # when
    answer = world.answer()
    # then (A7): declined now, the hand-off stays open
    assert answer.result.value == "declined"
    assert answer.reason is not None
    assert "CHALLENGE" in answer.reason
    h = one(world.engine, select(Handoff))
    assert (h.state, h.vendor_status) == ("SUBMITTED", "CHALLENGE")
    assert one(world.engine, select(Order.status)).status == "DECLINED"
    # and when the shopper passes the challenge, the approval webhook completes the order
    later = NIGHT + timedelta(minutes=5)
    completed = WebhookEvent("order.completed", later, h.flexfactor_order_id, h.id, "C0NF1RM", True, False)
    stored = store_delivery(world.engine, gateway_id="ff", event=completed, nonce="n-1", body="{}", now=later)
    apply_outcomes(world.settings, world.engine, now=later, handoff_ids=stored.handoff_ids)
    assert one(world.engine, select(Handoff.state)).state == "APPROVED"
    assert one(world.engine, select(Order.status)).status == "COMPLETE"


def test_given_flexfactor_loses_the_answer_when_a_sale_cascades_then_the_caller_hears_unknown_and_it_stays_pending(
    world: World,
) -> None:
    # given: FlexFactor takes the order, then answers 500
    insert_declined_sale(world.engine, a_declined_sale())
    admin(world.sandbox, "faults", {"script": [{"action": "500_after", "path": "/evaluate"}]})
    # when
    answer = world.answer()
    # then
    assert answer.result.value == "unknown"
    h = one(world.engine, select(Handoff))
    assert (h.state, h.send_started_at is not None, outcome_applied(world.engine, h.id)) == (
        "PENDING",
        True,
        False,
    )
    assert one(world.engine, select(Order.status)).status == "DECLINED"


def test_given_flexfactor_is_unreachable_when_a_sale_cascades_then_it_is_declined_and_never_sent_later(
    make_world: Callable[..., World],
) -> None:
    # given: nothing listens at the gateway's base_url
    world = make_world(base_url="http://127.0.0.1:9/v1")
    insert_declined_sale(world.engine, a_declined_sale())
    # when
    answer = world.answer()
    run_submit(
        world.settings,
        world.engine,
        {},
        processors(world.settings),
        night=Night.of(NIGHT, world.settings.timezone),
        send_clock=FixedClock(NIGHT),
    )
    # then: the shopper has gone; the night's run must not send a stale cascade
    assert answer.result.value == "declined"
    h = one(world.engine, select(Handoff))
    assert (h.state, h.send_started_at) == ("FAILED", None)
    assert h.last_error.startswith("cascade not sent")


# --- POST /cascade over HTTP ---------------------------------------------------------------------


@pytest.fixture
def service(world: World) -> Iterator[tuple[str, World]]:
    app = create_app(world.settings, world.engine, FixedClock(NIGHT))
    with serving(app) as url:
        yield f"{url}/cascade", world


def _post(
    url: str, body: bytes | dict[str, Any], key: str | None = API_KEY, **headers: str
) -> requests.Response:
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"Content-Type": "application/json", **headers}, timeout=10)


def test_given_an_eligible_order_when_post_cascade_then_it_answers_200_with_the_result(
    service: tuple[str, World],
) -> None:
    # given
    url, world = service
    insert_declined_sale(world.engine, a_declined_sale())
    # when
    answer = _post(url, {"order_id": "ord-s1"})
    # then
    assert answer.status_code == 200
    handoff_id = one(world.engine, select(Handoff.id)).id
    assert answer.json() == {"order_id": "ord-s1", "result": "approved", "handoff_id": handoff_id}


def test_given_an_ineligible_or_unknown_order_when_post_cascade_then_it_answers_422_or_404_with_the_reason(
    service: tuple[str, World],
) -> None:
    # given
    url, world = service
    insert_declined_sale(world.engine, a_declined_sale(ip_address=None))
    # when
    refused = _post(url, {"order_id": "ord-s1"})
    unknown = _post(url, {"order_id": "ord-missing"})
    # then
    assert refused.status_code == 422
    assert refused.json()["code"] == "NO_IP_ADDRESS"
    assert "ip_address" in refused.json()["error"]
    assert unknown.status_code == 404
    assert handoff_count(world.engine) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b'{"order_id": "ord-s1"', "not valid UTF-8 JSON", id="bad-json"),
        pytest.param(b'{"order_id": "ord-s1", "amount": 5}', "unknown key(s): amount", id="unknown-key"),
        pytest.param(b'{"order_id": 42}', "order_id must be a string", id="wrong-type"),
        pytest.param(b'{"orderId": "ord-s1"}', "unknown key(s): orderId", id="misspelt-key"),
        pytest.param(b"{}", "order_id is required", id="missing-key"),
        pytest.param(b'["ord-s1"]', "must be a JSON object", id="not-an-object"),
        pytest.param(b'{"order_id": "a", "order_id": "b"}', "duplicate key(s): order_id", id="duplicate-key"),
    ],
)
def test_given_a_malformed_body_when_post_cascade_then_it_answers_400_with_the_reason(
    service: tuple[str, World], body: bytes, reason: str
) -> None:
    # given
    url, world = service
    insert_declined_sale(world.engine, a_declined_sale())
    # when
    answer = _post(url, body)
    # then
    assert answer.status_code == 400
    assert reason in answer.json()["error"]
    assert handoff_count(world.engine) == 0


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer not-the-key", id="wrong"),
        pytest.param(f"Basic {API_KEY}", id="wrong-scheme"),
        pytest.param("Bearer ", id="empty"),
    ],
)
def test_given_no_valid_api_key_when_post_cascade_then_it_answers_401_and_cascades_nothing(
    service: tuple[str, World], authorization: str | None
) -> None:
    # given
    url, world = service
    insert_declined_sale(world.engine, a_declined_sale())
    headers = {} if authorization is None else {"Authorization": authorization}
    # when
    answer = _post(url, {"order_id": "ord-s1"}, key=None, **headers)
    # then
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert handoff_count(world.engine) == 0


def test_given_no_api_key_configured_when_post_cascade_then_it_answers_503_cascade_disabled(
    make_world: Callable[..., World],
) -> None:
    # given
    world = make_world(api_key=False)
    insert_declined_sale(world.engine, a_declined_sale())
    with serving(create_app(world.settings, world.engine, FixedClock(NIGHT))) as url:
        # when
        answer = _post(f"{url}/cascade", {"order_id": "ord-s1"})
    # then
    assert answer.status_code == 503
    assert answer.json() == {"error": "cascade disabled: set serve.api_key"}
    assert handoff_count(world.engine) == 0
