"""The sandbox's in-memory world: config, clock, tokens, orders, idempotency records, logs and webhooks."""

from __future__ import annotations

import base64
import heapq
import json
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from recycle_engine.sandbox.clock import SandboxClock, iso
from recycle_engine.sandbox.records import LoggedRequest, Order, Replay, _Store
from recycle_engine.sandbox.scenarios import (
    CANCELLED,
    CAPTUREREQUIRED,
    DRAFT,
    EVENT_STATUS_NAMES,
    PROCESSING,
    Faults,
)
from recycle_engine.sandbox.webhooks import WebhookDelivery

if TYPE_CHECKING:
    import requests

# Re-exported: iso and SandboxClock (clock.py), LoggedRequest, Order and Replay (records.py).
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

# 64 bytes once decoded, like the vendor's key; public on purpose: it only signs sandbox webhooks.
SANDBOX_SIGNING_KEY_B64 = (
    "KI9fDPu3ZmB8eRALD/RuVxFcWVucI/D/HIDQKCnEcuJEnokldNXeMwHfz3JBGCIUmqdXJpJ1Bb7ob0hhya03Xw=="
)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
CANCELLABLE = frozenset({DRAFT, PROCESSING, CAPTUREREQUIRED})


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


class SandboxState(WebhookDelivery):
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
            order.status_name = EVENT_STATUS_NAMES["order.cancelled"]
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
                order.status_name = EVENT_STATUS_NAMES.get(event, order.status_name)
                order.final_event = None
                self._enqueue(order, event, order.outcome_at or now)
                settled += 1
        return settled

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
