"""What the sandbox remembers: orders, idempotency replays, logged requests, and the store that holds them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from recycle_engine.sandbox.clock import iso
from recycle_engine.sandbox.scenarios import STATUS_NAMES
from recycle_engine.sandbox.webhooks import WebhookEvent

__all__ = ["REQUEST_LOG_LIMIT", "LoggedRequest", "Order", "Replay", "_Store"]

REQUEST_LOG_LIMIT = 200_000  # keeps a long benchmark from growing without bound


@dataclass(slots=True)
class Order:
    """One FlexFactor order; `final_event` is the change still planned for `outcome_at`, if any."""

    id: str
    external_order_id: str
    mid: str
    is_mit: bool
    amount: int
    currency: str
    placed_at: datetime
    expiry_at: datetime | None
    status: int
    final_status: int | None
    final_event: str | None
    outcome_at: datetime | None
    confirmation_id: str
    status_name: str  # the vendor's word: the /evaluate answer until a change names it anew

    def as_vendor(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "statusName": self.status_name,
            "orderPlacedDate": iso(self.placed_at),
            "expiryDate": iso(self.expiry_at) if self.expiry_at else None,
            "externalOrderId": self.external_order_id,
            "amount": self.amount,
            "currencyCode": self.currency,
        }

    def as_admin(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "external_order_id": self.external_order_id,
            "mid": self.mid,
            "status": self.status,
            "status_name": self.status_name,
            "outcome": STATUS_NAMES[self.final_status] if self.final_status is not None else None,
            "outcome_event": self.final_event,
            "outcome_at": iso(self.outcome_at) if self.outcome_at else None,
            "placed_at": iso(self.placed_at),
            "expiry_date": iso(self.expiry_at) if self.expiry_at else None,
            "amount": self.amount,
            "currency": self.currency,
            "is_mit": self.is_mit,
        }


@dataclass(slots=True)
class Replay:
    """The first answer given under an idempotency key (status 0 while still being processed)."""

    body_hash: str
    created_at: datetime
    status: int = 0
    body: bytes = b""


@dataclass(slots=True)
class LoggedRequest:
    seq: int
    method: str
    path: str
    at: datetime
    status: int | None = None
    order_id: str | None = None
    idempotency_key: str | None = None
    retry_after: str | None = None  # the Retry-After header of a 429, as sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "order_id": self.order_id,
            "idempotency_key": self.idempotency_key,
            "retry_after": self.retry_after,
            "at": iso(self.at),
        }


@dataclass
class _Store:
    tokens: dict[str, datetime] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    by_external: dict[str, list[Order]] = field(default_factory=dict)
    evaluate_keys: dict[str, Replay] = field(default_factory=dict)
    cancel_keys: dict[str, Replay] = field(default_factory=dict)
    requests: deque[LoggedRequest] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT))
    webhooks: list[WebhookEvent] = field(default_factory=list)
    outbox: list[WebhookEvent] = field(default_factory=list)
    due: list[tuple[datetime, int, str]] = field(default_factory=list)  # heap of planned changes
    mit_modes: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    request_seq: int = 0
