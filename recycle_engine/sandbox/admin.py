"""The sandbox's /_sandbox admin API, loopback only: clock, faults, config, logs, orders, webhooks,
token revocation, reset."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from recycle_engine.sandbox.clock import iso
from recycle_engine.sandbox.replies import _json, _read_object
from recycle_engine.sandbox.scenarios import parse_time
from recycle_engine.sandbox.state import SandboxState

__all__ = ["AdminHandler", "_admin_routes", "admin"]


AdminHandler = Callable[[Request, SandboxState], Awaitable[Response]]
_LOOPBACK = ("127.", "::1", "localhost")


def admin(handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
    """Refuse callers off loopback and turn a ValueError into a 400 naming the problem."""

    async def endpoint(request: Request) -> Response:
        client = request.client.host if request.client else ""
        if not client.startswith(_LOOPBACK):
            return _json(403, {"error": "the sandbox admin API answers loopback only"})
        try:
            return await handler(request, request.app.state.sandbox)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})

    return endpoint


async def _admin_body(request: Request) -> dict[str, Any]:
    if not (await request.body()).strip():
        return {}
    body = await _read_object(request)
    if body is None:
        raise ValueError("the body must be a JSON object")
    return body


async def admin_health(request: Request, state: SandboxState) -> Response:
    return _json(200, {"ok": True, "now": iso(state.clock.now())})


async def admin_requests(request: Request, state: SandboxState) -> Response:
    path = request.query_params.get("path")
    if path:
        path = "/" + path.strip("/")
        path = path[3:] if path.startswith("/v1/") else path
    return _json(200, {"items": state.logged_requests(path or None)})


async def admin_orders(request: Request, state: SandboxState) -> Response:
    return _json(200, {"items": [order.as_admin() for order in state.all_orders()]})


async def admin_webhooks(request: Request, state: SandboxState) -> Response:
    return _json(200, {"items": state.webhooks()})


async def admin_clock(request: Request, state: SandboxState) -> Response:
    if request.method == "GET":
        return _json(200, {"now": iso(state.clock.now()), "frozen": state.clock.is_frozen})
    body = await _admin_body(request)
    now = parse_time(body["now"]) if "now" in body else None
    if "now" in body and now is None:
        raise ValueError("now must be an ISO 8601 instant")
    advance = body.get("advance_seconds")
    if advance is not None and (isinstance(advance, bool) or not isinstance(advance, int | float)):
        raise ValueError("advance_seconds must be a number")
    frozen = body.get("frozen")
    if frozen is not None and not isinstance(frozen, bool):
        raise ValueError("frozen must be true or false")
    # Webhook deliveries block on the receiver: run them off the event loop, which keeps serving /v1.
    moved = await run_in_threadpool(state.move_clock, now=now, advance_s=advance, frozen=frozen)
    return _json(200, moved)


async def admin_tick(request: Request, state: SandboxState) -> Response:
    return _json(200, await run_in_threadpool(state.move_clock))


async def admin_faults(request: Request, state: SandboxState) -> Response:
    if request.method == "POST":
        state.faults.update(await _admin_body(request))
    return _json(200, state.faults.as_dict())


async def admin_config(request: Request, state: SandboxState) -> Response:
    if request.method == "POST":
        state.apply_config(await _admin_body(request))
    return _json(200, state.config_view())


async def admin_reset(request: Request, state: SandboxState) -> Response:
    state.reset()
    return _json(200, {})


async def admin_send_webhook(request: Request, state: SandboxState) -> Response:
    body = await _admin_body(request)
    order = state.find_order(str(body.get("flexfactor_order_id", "")))
    if order is None:
        return _json(404, {"error": "unknown flexfactor_order_id"})
    event = body.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("event is required, e.g. order.completed")
    error = await run_in_threadpool(state.send_now, order, event, resent=bool(body.get("resent", False)))
    return _json(200, {"delivered": error is None, "error": error})


async def admin_revoke_tokens(request: Request, state: SandboxState) -> Response:
    """Revoke every bearer token issued so far, as FlexFactor may before `expires`: the next call
    with one is answered 401."""
    with state.lock:
        revoked = len(state.store.tokens)
        state.store.tokens.clear()
    return _json(200, {"revoked": revoked})


def _admin_routes() -> list[Route]:
    return [
        Route("/_sandbox/health", admin(admin_health), methods=["GET"]),
        Route("/_sandbox/requests", admin(admin_requests), methods=["GET"]),
        Route("/_sandbox/orders", admin(admin_orders), methods=["GET"]),
        Route("/_sandbox/webhooks", admin(admin_webhooks), methods=["GET"]),
        Route("/_sandbox/webhooks/send", admin(admin_send_webhook), methods=["POST"]),
        Route("/_sandbox/clock", admin(admin_clock), methods=["GET", "POST"]),
        Route("/_sandbox/tick", admin(admin_tick), methods=["POST"]),
        Route("/_sandbox/faults", admin(admin_faults), methods=["GET", "POST"]),
        Route("/_sandbox/config", admin(admin_config), methods=["GET", "POST"]),
        Route("/_sandbox/reset", admin(admin_reset), methods=["POST"]),
        Route("/_sandbox/tokens/revoke", admin(admin_revoke_tokens), methods=["POST"]),
    ]
