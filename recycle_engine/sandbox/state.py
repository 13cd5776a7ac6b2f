"""The sandbox's in-memory world: config, clock, tokens, orders, idempotency records, logs and webhooks."""

from __future__ import annotations

import base64
import heapq
import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from recycle_engine.adapters.clock import SystemClock
from recycle_engine.sandbox.scenarios import (
    CANCELLED,
    CAPTUREREQUIRED,
    DRAFT,
    PROCESSING,
    STATUS_NAMES,
    Faults,
)
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook

if TYPE_CHECKING:
    import requests

__all__ = [
    "SANDBOX_SIGNING_KEY_B64",
    "LoggedRequest",
    "Order",
    "Replay",
    "SandboxClock",
    "SandboxConfig",
    "SandboxState",
    "iso",
]

log = logging.getLogger("recycle_engine.sandbox")

# 64 bytes once decoded, like the vendor's key; public on purpose: it only signs sandbox webhooks.
SANDBOX_SIGNING_KEY_B64 = (
    "KI9fDPu3ZmB8eRALD/RuVxFcWVucI/D/HIDQKCnEcuJEnokldNXeMwHfz3JBGCIUmqdXJpJ1Bb7ob0hhya03Xw=="
)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
REQUEST_LOG_LIMIT = 200_000  # keeps a long benchmark from growing without bound
CANCELLABLE = frozenset({DRAFT, PROCESSING, CAPTUREREQUIRED})
WEBHOOK_TIMEOUT_S = (2.0, 5.0)


@dataclass
class SandboxConfig:
    """How one sandbox behaves; the admin API can change a live copy of it."""

    app_key: str = "sandbox-app-key"
    app_secret: str = "sandbox-app-secret"
    mid: str = "11111111-1111-4111-8111-111111111111"
    site_id: str = "22222222-2222-4222-8222-222222222222"
    hmac_signing_key_b64: str = SANDBOX_SIGNING_KEY_B64
    webhook_url: str | None = None  # where signed webhooks go
    token_ttl_s: int = 600
    max_expiry_days: int = 21
    error_shape: str = "flat"  # or "nested" (validation error body shape)
    mit_mode: str = "managed"  # or "sync"; per-MID override via admin config
    approve_share: float = 0.45  # share of MIT hand-offs without a trigger card that get rescued
    cit_approve_share: float = 0.35
    seed: int = 0  # for fault randomness


def iso(at: datetime) -> str:
    """ISO 8601 in UTC with a Z."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SandboxClock:
    """Real UTC time by default; the admin API may set, freeze or advance it."""

    def __init__(self) -> None:
        self._real = SystemClock()
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        self._frozen_at: datetime | None = None

    def now(self) -> datetime:
        frozen = self._frozen_at
        return frozen if frozen is not None else self._real.now() + self._offset

    @property
    def is_frozen(self) -> bool:
        return self._frozen_at is not None

    def set(self, at: datetime) -> None:
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at = at.astimezone(UTC)
            else:
                self._offset = at - self._real.now()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + timedelta(seconds=seconds))

    def freeze(self, frozen: bool) -> None:
        with self._lock:
            if frozen and self._frozen_at is None:
                self._frozen_at = self._real.now() + self._offset
            elif not frozen and self._frozen_at is not None:
                self._offset = self._frozen_at - self._real.now()
                self._frozen_at = None

    def reset(self) -> None:
        with self._lock:
            self._offset, self._frozen_at = timedelta(0), None


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

    def as_vendor(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "statusName": STATUS_NAMES[self.status],
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
            "status_name": STATUS_NAMES[self.status],
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "order_id": self.order_id,
            "idempotency_key": self.idempotency_key,
            "at": iso(self.at),
        }


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


class SandboxState:
    """Everything the sandbox remembers. One coarse lock; no network call is made while holding it."""

    def __init__(self, config: SandboxConfig) -> None:
        self.initial_config = config
        self.config = replace(config)
        self.clock = SandboxClock()
        self.faults = Faults(config.seed)
        self.lock = threading.RLock()
        self.store = _Store()
        self._deliver_lock = threading.Lock()
        self._session: requests.Session | None = None

    def reset(self) -> None:
        """Forget orders, tokens, logs, webhooks and faults; back to the initial config and real time."""
        with self.lock:
            self.store = _Store()
            self.config = replace(self.initial_config)
            self.clock.reset()
            self.faults.reset()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def apply_config(self, changes: Mapping[str, Any]) -> None:
        """Apply a POST /_sandbox/config body, all or nothing; raises ValueError naming the bad key."""
        with self.lock:
            new, modes = replace(self.config), dict(self.store.mit_modes)
            for key, value in changes.items():
                if key == "webhook_url":
                    if value is not None and not (
                        isinstance(value, str) and value.startswith(("http://", "https://"))
                    ):
                        raise ValueError("webhook_url must be an http(s) URL or null")
                    new.webhook_url = value
                elif key == "mit_mode":
                    per_mid = value if isinstance(value, Mapping) else {None: value}
                    for mid, mode in per_mid.items():
                        if mode not in ("managed", "sync"):
                            raise ValueError("mit_mode must be managed or sync")
                        if mid is None:
                            new.mit_mode = mode
                        else:
                            modes[str(mid).lower()] = mode
                elif key == "error_shape":
                    if value not in ("flat", "nested"):
                        raise ValueError("error_shape must be flat or nested")
                    new.error_shape = value
                elif key in ("approve_share", "cit_approve_share"):
                    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                        raise ValueError(f"{key} must lie between 0 and 1")
                    setattr(new, key, float(value))
                elif key in ("token_ttl_s", "max_expiry_days"):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ValueError(f"{key} must be a whole number >= 1")
                    setattr(new, key, value)
                else:
                    raise ValueError(f"unknown setting {key!r}")
            self.config, self.store.mit_modes = new, modes

    def config_view(self) -> dict[str, Any]:
        """The live config without its secrets, plus per-MID MIT modes."""
        view = {
            k: v for k, v in asdict(self.config).items() if k not in ("app_secret", "hmac_signing_key_b64")
        }
        view["mit_modes"] = dict(self.store.mit_modes)
        return view

    # --- tokens and the request log -----------------------------------------------------------------

    def issue_token(self, token: str) -> datetime:
        expires_at = self.clock.now() + timedelta(seconds=self.config.token_ttl_s)
        with self.lock:
            self.store.tokens[token] = expires_at
        return expires_at

    def is_token_valid(self, token: str) -> bool:
        expires_at = self.store.tokens.get(token)
        return expires_at is not None and self.clock.now() < expires_at

    def log_request(self, method: str, path: str) -> LoggedRequest:
        with self.lock:
            self.store.request_seq += 1
            entry = LoggedRequest(self.store.request_seq, method, path, self.clock.now())
            self.store.requests.append(entry)
        return entry

    def logged_requests(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            entries = list(self.store.requests)
        return [e.as_dict() for e in entries if path is None or e.path == path]

    # --- idempotency -------------------------------------------------------------------------------

    def claim_key(self, keys: dict[str, Replay], key: str, body_hash: str) -> tuple[Replay, bool]:
        """The record for `key` and whether it is new; an older one past 24 h is replaced."""
        with self.lock:
            now = self.clock.now()
            held = keys.get(key)
            if held is not None and now - held.created_at < IDEMPOTENCY_WINDOW:
                return held, False
            keys[key] = record = Replay(body_hash, now)
            return record, True

    def release_key(self, keys: dict[str, Replay], key: str, record: Replay) -> None:
        with self.lock:
            if keys.get(key) is record:
                del keys[key]

    # --- orders ------------------------------------------------------------------------------------

    def is_sync_mit(self, mid: str) -> bool:
        return self.store.mit_modes.get(mid, self.config.mit_mode) == "sync"

    def add_order(self, order: Order) -> None:
        with self.lock:
            self.store.orders[order.id] = order
            self.store.by_external.setdefault(order.external_order_id, []).append(order)
            if order.final_event is not None and order.outcome_at is not None:
                self.store.seq += 1
                heapq.heappush(self.store.due, (order.outcome_at, self.store.seq, order.id))

    def find_order(self, order_id: str) -> Order | None:
        self.settle_due()
        return self.store.orders.get(order_id)

    def find_by_external(self, external_order_id: str) -> Order | None:
        """The newest order we hold for the merchant's orderId, preferring one still open."""
        self.settle_due()
        with self.lock:
            found = self.store.by_external.get(external_order_id, [])
            open_ones = [o for o in found if o.status in CANCELLABLE]
            candidates = open_ones or found
            return candidates[-1] if candidates else None

    def all_orders(self) -> list[Order]:
        self.settle_due()
        with self.lock:
            return list(self.store.orders.values())

    def cancel_order(self, order: Order) -> bool:
        """Cancel an order still open; False if it is already final."""
        with self.lock:
            if order.status not in CANCELLABLE:
                return False
            order.status, order.final_status, order.final_event = CANCELLED, CANCELLED, None
            order.outcome_at = self.clock.now()
            self._enqueue(order, "order.cancelled", order.outcome_at)
            return True

    def settle_due(self) -> int:
        """Apply every planned change whose time the sandbox clock has reached; queue its webhook."""
        due = self.store.due
        now = self.clock.now()
        if not due or due[0][0] > now:
            return 0
        settled = 0
        with self.lock:
            while due and due[0][0] <= now:
                _, _, order_id = heapq.heappop(due)
                order = self.store.orders.get(order_id)
                if order is None or order.final_event is None or order.final_status is None:
                    continue  # cancelled meanwhile, or forgotten by a reset
                order.status, event = order.final_status, order.final_event
                order.final_event = None
                self._enqueue(order, event, order.outcome_at or now)
                settled += 1
        return settled

    # --- webhooks ----------------------------------------------------------------------------------

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
        host = urlsplit(url).netloc
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

    def move_clock(
        self, *, now: datetime | None = None, advance_s: float | None = None, frozen: bool | None = None
    ) -> dict[str, Any]:
        """Move or freeze the sandbox clock, settle what fell due and deliver pending webhooks."""
        if frozen is not None:
            self.clock.freeze(frozen)
        if now is not None:
            self.clock.set(now)
        if advance_s is not None:
            self.clock.advance(advance_s)
        settled = self.settle_due()
        delivered = self.deliver_pending()
        return {
            "now": iso(self.clock.now()),
            "frozen": self.clock.is_frozen,
            "settled": settled,
            "delivered": delivered,
        }


def new_token(mid: str, issued_at: datetime, ttl_s: int) -> str:
    """An opaque JWT-shaped bearer token (nothing checks its signature, the sandbox looks it up)."""

    def part(value: Iterable[tuple[str, Any]] | bytes) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(dict(value), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    nbf = int(issued_at.timestamp())
    claims = [("jti", secrets.token_hex(16)), ("custom:mid", mid), ("nbf", nbf), ("exp", nbf + ttl_s)]
    return ".".join((part([("alg", "HS256"), ("typ", "JWT")]), part(claims), part(secrets.token_bytes(32))))
