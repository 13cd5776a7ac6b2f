"""FlexFactor webhooks: signature check over the raw body (contract 9.4), nonces, payload parsing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol

from recycle_engine.adapters import flexfactor_codes as codes
from recycle_engine.domain.states import Event
from recycle_engine.errors import FlexFactorProtocolError, InputError

__all__ = [
    "InMemoryNonceCache",
    "NonceCache",
    "VerifiedDelivery",
    "WebhookEvent",
    "WebhookMalformed",
    "WebhookRejected",
    "event_outcome",
    "parse_event",
    "verify_signature",
]

log = logging.getLogger(__name__)

_SCHEME: Final = "HMAC-SHA512"
_NONCE, _DATE, _HOST, _HASH = "x-fc-nonce", "x-fc-date", "host", "x-fc-content-sha512"
_AUTHORIZATION, _BODY_SIGNATURE = "x-fc-authorization", "x-fc-signature"
# Without all four in the signed list, a body or a replay could be altered unseen.
_MUST_SIGN: Final = frozenset({_NONCE, _DATE, _HOST, _HASH})


class WebhookRejected(InputError):
    """A delivery that failed verification; `reason` is short and machine-friendly (answer 401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"webhook rejected: {reason}")


class WebhookMalformed(InputError):
    """A verified delivery whose body is not a FlexFactor event (answer 400)."""


class NonceCache(Protocol):
    def remember(self, nonce: str, *, until: datetime, now: datetime) -> bool:
        """Record `nonce` as seen until `until`; False if it was already seen and not yet expired.

        Must be atomic: of two concurrent calls with one nonce, exactly one returns True."""
        ...


class InMemoryNonceCache:
    """Nonces seen within the freshness window, in this process only; thread-safe."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def remember(self, nonce: str, *, until: datetime, now: datetime) -> bool:
        with self._lock:
            # Past its window a nonce's delivery fails the date check anyway, so forget it.
            for old in [n for n, t in self._until.items() if t < now]:
                del self._until[old]
            if nonce in self._until:
                return False
            self._until[nonce] = until
            return True

    def __len__(self) -> int:
        return len(self._until)


@dataclass(frozen=True)
class VerifiedDelivery:
    """What verification established about one delivery."""

    nonce: str
    signed_at: datetime  # x-fc-date, aware UTC
    body_signature_ok: bool | None  # x-fc-signature matched; None when absent (never decisive, A13)


def verify_signature(
    raw_body: bytes,
    headers: Mapping[str, str],
    *,
    signing_key_b64: str,
    host: str,
    now: datetime,
    tolerance_s: int,
    nonces: NonceCache,
) -> VerifiedDelivery:
    """Verify a delivery as contract 9.4 says, over the raw body bytes, before any parsing.

    `host` is the request's Host (or the configured public host behind a proxy); with a port, a
    signature over the bare host name is accepted as well. Raises
    WebhookRejected on a missing header, a content hash or signature mismatch, an unsupported
    scheme, an x-fc-date more than `tolerance_s` from `now`, or a nonce already seen."""
    lowered = {k.strip().lower(): v.strip() for k, v in headers.items()}
    for name in (_AUTHORIZATION, _HASH, _DATE, _NONCE):
        if not lowered.get(name):
            raise WebhookRejected(f"missing header {name}")
    signed_headers, signature = _parse_authorization(lowered[_AUTHORIZATION])

    # 1. The body must hash to the announced value.
    content_hash = base64.b64encode(hashlib.sha512(raw_body).digest()).decode("ascii")
    if not hmac.compare_digest(content_hash.encode(), lowered[_HASH].encode()):
        raise WebhookRejected("content hash mismatch")

    # 2-5. HMAC-SHA512 with the decoded key over "POST\n" + the signed values joined by ";".
    values = {**lowered, _HOST: host, _HASH: content_hash}
    missing = [name for name in signed_headers if not values.get(name)]
    if missing:
        raise WebhookRejected(f"missing header {missing[0]}")
    key = _decode_key(signing_key_b64)
    signed_ok = False
    for signed_host in _host_forms(values[_HOST]):
        string_to_sign = "POST\n" + ";".join(
            signed_host if name == _HOST else values[name] for name in signed_headers
        )
        expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha512).digest()
        signed_ok = hmac.compare_digest(expected, signature) or signed_ok
    if not signed_ok:
        raise WebhookRejected("bad signature")

    # 6. Undocumented second signature (A13): informative only, step 5 already covers the body.
    body_signature_ok: bool | None = None
    if lowered.get(_BODY_SIGNATURE):
        body_mac = hmac.new(key, raw_body, hashlib.sha512).digest()
        body_signature_ok = hmac.compare_digest(body_mac, _b64_or_empty(lowered[_BODY_SIGNATURE]))
        if not body_signature_ok:
            log.warning(
                "FlexFactor webhook x-fc-signature does not match the body; accepted on x-fc-authorization"
            )

    # Freshness and replay (A14), only for deliveries that are authentic, so junk cannot fill the cache.
    signed_at = _parse_date(lowered[_DATE])
    if abs((now - signed_at).total_seconds()) > tolerance_s:
        raise WebhookRejected("stale date")
    if not nonces.remember(lowered[_NONCE], until=signed_at + timedelta(seconds=tolerance_s), now=now):
        raise WebhookRejected("replayed nonce")
    return VerifiedDelivery(nonce=lowered[_NONCE], signed_at=signed_at, body_signature_ok=body_signature_ok)


def _host_forms(host: str) -> list[str]:
    """The signed host candidates: the Host as given and, when it names a port, the bare name.

    A signer derives the host from the webhook URL as HTTP does (host, plus a non-default port), which
    is what the Host header carries. The vendor's only vector has no port, so a delivery signed over
    the bare name of a URL with a port is accepted too: the port adds nothing the key does not."""
    name, sep, port = host.rpartition(":")
    bracketed = name.startswith("[") and name.endswith("]")
    if sep and port.isdigit() and name and (bracketed or ":" not in name):
        return [host, name]
    return [host]


def _parse_authorization(value: str) -> tuple[list[str], bytes]:
    scheme, _, params = value.partition(" ")
    if scheme.strip().upper() != _SCHEME:
        raise WebhookRejected("unsupported scheme")
    fields: dict[str, str] = {}
    for part in params.strip().split("&"):
        name, sep, field_value = part.partition("=")
        if sep:
            fields[name.strip().lower()] = field_value.strip()
    signed = [h.strip().lower() for h in fields.get("signedheaders", "").split(";") if h.strip()]
    if not _MUST_SIGN.issubset(signed):
        raise WebhookRejected("unsupported signed headers")
    signature = _b64_or_empty(fields.get("signature", ""))
    if not signature:
        raise WebhookRejected("bad signature")
    return signed, signature


def _b64_or_empty(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _decode_key(signing_key_b64: str) -> bytes:
    key = _b64_or_empty(signing_key_b64.strip())
    if not key:
        # A settings problem, but the delivery still must not pass; the key itself is never echoed.
        raise WebhookRejected("signing key is not base64")
    return key


def _parse_date(text: str) -> datetime:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise WebhookRejected("bad date") from None
    if parsed.tzinfo is None:
        raise WebhookRejected("bad date")
    return parsed


@dataclass(frozen=True)
class WebhookEvent:
    """One FlexFactor event as delivered (names read case-insensitively)."""

    event: str  # lower case, e.g. "order.completed"
    timestamp: datetime | None
    flexfactor_order_id: str | None  # OrderId
    external_order_id: str | None  # ExternalOrderId: the orderId we sent
    confirmation_id: str | None
    is_test_mode: bool
    is_resent: bool


def parse_event(raw_body: bytes) -> WebhookEvent:
    """Decode a verified body (UTF-8 JSON object); raises WebhookMalformed if it is not an event."""
    try:
        data: Any = json.loads(raw_body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WebhookMalformed("webhook body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise WebhookMalformed("webhook body is not a JSON object")
    event = codes.get_ci(data, "Event")
    if not isinstance(event, str) or not event.strip():
        raise WebhookMalformed("webhook body has no Event")
    try:
        timestamp = codes.parse_vendor_datetime(codes.get_ci(data, "TimeStamp"))
    except FlexFactorProtocolError:
        raise WebhookMalformed("webhook TimeStamp is not an ISO 8601 date") from None
    return WebhookEvent(
        event=event.strip().lower(),
        timestamp=timestamp,
        flexfactor_order_id=_text(data, "OrderId"),
        external_order_id=_text(data, "ExternalOrderId"),
        confirmation_id=_text(data, "ConfirmationId"),
        is_test_mode=codes.get_ci(data, "IsTestMode") is True,
        is_resent=codes.get_ci(data, "IsResent") is True,
    )


def _text(data: Mapping[str, Any], name: str) -> str | None:
    value = codes.get_ci(data, name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebhookMalformed(f"webhook {name} is not a string")
    return value


def event_outcome(event_name: str) -> Event | None:
    """The hand-off event for a webhook event name (contract 9.1); None for record-only events."""
    return codes.event_outcome(event_name)
