"""Webhook storage: the delivery journal, (OrderId, Event) deduplication, hand-off look-ups, shared nonces."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from recycle_engine.errors import StorageError
from recycle_engine.storage.models import Handoff, HandoffEvent, WebhookDelivery, WebhookNonce

__all__ = [
    "DbNonceCache",
    "Delivery",
    "HandoffRef",
    "append_event",
    "claim_delivery",
    "find_handoff",
    "finish_delivery",
    "outcome_source_of",
    "fit",
    "fit_key",
    "ping",
    "record_delivery",
]

_ID_CHARS = 64  # width of the id columns (String(64))
_REASON_CHARS = 200
_KEY_CHARS = 200


def fit(value: str | None, width: int = _ID_CHARS) -> str | None:
    """`value` cut to a column's width; the sender controls these strings, the schema does not."""
    return None if value is None else value[:width]


def fit_key(value: str, width: int = _KEY_CHARS) -> str:
    """A unique key that fits its column: too long a key is replaced by its SHA-256, never cut (cuts collide)."""
    return value if len(value) <= width else "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """One webhook_deliveries row as received; effect columns are filled by finish_delivery."""

    gateway_id: str
    received_at: datetime
    accepted: bool
    http_status: int
    reason: str | None
    event: str | None = None
    flexfactor_order_id: str | None = None
    external_order_id: str | None = None
    nonce: str | None = None
    is_resent: bool = False
    is_duplicate: bool = False
    body: str | None = None
    dedupe_key: str | None = None
    handoff_id: str | None = None
    applied_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        for name in (
            "gateway_id",
            "flexfactor_order_id",
            "external_order_id",
            "nonce",
            "handoff_id",
            "event",
        ):
            values[name] = fit(values[name])
        values["reason"] = fit(self.reason, _REASON_CHARS)
        values["dedupe_key"] = None if self.dedupe_key is None else fit_key(self.dedupe_key)
        return values


def record_delivery(conn: Connection, delivery: Delivery) -> int:
    """Append a delivery row (refusals, duplicates); returns its id."""
    result = conn.execute(insert(WebhookDelivery).values(delivery.row()).returning(WebhookDelivery.id))
    return int(result.scalar_one())


def _insert_once(conn: Connection, model: Any, row: dict[str, Any], key: str, returning: Any) -> Any:
    """Insert one row unless `key` collides; the RETURNING value, or None when it collided.

    RETURNING rather than rowcount: rowcount of an ignored insert is not reliable on every driver."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(model).values(row).on_conflict_do_nothing(index_elements=[key]).returning(returning)
    return conn.execute(stmt).scalar_one_or_none()


def claim_delivery(conn: Connection, delivery: Delivery) -> int | None:
    """Insert an accepted delivery unless its dedupe_key is already stored; its id, or None for a duplicate.

    A concurrent claim of the same key waits for the first transaction and then finds it (unique key)."""
    found = _insert_once(conn, WebhookDelivery, delivery.row(), "dedupe_key", WebhookDelivery.id)
    return None if found is None else int(found)


def finish_delivery(
    conn: Connection, delivery_id: int, *, reason: str, handoff_id: str | None, applied_at: datetime | None
) -> None:
    """Record what an accepted delivery did. applied_at stays NULL while it waits for its hand-off."""
    conn.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(reason=fit(reason, _REASON_CHARS), handoff_id=handoff_id, applied_at=applied_at)
    )


@dataclass(frozen=True)
class HandoffRef:
    """What applying a webhook needs to know about a hand-off."""

    id: str
    gateway_id: str
    state: str
    flexfactor_order_id: str | None
    attention: str | None
    submitted_at: datetime | None = None
    sent_at: datetime | None = None  # first send (or the send in progress when first_sent_at is unknown)
    outcome_source: str | None = None


def find_handoff(
    conn: Connection, *, flexfactor_order_id: str | None, external_order_id: str | None
) -> HandoffRef | None:
    """The hand-off by FlexFactor's order id, else by our submission id (sent as orderId); row-locked on PostgreSQL."""
    base = select(
        Handoff.id,
        Handoff.gateway_id,
        Handoff.state,
        Handoff.flexfactor_order_id,
        Handoff.attention,
        Handoff.submitted_at,
        func.coalesce(Handoff.first_sent_at, Handoff.send_started_at),
        Handoff.outcome_source,
    )
    if conn.dialect.name == "postgresql":
        # Reconcile or another service process may settle the same hand-off at this moment.
        base = base.with_for_update()
    candidates = []
    if flexfactor_order_id:
        candidates.append(
            base.where(Handoff.flexfactor_order_id == flexfactor_order_id)
            .order_by(Handoff.created_at.desc())
            .limit(1)
        )
    if external_order_id:
        candidates.append(base.where(Handoff.id == external_order_id))
    for stmt in candidates:
        row = conn.execute(stmt).first()
        if row is not None:
            return HandoffRef(*row)
    return None


def append_event(conn: Connection, row: dict[str, Any]) -> bool:
    """Append a handoff_events row unless its dedupe_key is already there; True if appended."""
    return _insert_once(conn, HandoffEvent, row, "dedupe_key", HandoffEvent.id) is not None


def ping(conn: Connection) -> None:
    """Raise unless the database answers a trivial query."""
    conn.execute(text("SELECT 1")).scalar_one()


class DbNonceCache:
    """NonceCache over the webhook_nonces table, so that every service process shares replay protection.

    Each remember() runs in its own short transaction: a nonce stays spent even if storing the event later
    fails, which is right because FlexFactor resends with a fresh nonce. Rows older than twice the
    window are purged at most once per window: by then x-fc-date alone refuses their deliveries."""

    def __init__(self, engine: Engine, gateway_id: str, *, window_s: int) -> None:
        self._engine = engine
        self._gateway_id = gateway_id
        self._window = timedelta(seconds=window_s)
        self._lock = threading.Lock()
        self._purged_at: datetime | None = None

    def remember(self, nonce: str, *, until: datetime, now: datetime) -> bool:
        key = fit_key(nonce, _ID_CHARS)
        row = {"nonce": key, "gateway_id": fit(self._gateway_id), "seen_at": now}
        try:
            with self._engine.begin() as conn:
                if self._purge_due(now):
                    conn.execute(
                        delete(WebhookNonce).where(
                            WebhookNonce.gateway_id == fit(self._gateway_id),
                            WebhookNonce.seen_at < self._stale_before(now),
                        )
                    )
                if _insert_once(conn, WebhookNonce, row, "nonce", WebhookNonce.nonce) is not None:
                    return True
                # Seen before: a replay, unless the row is so old that only the purge had not run yet.
                seen_at = conn.execute(
                    select(WebhookNonce.seen_at).where(WebhookNonce.nonce == key)
                ).scalar_one_or_none()
                if seen_at is None or seen_at >= self._stale_before(now):
                    return False
                conn.execute(update(WebhookNonce).where(WebhookNonce.nonce == key).values(row))
                return True
        except SQLAlchemyError as exc:
            raise StorageError("cannot record the webhook nonce") from exc

    def _stale_before(self, now: datetime) -> datetime:
        # until = signed_at + window and signed_at >= now - window, so a nonce matters for 2 windows at most.
        return now - 2 * self._window

    def _purge_due(self, now: datetime) -> bool:
        with self._lock:
            if self._purged_at is not None and now - self._purged_at < self._window:
                return False
            self._purged_at = now
            return True


def outcome_source_of(conn: Connection, handoff_id: str) -> str | None:
    """How a hand-off's outcome reached us (outcome_source), or None without one or without the hand-off."""
    source: str | None = conn.execute(
        select(Handoff.outcome_source).where(Handoff.id == handoff_id)
    ).scalar_one_or_none()
    return source
