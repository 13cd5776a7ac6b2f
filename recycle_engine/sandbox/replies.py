"""JSON answers and request bodies shared by the sandbox's /v1 and /_sandbox endpoints."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from recycle_engine.sandbox.records import Replay
from recycle_engine.sandbox.state import SandboxState

__all__ = ["_canonical_hash", "_json", "_lower_keys", "_read_object", "_replay_or_conflict", "field_errors"]


def _json(
    status: int,
    payload: Any,
    background: BackgroundTask | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(body, status, headers, media_type="application/json", background=background)


def _trace_id() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def field_errors(
    state: SandboxState, status: int, errors: Mapping[str, list[str]], *, flat: bool = False
) -> Response:
    """A validation-style error in the configured shape (flat, or nested under "errors")."""
    if flat or state.config.error_shape != "nested":
        return _json(status, {"TraceId": [_trace_id()], **errors})
    return _json(status, {"status": str(status), "errors": {**errors, "TraceId": [_trace_id()]}})


def _canonical_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay_or_conflict(state: SandboxState, record: Replay, body_hash: str) -> Response:
    if record.status == 0:
        return field_errors(state, 409, {"IdempotencyKey": ["A request with this key is still in progress."]})
    if record.body_hash != body_hash:
        return field_errors(
            state, 409, {"IdempotencyKey": ["This key was already used with another request."]}
        )
    return Response(record.body, record.status, media_type="application/json")


async def _read_object(request: Request) -> dict[str, Any] | None:
    """The JSON object in the body; None when it is missing, malformed or not an object."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _lower_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}
