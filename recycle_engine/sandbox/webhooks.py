"""Webhook delivery of the sandbox: order events queued, signed and POSTed, failures kept for a retry."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from recycle_engine.sandbox.clock import iso
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook, signed_host

if TYPE_CHECKING:
    import requests

    from recycle_engine.sandbox.clock import SandboxClock
    from recycle_engine.sandbox.records import Order, _Store
    from recycle_engine.sandbox.scenarios import Faults
    from recycle_engine.sandbox.state import SandboxConfig

__all__ = ["WEBHOOK_TIMEOUT_S", "WebhookDelivery", "WebhookEvent"]

log = logging.getLogger("recycle_engine.sandbox")

WEBHOOK_TIMEOUT_S = (2.0, 5.0)


@dataclass(slots=True)
class WebhookEvent:
    """One order event to deliver: pending until acknowledged, or dropped by a fault."""

    id: int
    order_id: str
    external_order_id: str
    event: str
    occurred_at: datetime
    confirmation_id: str | None
    state: str = "pending"  # pending, delivered, dropped
    attempts: int = 0
    duplicate: bool | None = None  # decided on the first attempt
    last_error: str | None = None

    def body(self, *, resent: bool) -> bytes:
        payload = {
            "Event": self.event,
            "TimeStamp": self.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "EventData": None,
            "ExternalOrderId": self.external_order_id,
            "OrderId": self.order_id,
            "ConfirmationId": self.confirmation_id,
            "IsTestMode": True,
            "IsResent": resent,
        }
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "external_order_id": self.external_order_id,
            "event": self.event,
            "occurred_at": iso(self.occurred_at),
            "state": self.state,
            "attempts": self.attempts,
            "duplicated": bool(self.duplicate),
            "last_error": self.last_error,
        }


class WebhookDelivery:
    """SandboxState's webhook half: queue order events, POST them signed, keep the failed ones pending."""

    # Set by SandboxState.__init__.
    config: SandboxConfig
    clock: SandboxClock
    faults: Faults
    lock: threading.RLock
    store: _Store
    _deliver_lock: threading.Lock
    _session: requests.Session | None

    def _enqueue(self, order: Order, event: str, at: datetime) -> None:
        self.store.seq += 1
        confirmation = order.confirmation_id if event == "order.completed" else None
        hook = WebhookEvent(self.store.seq, order.id, order.external_order_id, event, at, confirmation)
        self.store.webhooks.append(hook)
        self.store.outbox.append(hook)

    def webhooks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [w.as_dict() for w in self.store.webhooks]

    def deliver_pending(self) -> int:
        """POST every pending webhook; returns the POSTs acknowledged (a duplicate counts twice).

        A failed delivery stays pending and is retried, marked IsResent, on the next call."""
        delivered = 0
        with self._deliver_lock:
            with self.lock:
                url, outbox = self.config.webhook_url, list(self.store.outbox)
            for hook in outbox:
                if hook.attempts == 0 and hook.duplicate is None:
                    dropped, hook.duplicate = self.faults.webhook_fate()
                    if dropped:
                        hook.state = "dropped"
                        continue
                if url is None:
                    hook.last_error = "no webhook_url configured"
                    continue
                error = self.post_webhook(url, hook.body(resent=hook.attempts > 0))
                hook.attempts += 1
                if error is not None:
                    hook.last_error = error
                    log.warning("webhook %s for order %s not delivered: %s", hook.event, hook.order_id, error)
                    continue
                hook.state, hook.last_error = "delivered", None
                delivered += 1
                if hook.duplicate and self.post_webhook(url, hook.body(resent=True)) is None:
                    delivered += 1
            with self.lock:
                self.store.outbox = [w for w in self.store.outbox if w.state == "pending"]
        return delivered

    def send_now(self, order: Order, event: str, *, resent: bool) -> str | None:
        """Deliver one webhook for `order` at once, outside the outbox and faults; the error or None."""
        url = self.config.webhook_url
        if url is None:
            return "no webhook_url configured"
        confirmation = order.confirmation_id if event == "order.completed" else None
        with self.lock:
            self.store.seq += 1
            hook = WebhookEvent(
                self.store.seq, order.id, order.external_order_id, event, self.clock.now(), confirmation
            )
            self.store.webhooks.append(hook)
        error = self.post_webhook(url, hook.body(resent=resent))
        hook.attempts, hook.last_error = 1, error
        hook.state = "delivered" if error is None else "failed"
        return error

    def post_webhook(self, url: str, body: bytes) -> str | None:
        """One signed POST of `body` to `url`; the failure as text, or None when acknowledged (2xx)."""
        # The Host header and the signed host are one value, as an HTTP client derives it from the URL.
        try:
            host = signed_host(url)
        except ValueError as exc:
            return str(exc)
        nonce, date = new_nonce(), http_date(self.clock.now())
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Host": host,
            "x-fc-date": date,
            "x-fc-nonce": nonce,
            **sign_webhook(body, self.config.hmac_signing_key_b64, nonce=nonce, date=date, host=host),
        }
        # Imported here, not at the top: the CLI imports SandboxConfig for its --help defaults.
        import requests

        with self.lock:
            if self._session is None:
                self._session = requests.Session()
            session = self._session
        try:
            answer = session.post(url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        except requests.RequestException as exc:
            return type(exc).__name__
        if not 200 <= answer.status_code < 300:
            return f"HTTP {answer.status_code}"
        return None
