"""`recycle-engine serve` over real HTTP: signed deliveries from the sandbox, refusals, dedupe, health."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import Engine, create_engine, insert, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.config import Settings, load_settings
from recycle_engine.ports import Clock
from recycle_engine.reports.queries import ReportBounds, exception_stmt
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook
from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64, SandboxConfig, iso
from recycle_engine.services.outcomes.webhook_events import event_time
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, HandoffEvent, WebhookDelivery
from recycle_engine.storage.webhook_inbox import backlog
from recycle_engine.web.webhook_app import create_app, serving
from tests.conftest import load_fixture

T0 = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
VECTOR = load_fixture("webhook-signature-vector.json")
OTHER_KEY_B64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw=="
MAX_BODY = 2048


def a_settings(tmp_path: Path, db_url: str) -> Settings:
    yaml = textwrap.dedent(
        f"""
        timezone: UTC
        database: {{url: "{db_url}"}}
        gateways:
          - {{id: nmi-main, type: simulated}}
          - id: ff-main
            type: flexfactor
            base_url: http://127.0.0.1:9/v1
            app_key: k
            app_secret: ${{SECRET}}
            mid: {SandboxConfig.mid}
            site_id: {SandboxConfig.site_id}
            environment_key: e
            hmac_signing_key: ${{SANDBOX_KEY}}
            webhook_tolerance_seconds: 300
          - id: ff-vector
            type: flexfactor
            base_url: http://127.0.0.1:9/v1
            app_key: k
            app_secret: ${{SECRET}}
            mid: m
            site_id: s
            environment_key: e
            hmac_signing_key: ${{VECTOR_KEY}}
        serve: {{max_body_bytes: {MAX_BODY}}}
        """
    )
    path = tmp_path / "settings.yaml"
    path.write_text(yaml, encoding="utf-8")
    env = {"SECRET": "s", "SANDBOX_KEY": SANDBOX_SIGNING_KEY_B64, "VECTOR_KEY": VECTOR["signing_key_base64"]}
    return load_settings(path, env=env)


@dataclass
class Service:
    url: str
    engine: Engine
    accepted: list[list[str]] = field(default_factory=list)

    def hook_url(self, gateway_id: str = "ff-main") -> str:
        return f"{self.url}/webhooks/flexfactor/{gateway_id}"

    def applied(self) -> None:
        """Wait until the service's writer has applied every acknowledged delivery (the inbox is empty)."""
        deadline = time.monotonic() + 10
        while True:
            with self.engine.connect() as conn:
                if backlog(conn).waiting == 0:
                    return
            assert time.monotonic() < deadline, "the webhook inbox did not drain"
            time.sleep(0.01)

    def deliveries(self) -> list[Any]:
        self.applied()
        with self.engine.connect() as conn:
            return list(conn.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)))

    def handoff(self, handoff_id: str) -> Any:
        self.applied()
        with self.engine.connect() as conn:
            return conn.execute(select(Handoff).where(Handoff.id == handoff_id)).one()

    def events(self, handoff_id: str) -> list[Any]:
        self.applied()
        with self.engine.connect() as conn:
            stmt = select(HandoffEvent).where(HandoffEvent.handoff_id == handoff_id).order_by(HandoffEvent.id)
            return list(conn.execute(stmt))

    def wait_for_accepted(self, count: int) -> list[list[str]]:
        deadline = time.monotonic() + 5  # on_accepted runs after the answer, in the background
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.accepted


@pytest.fixture
def start_service(tmp_path: Path, db_url: str) -> Iterator[Callable[[Clock], Service]]:
    with ExitStack() as stack:
        settings = a_settings(tmp_path, db_url)
        engine = make_engine(db_url)
        stack.callback(engine.dispose)

        def start(clock: Clock) -> Service:
            service = Service("", engine)
            app = create_app(settings, engine, clock, on_accepted=service.accepted.append)
            service.url = stack.enter_context(serving(app))
            return service

        yield start


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with run_sandbox(SandboxConfig()) as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    admin(sandbox_server, "reset", {})
    admin(sandbox_server, "clock", {"now": iso(T0), "frozen": True})
    return sandbox_server


def admin(sandbox: RunningSandbox, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{sandbox.admin_url}/{path}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def evaluate_at_sandbox(sandbox: RunningSandbox, order_id: str, last4: str) -> str:
    """A managed MIT hand-off at the sandbox; FlexFactor's order id (card last 4 picks the outcome)."""
    token = requests.post(
        f"{sandbox.base_url}/oauth2/token",
        json={"AppKey": SandboxConfig.app_key, "AppSecret": SandboxConfig.app_secret},
        timeout=10,
    ).json()["accessToken"]
    body = {
        "isDeclined": True,
        "isMIT": True,
        "isRecurring": True,
        "expiryDateUtc": iso(T0 + timedelta(days=20)),
        "mid": SandboxConfig.mid,
        "siteId": SandboxConfig.site_id,
        "orderId": order_id,
        "idempotencyKey": str(uuid.uuid4()),
        "transaction": {
            "id": f"txn-{order_id}",
            "amount": 2749,
            "currency": "USD",
            "responseCode": "51",
            "responseCodeSource": "nmi",
            "avsResultCode": "Y",
            "cvvResultCode": "NA",
            "cavvResultCode": "NA",
        },
        "payer": {"email": "jo@example.com", "phone": "+15551234567"},
        "billingInformation": {"firstName": "Jo", "lastName": "Doe"},
        "paymentMethod": {"cardNumber": "tok_test", "token": True, "cardLast4Digits": last4},
    }
    answer = requests.post(
        f"{sandbox.base_url}/evaluate", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "SUBMITTED"
    order_session_key: str = answer.json()["orderSessionKey"]
    return order_session_key


def a_handoff(
    engine: Engine,
    *,
    handoff_id: str | None = None,
    state: str = "SUBMITTED",
    flexfactor_order_id: str | None = None,
    **overrides: Any,
) -> str:
    """A hand-off row as submit leaves it (our id is the orderId FlexFactor knows)."""
    handoff_id = handoff_id or f"sub_{uuid.uuid4().hex[:12]}"
    row = {
        "id": handoff_id,
        "source": "RECYCLE",
        "order_id": f"o-{handoff_id}",
        "purchase_id": f"p-{handoff_id}",
        "transaction_id": f"t-{handoff_id}",
        "gateway_id": "ff-main",
        "declining_gateway_id": "nmi-main",
        "slot": "4-6",
        "attempt": 4,
        "billing_cycle": 3,
        "amount_minor": 2749,
        "currency": "USD",
        "idempotency_key": str(uuid.uuid4()),
        "request_body": "{}",
        "dedupe_key": f"RECYCLE:{handoff_id}",
        "state": state,
        "created_at": T0,
        "submitted_at": T0,
        "expires_at": T0 + timedelta(days=20),
        "flexfactor_order_id": flexfactor_order_id,
        "updated_at": T0,
        **overrides,
    }
    with engine.begin() as conn:
        conn.execute(insert(Handoff).values(row))
    return handoff_id


def connect(sandbox: RunningSandbox, service: Service) -> None:
    admin(sandbox, "config", {"webhook_url": service.hook_url()})


def an_event(
    event: str = "order.completed", *, order_id: str | None = None, external: str | None = None
) -> bytes:
    payload = {
        "Event": event,
        "TimeStamp": "2026-06-10T06:00:00.000000Z",
        "EventData": None,
        "ExternalOrderId": external or str(uuid.uuid4()),
        "OrderId": order_id or str(uuid.uuid4()),
        "ConfirmationId": None,
        "IsTestMode": True,
        "IsResent": False,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_headers(
    url: str, body: bytes, *, at: datetime, key: str = SANDBOX_SIGNING_KEY_B64
) -> dict[str, str]:
    nonce, date = new_nonce(), http_date(at)
    host = urlsplit(url).netloc
    return {
        "Content-Type": "text/plain; charset=utf-8",
        "x-fc-nonce": nonce,
        "x-fc-date": date,
        **sign_webhook(body, key, nonce=nonce, date=date, host=host),
    }


def _post(
    service: Service, body: bytes, headers: dict[str, str], gateway: str = "ff-main"
) -> requests.Response:
    return requests.post(service.hook_url(gateway), data=body, headers=headers, timeout=10)


# --- deliveries from the sandbox --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last4", "days", "state"),
    [("3184", 2, "APPROVED"), ("0119", 3, "CANCELLED"), ("0259", 21, "EXPIRED")],
)
def test_given_a_submitted_handoff_when_the_sandbox_reports_its_outcome_then_the_webhook_settles_it(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service], last4: str, days: int, state: str
) -> None:
    # given
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, last4)
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when
    moved = admin(sandbox, "clock", {"advance_seconds": days * 86400})
    # then
    assert moved["delivered"] == 1
    row = service.handoff(handoff_id)
    # dated by the event's own TimeStamp (when FlexFactor settled it), not by its delivery
    [sent] = requests.get(f"{sandbox.admin_url}/webhooks", timeout=10).json()["items"]
    occurred = datetime.fromisoformat(sent["occurred_at"].replace("Z", "+00:00"))
    assert T0 < occurred <= T0 + timedelta(days=days)
    assert (row.state, row.outcome_source, row.outcome_at) == (state, "WEBHOOK", occurred)
    [delivery] = service.deliveries()
    assert (delivery.accepted, delivery.http_status, delivery.reason) == (True, 200, "applied")
    assert delivery.handoff_id == handoff_id
    assert delivery.flexfactor_order_id == ff_id
    assert [(e.kind, e.source, e.state_after) for e in service.events(handoff_id)] == [
        (state, "WEBHOOK", state)
    ]
    assert service.wait_for_accepted(1) == [[handoff_id]]


def test_given_duplicated_webhooks_when_both_arrive_then_the_second_is_recorded_as_duplicate_without_effect(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    admin(sandbox, "faults", {"duplicate_webhook_rate": 1})
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when
    moved = admin(sandbox, "clock", {"advance_seconds": 2 * 86400})
    # then
    assert moved["delivered"] == 2
    first, second = service.deliveries()
    assert (first.is_duplicate, first.is_resent, first.reason) == (False, False, "applied")
    assert (second.is_duplicate, second.is_resent, second.reason, second.http_status) == (
        True,
        True,
        "duplicate",
        200,
    )
    assert service.handoff(handoff_id).state == "APPROVED"
    assert len(service.events(handoff_id)) == 1
    assert service.wait_for_accepted(1) == [[handoff_id]]


def test_given_a_dropped_webhook_when_the_outcome_happens_then_nothing_arrives_and_the_handoff_stays_open(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    admin(sandbox, "faults", {"drop_webhook_rate": 1})
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when
    moved = admin(sandbox, "clock", {"advance_seconds": 2 * 86400})
    # then: reconcile's poll is the backstop; the service saw nothing
    assert moved["delivered"] == 0
    assert service.deliveries() == []
    assert service.handoff(handoff_id).state == "SUBMITTED"


def test_given_a_refund_before_the_completion_when_both_arrive_then_the_completion_applies_and_the_refund_is_flagged(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when
    for event in ("order.refunded", "order.completed"):
        assert admin(sandbox, "webhooks/send", {"flexfactor_order_id": ff_id, "event": event})["delivered"]
    # then
    row = service.handoff(handoff_id)
    assert (row.state, row.attention) == ("APPROVED", "REFUNDED")
    assert [e.kind for e in service.events(handoff_id)] == ["REFUNDED", "APPROVED"]
    assert [d.reason for d in service.deliveries()] == ["recorded", "applied"]


def test_given_a_cancel_before_the_completion_when_both_arrive_then_the_cancel_stands_and_the_conflict_is_flagged(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when
    for event in ("order.cancelled", "order.completed"):
        assert admin(sandbox, "webhooks/send", {"flexfactor_order_id": ff_id, "event": event})["delivered"]
    # then
    row = service.handoff(handoff_id)
    assert (row.state, row.attention) == ("CANCELLED", "TERMINAL_CONFLICT")
    conflict = service.events(handoff_id)[-1]
    assert (conflict.kind, conflict.state_after) == ("CONFLICT", "CANCELLED")
    assert "already CANCELLED" in (conflict.detail or "")
    assert [d.reason for d in service.deliveries()] == ["applied", "terminal conflict"]


def test_given_order_expired_then_order_completed_from_flexfactor_when_both_arrive_then_the_expiry_stands_as_a_reported_conflict(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given: a hand-off FlexFactor holds
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id)
    # when: FlexFactor reports it expired, then completed
    for event in ("order.expired", "order.completed"):
        assert admin(sandbox, "webhooks/send", {"flexfactor_order_id": ff_id, "event": event})["delivered"]
    # then: FlexFactor's own final state is not overwritten; the conflict is recorded ...
    row = service.handoff(handoff_id)
    assert (row.state, row.late_outcome, row.attention) == ("EXPIRED", False, "TERMINAL_CONFLICT")
    conflict = service.events(handoff_id)[-1]
    assert (conflict.kind, conflict.state_after) == ("CONFLICT", "EXPIRED")
    assert [d.reason for d in service.deliveries()] == ["applied", "terminal conflict"]
    # ... and the report lists it among the reconciliation exceptions
    now = T0 + timedelta(hours=1)
    bounds = ReportBounds.for_day(T0.date(), ZoneInfo("America/New_York"), now)
    with service.engine.connect() as conn:
        flagged = conn.execute(exception_stmt(bounds, "ATTENTION")).all()
    assert [(r.handoff_id, r.detail) for r in flagged] == [(handoff_id, "TERMINAL_CONFLICT")]


def test_given_a_resent_event_for_an_expired_handoff_when_it_arrives_then_the_late_approval_applies(
    sandbox: RunningSandbox, start_service: Callable[[Clock], Service]
) -> None:
    # given: our clock settled the window before FlexFactor's completion reached us
    service = start_service(sandbox.state.clock)
    connect(sandbox, service)
    handoff_id = f"sub_{uuid.uuid4().hex[:12]}"
    ff_id = evaluate_at_sandbox(sandbox, handoff_id, "3184")
    a_handoff(service.engine, handoff_id=handoff_id, flexfactor_order_id=ff_id, state="EXPIRED")
    # when
    sent = admin(
        sandbox, "webhooks/send", {"flexfactor_order_id": ff_id, "event": "order.completed", "resent": True}
    )
    # then
    assert sent["delivered"]
    row = service.handoff(handoff_id)
    assert (row.state, row.late_outcome, row.outcome_source) == ("APPROVED", True, "WEBHOOK")
    [delivery] = service.deliveries()
    assert (delivery.is_resent, delivery.is_duplicate) == (True, False)
    assert service.wait_for_accepted(1) == [[handoff_id]]


def test_given_no_flexfactor_id_yet_when_an_event_names_our_order_id_then_it_matches_and_adopts_the_id(
    start_service: Callable[[Clock], Service],
) -> None:
    # given: the evaluate answer was lost, so the hand-off is PENDING without FlexFactor's id
    service = start_service(FixedClock(T0))
    handoff_id = a_handoff(service.engine, state="PENDING")
    ff_id = str(uuid.uuid4())
    body = an_event(order_id=ff_id, external=handoff_id)
    # when
    answer = requests.post(
        service.hook_url(), data=body, headers=signed_headers(service.url, body, at=T0), timeout=10
    )
    # then
    assert answer.status_code == 200
    row = service.handoff(handoff_id)
    assert (row.state, row.flexfactor_order_id) == ("APPROVED", ff_id)


def test_given_a_delivery_two_hours_late_when_it_settles_a_handoff_then_the_outcome_takes_the_events_own_time(
    start_service: Callable[[Clock], Service],
) -> None:
    # given: FlexFactor's rescue happened at T0 (the event's TimeStamp); the delivery arrives at T0 + 2 h
    received = T0 + timedelta(hours=2)
    service = start_service(FixedClock(received))
    handoff_id = a_handoff(service.engine, submitted_at=T0 - timedelta(days=3))
    body = an_event(order_id=str(uuid.uuid4()), external=handoff_id)
    # when
    answer = requests.post(
        service.hook_url(), data=body, headers=signed_headers(service.url, body, at=received), timeout=10
    )
    # then: the outcome (and the next bill date that follows from it) is dated by the event, not receipt
    assert answer.status_code == 200
    row = service.handoff(handoff_id)
    assert (row.state, row.outcome_at) == ("APPROVED", T0)


def test_given_event_times_out_of_bounds_then_the_outcome_time_stays_between_send_and_receipt() -> None:
    sent, received = T0, T0 + timedelta(hours=1)
    assert event_time(None, received_at=received, sent_at=sent) == received
    assert event_time(received + timedelta(minutes=4), received_at=received, sent_at=sent) == received
    assert event_time(sent - timedelta(days=1), received_at=received, sent_at=sent) == sent
    assert event_time(sent + timedelta(minutes=1), received_at=received, sent_at=None) == sent + timedelta(
        minutes=1
    )


def test_given_a_pending_handoff_whose_answer_was_lost_when_a_webhook_settles_it_then_it_gets_the_send_time(
    start_service: Callable[[Clock], Service],
) -> None:
    # given: sent five minutes before T0, its answer lost: PENDING, never marked submitted
    service = start_service(FixedClock(T0 + timedelta(hours=2)))
    sent = T0 - timedelta(minutes=5)
    handoff_id = a_handoff(
        service.engine, state="PENDING", submitted_at=None, send_started_at=sent, first_sent_at=sent
    )
    body = an_event(order_id=str(uuid.uuid4()), external=handoff_id)
    # when: the rescue arrives by webhook
    at = T0 + timedelta(hours=2)
    answer = requests.post(
        service.hook_url(), data=body, headers=signed_headers(service.url, body, at=at), timeout=10
    )
    # then: the hand-off has a submission time, the send's
    assert answer.status_code == 200
    row = service.handoff(handoff_id)
    assert (row.state, row.submitted_at) == ("APPROVED", sent)


@pytest.mark.parametrize(
    ("event", "reason", "kind", "attention"),
    [
        ("order.capturerequired", "recorded", "CAPTURE_REQUIRED", "CAPTURE_REQUIRED"),
        ("payment.chargeback.received", "recorded", "CHARGEBACK", "CHARGEBACK"),
        ("challenge.passed", "recorded", "CHALLENGE", None),
        ("payout.created", "ignored", None, None),
    ],
)
def test_given_an_event_that_moves_nothing_when_delivered_then_it_is_recorded_and_the_state_is_kept(
    start_service: Callable[[Clock], Service],
    event: str,
    reason: str,
    kind: str | None,
    attention: str | None,
) -> None:
    # given
    service = start_service(FixedClock(T0))
    ff_id = str(uuid.uuid4())
    handoff_id = a_handoff(service.engine, flexfactor_order_id=ff_id)
    body = an_event(event, order_id=ff_id, external=handoff_id)
    # when
    answer = _post(service, body, signed_headers(service.url, body, at=T0))
    # then
    assert answer.status_code == 200
    [delivery] = service.deliveries()
    assert delivery.reason == reason
    row = service.handoff(handoff_id)
    assert (row.state, row.attention) == ("SUBMITTED", attention)
    assert [e.kind for e in service.events(handoff_id)] == ([kind] if kind else [])


def test_given_a_handoff_of_another_gateway_when_an_event_is_signed_for_this_one_then_it_is_not_applied(
    start_service: Callable[[Clock], Service],
) -> None:
    # given: the hand-off went out on ff-main; the delivery is signed with ff-vector's key
    service = start_service(FixedClock(T0))
    ff_id = str(uuid.uuid4())
    handoff_id = a_handoff(service.engine, flexfactor_order_id=ff_id)
    body = an_event(order_id=ff_id)
    # when
    answer = _post(
        service, body, signed_headers(service.url, body, at=T0, key=VECTOR["signing_key_base64"]), "ff-vector"
    )
    # then
    assert answer.status_code == 200
    [delivery] = service.deliveries()
    assert delivery.reason == "other gateway"
    assert service.handoff(handoff_id).state == "SUBMITTED"
    assert service.events(handoff_id) == []


# --- refusals -------------------------------------------------------------------------------------


def test_given_a_tampered_body_when_delivered_then_it_is_refused_401_and_recorded_without_its_body(
    start_service: Callable[[Clock], Service],
) -> None:
    # given
    service = start_service(FixedClock(T0))
    handoff_id = a_handoff(service.engine)
    body = an_event(external=handoff_id)
    headers = signed_headers(service.url, body, at=T0)
    # when
    answer = _post(service, body.replace(b"order.completed", b"order.cancelled"), headers)
    # then
    assert answer.status_code == 401
    [delivery] = service.deliveries()
    assert (delivery.accepted, delivery.http_status, delivery.reason) == (False, 401, "content hash mismatch")
    assert delivery.body is None
    assert delivery.nonce == headers["x-fc-nonce"]
    assert service.handoff(handoff_id).state == "SUBMITTED"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("wrong key", "bad signature"),
        ("missing nonce", "missing header x-fc-nonce"),
        ("no signature", "missing header x-fc-authorization"),
    ],
)
def test_given_a_badly_signed_delivery_when_delivered_then_it_is_refused_401_with_its_reason(
    start_service: Callable[[Clock], Service], change: str, reason: str
) -> None:
    # given
    service = start_service(FixedClock(T0))
    body = an_event()
    headers = signed_headers(
        service.url, body, at=T0, key=OTHER_KEY_B64 if change == "wrong key" else SANDBOX_SIGNING_KEY_B64
    )
    if change == "missing nonce":
        del headers["x-fc-nonce"]
    if change == "no signature":
        del headers["x-fc-authorization"]
    # when
    answer = _post(service, body, headers)
    # then
    assert (answer.status_code, answer.json()) == (401, {"error": reason})
    assert [(d.http_status, d.reason) for d in service.deliveries()] == [(401, reason)]


def test_given_a_delivery_already_seen_when_it_is_replayed_then_the_replay_is_refused(
    start_service: Callable[[Clock], Service],
) -> None:
    # given
    service = start_service(FixedClock(T0))
    body = an_event()
    headers = signed_headers(service.url, body, at=T0)
    assert _post(service, body, headers).status_code == 200
    # when
    answer = _post(service, body, headers)
    # then
    assert answer.status_code == 401
    assert [(d.http_status, d.reason) for d in service.deliveries()] == [
        (200, "unknown order"),
        (401, "replayed nonce"),
    ]


@pytest.mark.parametrize(
    ("signed_offset_s", "status"),
    [(-300, 200), (-301, 401), (300, 200), (301, 401)],
)
def test_given_a_pinned_clock_when_the_signed_date_is_at_or_past_the_tolerance_then_only_up_to_300s_passes(
    start_service: Callable[[Clock], Service], signed_offset_s: int, status: int
) -> None:
    # given: 300 s from our clock is still fresh, 301 s is stale
    service = start_service(FixedClock(T0))
    body = an_event()
    # when
    answer = _post(
        service, body, signed_headers(service.url, body, at=T0 + timedelta(seconds=signed_offset_s))
    )
    # then
    assert answer.status_code == status
    assert service.deliveries()[0].reason == ("unknown order" if status == 200 else "stale date")


def test_given_an_oversized_body_when_delivered_with_or_without_content_length_then_it_is_refused_413(
    start_service: Callable[[Clock], Service],
) -> None:
    # given
    service = start_service(FixedClock(T0))
    big = b"x" * (MAX_BODY + 1)
    headers = signed_headers(service.url, big, at=T0)
    # when
    declared = _post(service, big, headers)
    chunked = _post(service, iter([big[:1000], big[1000:]]), headers)  # type: ignore[arg-type]
    # then
    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert [(d.http_status, d.reason, d.body) for d in service.deliveries()] == [
        (413, "body too large", None)
    ] * 2


def test_given_a_signed_body_that_is_not_an_event_when_delivered_then_it_is_refused_400_and_kept(
    start_service: Callable[[Clock], Service],
) -> None:
    # given
    service = start_service(FixedClock(T0))
    body = b'{"Event": 42}'
    # when
    answer = _post(service, body, signed_headers(service.url, body, at=T0))
    # then
    assert answer.status_code == 400
    [delivery] = service.deliveries()
    assert (delivery.accepted, delivery.reason, delivery.body) == (
        False,
        "webhook body has no Event",
        '{"Event": 42}',
    )


def test_given_an_event_for_an_unknown_order_when_delivered_then_it_is_acknowledged_and_left_unapplied(
    start_service: Callable[[Clock], Service],
) -> None:
    # given
    service = start_service(FixedClock(T0))
    body = an_event()
    # when
    answer = _post(service, body, signed_headers(service.url, body, at=T0))
    # then
    [delivery] = service.deliveries()
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted", "delivery": delivery.id})
    assert delivery.reason == "unknown order"
    assert (delivery.accepted, delivery.handoff_id, delivery.applied_at) == (True, None, None)
    assert delivery.body == body.decode()
    assert service.accepted == []


@pytest.mark.parametrize("gateway", ["nowhere", "nmi-main"])
def test_given_an_unknown_or_ordinary_gateway_when_delivered_then_it_is_refused_404_and_recorded(
    start_service: Callable[[Clock], Service], gateway: str
) -> None:
    # given
    service = start_service(FixedClock(T0))
    body = an_event()
    # when
    answer = _post(service, body, signed_headers(service.url, body, at=T0), gateway=gateway)
    # then
    assert answer.status_code == 404
    assert [(d.gateway_id, d.http_status, d.reason) for d in service.deliveries()] == [
        (gateway, 404, "unknown gateway")
    ]


def test_given_the_vendor_vector_when_delivered_at_its_date_then_it_is_accepted_as_an_unknown_order(
    start_service: Callable[[Clock], Service],
) -> None:
    # given: the vendor's own mock delivery, our clock pinned to its date
    service = start_service(FixedClock(datetime(2023, 3, 20, 17, 16, 40, tzinfo=UTC)))
    headers = {k: v for k, v in VECTOR["headers"].items() if k.lower() != "content-length"}
    headers["Host"] = VECTOR["endpoint_host"]
    # when
    answer = _post(service, VECTOR["body"].encode("utf-8"), headers, gateway="ff-vector")
    # then
    assert answer.status_code == 200, answer.text
    [delivery] = service.deliveries()
    assert (delivery.gateway_id, delivery.reason, delivery.event) == (
        "ff-vector",
        "unknown order",
        "order.completed",
    )
    assert delivery.flexfactor_order_id == "ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429"
    assert delivery.nonce == VECTOR["headers"]["x-fc-nonce"]


# --- health ---------------------------------------------------------------------------------------


def test_given_a_reachable_database_when_healthz_is_asked_then_it_answers_ok(
    start_service: Callable[[Clock], Service],
) -> None:
    service = start_service(FixedClock(T0))
    answer = requests.get(f"{service.url}/healthz", timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok", "database": "ok"})


def test_given_an_unreachable_database_when_healthz_is_asked_then_it_answers_503(tmp_path: Path) -> None:
    # given: a database URL nobody listens on
    engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
    settings = a_settings(tmp_path, "sqlite:///unused.db")
    # when
    with serving(create_app(settings, engine, FixedClock(T0))) as url:
        answer = requests.get(f"{url}/healthz", timeout=10)
    # then
    assert (answer.status_code, answer.json()["database"]) == (503, "down")


def test_given_an_unreachable_database_when_a_signed_event_arrives_then_it_answers_503_so_flexfactor_resends(
    tmp_path: Path,
) -> None:
    # given
    engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
    settings = a_settings(tmp_path, "sqlite:///unused.db")
    body = an_event()
    # when
    with serving(create_app(settings, engine, FixedClock(T0))) as url:
        answer = requests.post(
            f"{url}/webhooks/flexfactor/ff-main",
            data=body,
            headers=signed_headers(url, body, at=T0),
            timeout=10,
        )
    # then
    assert (answer.status_code, answer.json()) == (503, {"error": "storage unavailable"})
