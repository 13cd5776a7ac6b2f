"""FlexFactor's /v1 contract in the sandbox: the endpoint wrapper (auth, faults, latency), token, evaluate."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from recycle_engine.sandbox.records import LoggedRequest, Order, Replay
from recycle_engine.sandbox.replies import (
    _canonical_hash,
    _json,
    _lower_keys,
    _read_object,
    _replay_or_conflict,
    field_errors,
)
from recycle_engine.sandbox.scenarios import Evaluation, FaultSettings, plan_outcome, validate_evaluate
from recycle_engine.sandbox.signing import http_date
from recycle_engine.sandbox.state import SandboxState, new_token

__all__ = ["Deferred", "Handler", "evaluate", "token", "vendor"]

log = logging.getLogger("recycle_engine.sandbox")

_GATEWAY_ERROR = b"<html><body><h1>%d</h1>The upstream gateway is unavailable.</body></html>"


@dataclass
class Deferred:
    """The part of a request done after the simulated processing time: it builds the answer."""

    commit: Callable[[], Response]
    abort: Callable[[], None] | None = None


Handler = Callable[[Request, SandboxState, LoggedRequest], Awaitable["Response | Deferred"]]


def _retry_after(faults: FaultSettings, at: datetime) -> dict[str, str]:
    """A 429's Retry-After; as a date, it counts from the Date of the same answer (the request's time)."""
    if faults.retry_after_as == "http-date":
        until = at + timedelta(seconds=faults.retry_after_s)
        return {"Retry-After": http_date(until), "Date": http_date(at)}
    return {"Retry-After": str(faults.retry_after_s)}


def vendor(
    template: str, handler: Handler, *, needs_auth: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a /v1 handler with the request log, bearer check, faults and simulated processing time."""

    async def endpoint(request: Request) -> Response:
        state: SandboxState = request.app.state.sandbox
        entry = state.log_request(request.method, request.url.path[3:])
        response = await _answer(request, state, entry, template, handler, needs_auth)
        entry.status = response.status_code
        entry.retry_after = response.headers.get("retry-after")
        # FlexFactor's Date is the sandbox clock's (uvicorn's own, the real time, is off): a Retry-After
        # date is read against it.
        response.headers.setdefault("date", http_date(state.clock.now()))
        return response

    return endpoint


async def _answer(
    request: Request,
    state: SandboxState,
    entry: LoggedRequest,
    template: str,
    handler: Handler,
    needs_auth: bool,
) -> Response:
    if needs_auth and not state.is_token_valid(_bearer(request)):
        return Response(b"", 401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    faults = state.faults
    action = faults.next_action(entry.path, template) if faults.active else None
    if action == "502" or action == "503":
        return Response(_GATEWAY_ERROR % int(action), int(action), media_type="text/html")
    if action == "429":
        return _json(
            429,
            {"status": 429, "title": "Too Many Requests"},
            headers=_retry_after(faults.settings, entry.at),
        )
    outcome = await handler(request, state, entry)
    latency_s = faults.settings.latency_ms / 1000
    if isinstance(outcome, Response):
        if latency_s:
            await asyncio.sleep(latency_s)
        return outcome
    try:
        # The idempotency key is already held here, so a resend during this pause gets 409.
        if latency_s:
            await asyncio.sleep(latency_s)
        if action == "timeout":
            await asyncio.sleep(faults.settings.timeout_hang_s)
        response = outcome.commit()
    except BaseException:
        if outcome.abort is not None:
            outcome.abort()
        raise
    if action == "500_after":
        return _json(500, {"status": 500, "title": "An unexpected error occurred."})
    if action == "timeout_after":
        await asyncio.sleep(faults.settings.timeout_hang_s)
    if action == "malformed":
        return Response(b'{"orderSessionKey": <html>truncated', 200, media_type="application/json")
    return response


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def token(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    body = await _read_object(request)
    fields = _lower_keys(body or {})
    errors = {
        name: [f"The {name} field is required."]
        for name in ("AppKey", "AppSecret")
        if not isinstance(fields.get(name.lower()), str) or not fields[name.lower()].strip()
    }
    if errors:
        return field_errors(state, 400, errors, flat=True)
    config = state.config
    key_ok = secrets.compare_digest(str(fields["appkey"]).encode(), config.app_key.encode())
    secret_ok = secrets.compare_digest(str(fields["appsecret"]).encode(), config.app_secret.encode())
    if not (key_ok and secret_ok):
        return field_errors(state, 400, {"AppKey": ["Invalid AppKey or AppSecret."]}, flat=True)

    def commit() -> Response:
        issued_at = state.clock.now()
        access_token = new_token(config.mid, issued_at, config.token_ttl_s)
        expires_at = state.issue_token(access_token)
        return _json(
            200,
            {
                "accessToken": access_token,
                "refreshToken": secrets.token_urlsafe(54),
                "expires": int(expires_at.timestamp() * 1000),
                "id": str(uuid.uuid4()),
                "session": None,
                "daysToEnforceMFA": None,
                "skipAvailable": None,
                "success": True,
                "result": None,
                "status": None,
                "statusCode": None,
                "errors": [],
                "customProperties": {},
            },
        )

    return Deferred(commit)


async def evaluate(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    body = await _read_object(request)
    if body is None:
        return field_errors(state, 400, {"$": ["The request body must be a JSON object."]})
    root = _lower_keys(body)
    entry.order_id = str(root.get("orderid") or "") or None
    entry.idempotency_key = str(root.get("idempotencykey") or "") or None
    config = state.config
    errors, checked = validate_evaluate(
        root,
        mid=config.mid,
        max_expiry_days=config.max_expiry_days,
        now=state.clock.now(),
        sync_mit=state.is_sync_mit(str(root.get("mid") or "").strip().lower()),
    )
    if checked is None:
        log.debug("evaluate rejected", extra={"order_id": entry.order_id, "fields": sorted(errors)})
        return field_errors(state, 400, errors)
    keys, body_hash = state.store.evaluate_keys, _canonical_hash(body)
    record, is_new = state.claim_key(keys, checked.idempotency_key, body_hash)
    if not is_new:
        return _replay_or_conflict(state, record, body_hash)
    return Deferred(
        lambda: _accept(state, checked, record),
        lambda: state.release_key(keys, checked.idempotency_key, record),
    )


def _accept(state: SandboxState, checked: Evaluation, record: Replay) -> Response:
    now = state.clock.now()
    config = state.config
    plan = plan_outcome(
        is_mit=checked.is_mit,
        sync_mit=state.is_sync_mit(checked.mid.lower()),
        card_last4=checked.card_last4,
        has_payer_phone=checked.has_payer_phone,
        order_id=checked.order_id,
        placed_at=now,
        expiry_at=checked.expiry_at,
        approve_share=config.approve_share,
        cit_approve_share=config.cit_approve_share,
        is_authorization=checked.is_authorization,
    )
    order_id = str(uuid.uuid4())
    order = Order(
        order_id,
        checked.order_id,
        checked.mid,
        checked.is_mit,
        checked.amount,
        checked.currency,
        now,
        checked.expiry_at,
        plan.status,
        plan.final_status,
        plan.final_event,
        plan.outcome_at,
        secrets.token_hex(4).upper(),
        plan.answer,
    )
    state.add_order(order)
    payload: dict[str, Any] = {
        "orderSessionKey": order_id,
        "senseKey": None,
        "orderId": order_id,
        "success": True,
        "result": "Success",
        "status": plan.answer,
        "statusCode": None,
        "errors": [],
        "customProperties": {},
    }
    record.body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    record.status = 200
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "evaluate %s -> %s",
            checked.order_id,
            plan.answer,
            extra={"flexfactor_order_id": order_id, "card": checked.card_masked},
        )
    return Response(record.body, 200, media_type="application/json")
