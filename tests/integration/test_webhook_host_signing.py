"""The host a webhook signature covers, over real HTTP: the sandbox signs it and `serve` checks it alike."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.sandbox.server import run_sandbox
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook
from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64, SandboxConfig, iso
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import WebhookDelivery
from recycle_engine.web.webhook_app import create_app, serving
from tests.integration.test_webhook_service import a_settings
from tests.sandbox_helpers import SandboxApi, a_mit_body

T0 = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)


@pytest.fixture
def serve_url(tmp_path: Path, db_url: str) -> Iterator[str]:
    """`serve` on a free loopback port (so its Host always carries a port), with the settings of
    test_webhook_service (ff-main signs with the sandbox's key)."""
    settings = a_settings(tmp_path, db_url)
    engine = make_engine(db_url)
    try:
        with serving(create_app(settings, engine, FixedClock(T0))) as url:
            yield f"{url}/webhooks/flexfactor/ff-main"
    finally:
        engine.dispose()


def reasons(db_url: str) -> list[tuple[int, str | None]]:
    """The journal's (status, reason) rows once serve's writer has applied every acknowledged delivery
    (an accepted one reads "queued" until then)."""
    engine = make_engine(db_url)
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(select(WebhookDelivery).order_by(WebhookDelivery.id))
                found = [(row.http_status, row.reason) for row in rows]
            if all(reason != "queued" for _, reason in found):
                return found
            assert time.monotonic() < deadline, f"serve's writer did not apply {found}"
            time.sleep(0.02)
    finally:
        engine.dispose()


def an_event() -> bytes:
    payload = {
        "Event": "order.completed",
        "TimeStamp": "2026-06-10T06:00:00.000000Z",
        "EventData": None,
        "ExternalOrderId": str(uuid.uuid4()),
        "OrderId": str(uuid.uuid4()),
        "ConfirmationId": None,
        "IsTestMode": True,
        "IsResent": False,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def post_signed_over(url: str, host: str) -> requests.Response:
    body, nonce, date = an_event(), new_nonce(), http_date(T0)
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "x-fc-nonce": nonce,
        "x-fc-date": date,
        **sign_webhook(body, SANDBOX_SIGNING_KEY_B64, nonce=nonce, date=date, host=host),
    }
    return requests.post(url, data=body, headers=headers, timeout=10)


def test_given_a_webhook_url_with_a_port_when_the_sandbox_delivers_then_serve_accepts_its_signature(
    serve_url: str, db_url: str
) -> None:
    # given
    with run_sandbox(SandboxConfig(webhook_url=serve_url)) as sandbox:
        api = SandboxApi(sandbox.base_url, sandbox.admin_url)
        try:
            api.admin("/clock", {"now": iso(T0), "frozen": True})
            api.login()
            order_id = api.post("/evaluate", a_mit_body(T0, last4="3184", mid=SandboxConfig.mid)).json()[
                "orderSessionKey"
            ]

            # when
            sent = api.admin("/webhooks/send", {"flexfactor_order_id": order_id, "event": "order.completed"})
        finally:
            api.close()

    # then
    assert sent == {"delivered": True, "error": None}
    assert reasons(db_url) == [(200, "unknown order")]


def test_given_a_delivery_signed_over_the_bare_host_name_when_it_reaches_a_port_then_serve_accepts_it(
    serve_url: str, db_url: str
) -> None:
    # given: signed as the vendor's sample names the endpoint host, without the port
    bare = urlsplit(serve_url).hostname or ""

    # when
    answer = post_signed_over(serve_url, bare)

    # then
    assert answer.status_code == 200, answer.text
    assert reasons(db_url) == [(200, "unknown order")]


def test_given_a_delivery_signed_for_another_port_when_it_arrives_then_serve_refuses_it(
    serve_url: str, db_url: str
) -> None:
    # given
    parts = urlsplit(serve_url)
    other = f"{parts.hostname}:{(parts.port or 0) + 1}"

    # when
    answer = post_signed_over(serve_url, other)

    # then
    assert (answer.status_code, answer.json()) == (401, {"error": "bad signature"})
    assert reasons(db_url) == [(401, "bad signature")]
