"""Helpers for tests that talk to the FlexFactor sandbox over HTTP: bodies, a client, a webhook receiver."""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from recycle_engine.sandbox.state import iso
from tests.conftest import load_fixture

CIT_FIXTURE = "sandbox-evaluate-request-cit.json"


def a_cit_body(**overrides: Any) -> dict[str, Any]:
    """The vendor's recorded CIT body with fresh ids (and `overrides` applied at the top level)."""
    body: dict[str, Any] = copy.deepcopy(load_fixture(CIT_FIXTURE)["body"])
    body["orderId"] = str(uuid.uuid4())
    body["idempotencyKey"] = str(uuid.uuid4())
    body.update(overrides)
    return body


def a_mit_body(
    now: datetime, *, last4: str = "4242", expiry_days: float = 20, **overrides: Any
) -> dict[str, Any]:
    """A managed-MIT rebill body like contract 5.4, for the merchant of the CIT fixture."""
    body: dict[str, Any] = {
        "isDeclined": True,
        "isMIT": True,
        "isRecurring": True,
        "expiryDateUtc": iso(now + timedelta(days=expiry_days)),
        "mid": load_fixture(CIT_FIXTURE)["body"]["mid"],
        "siteId": "ffae80fd-2b8e-487a-94c3-87503a0c71bb",
        "orderId": f"sub_{uuid.uuid4().hex}",
        "idempotencyKey": str(uuid.uuid4()),
        "transaction": {
            "id": "txn-889",
            "amount": 2749,
            "currency": "USD",
            "timestampUtc": iso(now),
            "timezoneUtcOffset": -5,
            "responseCode": "51",
            "responseCodeSource": "nmi",
            "responseStatus": "DECLINED",
            "responseDescription": "Insufficient funds",
            "avsResultCode": "Y",
            "cvvResultCode": "NA",
            "cavvResultCode": "NA",
            "cardNotPresent": True,
        },
        "subscription": {"subscriptionId": "P-123", "interval": "monthly", "price": 2999, "currency": "USD"},
        "payer": {"email": "jo@example.com", "phone": "+15551234567", "id": "C-42"},
        "billingInformation": {
            "firstName": "Jo",
            "lastName": "Doe",
            "addressLine1": "1 Main St",
            "city": "Austin",
        },
        "paymentMethod": {"cardNumber": f"tok_{uuid.uuid4().hex}", "token": True, "cardLast4Digits": last4},
    }
    body.update(overrides)
    return body


class SandboxApi:
    """A requests session against one sandbox: vendor calls under /v1, admin calls under /_sandbox."""

    def __init__(self, base_url: str, admin_url: str) -> None:
        self.base_url, self.admin_url = base_url, admin_url
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def login(self, app_key: str = "sandbox-app-key", app_secret: str = "sandbox-app-secret") -> str:
        answer = self.session.post(
            f"{self.base_url}/oauth2/token", json={"AppKey": app_key, "AppSecret": app_secret}
        )
        answer.raise_for_status()
        token: str = answer.json()["accessToken"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        return token

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.post(
            f"{self.base_url}{path}", json=body, timeout=kwargs.pop("timeout", 10), **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.base_url}{path}", timeout=kwargs.pop("timeout", 10), **kwargs)

    def admin(self, path: str, body: Any = None) -> Any:
        url = f"{self.admin_url}{path}"
        answer = (
            self.session.get(url, timeout=10)
            if body is None
            else self.session.post(url, json=body, timeout=10)
        )
        answer.raise_for_status()
        return answer.json()

    def advance(self, seconds: float) -> Any:
        """Move the sandbox clock (settling and delivering what fell due), then take a fresh token."""
        moved = self.admin("/clock", {"advance_seconds": seconds})
        self.login()
        return moved

    def orders(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.admin("/orders")["items"]
        return items


@dataclass
class Delivery:
    headers: dict[str, str]  # names in lower case
    body: bytes


class WebhookReceiver:
    """A tiny HTTP server in a thread that records every POST and answers `answer_status`."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answer_status = 200
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.answer_status
                if 200 <= status < 300:
                    with receiver._arrived:
                        receiver.deliveries.append(
                            Delivery({k.lower(): v for k, v in self.headers.items()}, body)
                        )
                        receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/flexfactor/gw-1"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Delivery]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout=timeout_s)
            return list(self.deliveries)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
