"""Webhook signing as FlexFactor does it (contract 9.4): content hash, HMAC-SHA512 over signed headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

__all__ = ["SIGNED_HEADERS", "http_date", "new_nonce", "sign_webhook", "signed_host"]

SIGNED_HEADERS = "x-fc-nonce;x-fc-date;host;x-fc-content-sha512"


def sign_webhook(body: bytes, signing_key_b64: str, *, nonce: str, date: str, host: str) -> dict[str, str]:
    """The three signature headers for one delivery of `body`.

    `signing_key_b64` is the merchant's base64 signing key (HMAC uses the decoded bytes), `date` the exact
    `x-fc-date` value (RFC 1123), `host` the Host the receiver sees. Returns x-fc-content-sha512,
    x-fc-authorization and x-fc-signature; the caller adds x-fc-date and x-fc-nonce itself.
    """
    key = base64.b64decode(signing_key_b64)
    content_hash = base64.b64encode(hashlib.sha512(body).digest()).decode("ascii")
    string_to_sign = f"POST\n{nonce};{date};{host};{content_hash}"
    signature = base64.b64encode(hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha512).digest())
    body_signature = base64.b64encode(hmac.new(key, body, hashlib.sha512).digest())
    return {
        "x-fc-content-sha512": content_hash,
        "x-fc-authorization": f"HMAC-SHA512 SignedHeaders={SIGNED_HEADERS}&Signature={signature.decode('ascii')}",
        "x-fc-signature": body_signature.decode("ascii"),
    }


_DEFAULT_PORTS = {"http": 80, "https": 443}


def signed_host(url: str) -> str:
    """The `host` value signed for a delivery to `url`: the Host header an HTTP client sends for it.

    That is the host name, with `:port` only when the URL names a port other than its scheme's default
    (https://h/ and https://h:443/ sign "h"; https://h:8443/ signs "h:8443"), never user info. The
    vendor's vector (a URL without a port) signs the bare name; see docs/sandbox-vendor-answers.md.
    Raises ValueError for a URL without a host or with a port out of range.
    """
    parts = urlsplit(url)
    name = parts.hostname
    if not name:
        raise ValueError(f"webhook URL has no host: {url!r}")
    shown = f"[{name}]" if ":" in name else name
    port = parts.port
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme.lower()):
        return shown
    return f"{shown}:{port}"


def http_date(at: datetime) -> str:
    """RFC 1123 date in GMT, as x-fc-date carries it: "Mon, 20 Mar 2023 17:16:40 GMT"."""
    return format_datetime(at.astimezone(UTC).replace(microsecond=0), usegmt=True)


def new_nonce() -> str:
    """A fresh 32-hex-character nonce."""
    return secrets.token_hex(16)
