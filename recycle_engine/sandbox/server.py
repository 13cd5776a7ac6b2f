"""The sandbox HTTP server: FlexFactor's /v1 contract, the /_sandbox admin API, and its runners."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from recycle_engine.sandbox.scenarios import (
    STATUS_NAMES,
    Evaluation,
    parse_time,
    plan_outcome,
    validate_evaluate,
)
from recycle_engine.sandbox.state import (
    LoggedRequest,
    Order,
    Replay,
    SandboxConfig,
    SandboxState,
    iso,
    new_token,
)

# SandboxConfig is re-exported: callers may take it from here, next to run_sandbox.
__all__ = ["RunningSandbox", "SandboxConfig", "create_app", "run_sandbox", "serve_forever"]

log = logging.getLogger("recycle_engine.sandbox")

_GATEWAY_ERROR = b"<html><body><h1>%d</h1>The upstream gateway is unavailable.</body></html>"


@dataclass
class Deferred:
    """The part of a request done after the simulated processing time: it builds the answer."""

    commit: Callable[[], Response]
    abort: Callable[[], None] | None = None


Handler = Callable[[Request, SandboxState, LoggedRequest], Awaitable["Response | Deferred"]]


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


# --- vendor endpoints ------------------------------------------------------------------------------


def vendor(
    template: str, handler: Handler, *, needs_auth: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a /v1 handler with the request log, bearer check, faults and simulated processing time."""

    async def endpoint(request: Request) -> Response:
        state: SandboxState = request.app.state.sandbox
        entry = state.log_request(request.method, request.url.path[3:])
        response = await _answer(request, state, entry, template, handler, needs_auth)
        entry.status = response.status_code
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
        retry_after = {"Retry-After": str(faults.settings.retry_after_s)}
        return _json(429, {"status": 429, "title": "Too Many Requests"}, headers=retry_after)
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
        root, mid=config.mid, max_expiry_days=config.max_expiry_days, now=state.clock.now()
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


async def get_order(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    order = state.find_order(request.path_params["id"])
    if order is None:
        return _json(404, {"status": 404, "title": "Not Found", "detail": "Unknown order id."})
    return Deferred(lambda: _json(200, order.as_vendor()))


async def list_orders(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    query = request.query_params
    errors: dict[str, list[str]] = {}
    bounds = {}
    for name in ("from", "to"):
        raw = query.get(name)
        bounds[name] = parse_time(raw) if raw else None
        if raw and bounds[name] is None:
            errors[name.capitalize()] = [f"The value '{raw}' is not a valid date."]
    numbers: dict[str, int] = {}
    for name, default, low in (("pageSize", 10, 1), ("pageNumber", 1, 1)):
        raw = query.get(name, str(default))
        numbers[name] = int(raw) if raw.isdigit() else 0
        if numbers[name] < low:
            errors[name[0].upper() + name[1:]] = [f"The value '{raw}' is not valid for {name}."]
    raw_statuses = query.getlist("status")
    if any(not s.isdigit() or int(s) not in STATUS_NAMES for s in raw_statuses):
        errors["Status"] = ["Each status must be an order status code from 0 to 7."]
    sort = query.get("sort", "desc").lower()
    if sort not in ("asc", "desc"):
        errors["Sort"] = ["The sort must be asc or desc."]
    if errors:
        return field_errors(state, 400, errors)
    statuses = {int(s) for s in raw_statuses}
    mid, exact = (query.get("mid") or "").lower(), query.get("query")
    order_by = (query.get("orderBy") or "createdOn").lower()

    def matches(o: Order) -> bool:
        return (
            (not mid or o.mid.lower() == mid)
            and (bounds["from"] is None or o.placed_at >= bounds["from"])
            and (bounds["to"] is None or o.placed_at <= bounds["to"])
            and (not statuses or o.status in statuses)
            and (exact is None or o.external_order_id == exact)
        )

    def commit() -> Response:
        items = [o for o in state.all_orders() if matches(o)]
        items.sort(key=lambda o: _sort_key(o, order_by), reverse=sort == "desc")
        size, number, total = numbers["pageSize"], numbers["pageNumber"], len(items)
        pages = -(-total // size)
        return _json(
            200,
            {
                "pageNumber": number,
                "pageSize": size,
                "pageCount": pages,
                "totalItemCount": total,
                "hasNextPage": number < pages,
                "isLastPage": number >= pages,
                "items": [o.as_vendor() for o in items[(number - 1) * size : number * size]],
                "statusNames": {str(code): name for code, name in STATUS_NAMES.items()},
            },
        )

    return Deferred(commit)


def _sort_key(order: Order, order_by: str) -> Any:
    if order_by == "amount":
        return order.amount
    if order_by == "status":
        return order.status
    if order_by == "expirydate":
        return order.expiry_at or datetime.min.replace(tzinfo=UTC)
    return order.placed_at


async def cancel(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    return await _cancel(request, state, state.find_order(request.path_params["id"]))


async def external_cancel(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    entry.order_id = request.path_params["order_id"]
    return await _cancel(request, state, state.find_by_external(entry.order_id))


async def _cancel(request: Request, state: SandboxState, order: Order | None) -> Response | Deferred:
    raw = await request.body()
    body = await _read_object(request) if raw.strip() else {}
    if body is None:
        return field_errors(state, 400, {"$": ["The request body must be a JSON object."]})
    if order is None:
        return _json(404, {"status": 404, "title": "Not Found", "detail": "Unknown order."})
    key = str(_lower_keys(body).get("idempotencykey") or "")
    keys, record = state.store.cancel_keys, None
    if key:
        body_hash = _canonical_hash([request.url.path, body])
        record, is_new = state.claim_key(keys, key, body_hash)
        if not is_new:
            return _replay_or_conflict(state, record, body_hash)

    def commit() -> Response:
        if state.cancel_order(order):
            response = _json(200, {}, background=BackgroundTask(state.deliver_pending))
        else:
            name = STATUS_NAMES[order.status]
            response = field_errors(
                state, 400, {"OrderId": [f"An order in status {name} cannot be cancelled."]}
            )
        if record is not None:
            record.status, record.body = response.status_code, bytes(response.body)
        return response

    def abort() -> None:
        if record is not None:
            state.release_key(keys, key, record)

    return Deferred(commit, abort)


def create_app(config: SandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` holds its SandboxState."""
    routes = [
        Route("/v1/oauth2/token", vendor("/oauth2/token", token, needs_auth=False), methods=["POST"]),
        Route("/v1/evaluate", vendor("/evaluate", evaluate), methods=["POST"]),
        Route("/v1/orders", vendor("/orders", list_orders), methods=["GET"]),
        Route("/v1/orders/{id}", vendor("/orders/{id}", get_order), methods=["GET"]),
        Route("/v1/orders/{id}/cancel", vendor("/orders/{id}/cancel", cancel), methods=["POST"]),
        Route(
            "/v1/orders/{order_id}/external-cancel",
            vendor("/orders/{orderId}/external-cancel", external_cancel),
            methods=["POST"],
        ),
        *_admin_routes(),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = SandboxState(config)
    return app


# --- admin API (loopback only) --------------------------------------------------------------------

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
    ]


# --- runners ---------------------------------------------------------------------------------------


@dataclass
class RunningSandbox:
    """A sandbox serving in a background thread."""

    base_url: str
    admin_url: str
    port: int
    config: SandboxConfig
    state: SandboxState


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # accept (queue) connections at once, before uvicorn's loop is up
    return sock


def _server(app: Starlette) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=2,
            backlog=2048,
        )
    )


def _urls(host: str, port: int) -> tuple[str, str]:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1", f"http://{shown}:{port}/_sandbox"


@contextmanager
def run_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningSandbox]:
    """Serve a sandbox in a background thread (port 0 = a free port) until the block ends."""
    config = config or SandboxConfig()
    app = create_app(config)
    state: SandboxState = app.state.sandbox
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _server(app)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="flexfactor-sandbox", daemon=True
    )
    thread.start()
    try:
        base_url, admin_url = _urls(host, bound_port)
        _wait_until_up(server, thread, host, bound_port)
        yield RunningSandbox(base_url, admin_url, bound_port, config, state)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()
        state.close()


def _wait_until_up(server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the FlexFactor sandbox did not start")
        time.sleep(0.01)
    connection = http.client.HTTPConnection("::1" if ":" in host else "127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/_sandbox/health")
        if connection.getresponse().status != 200:
            raise RuntimeError("the FlexFactor sandbox does not answer")
    finally:
        connection.close()


def serve_forever(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    latency_ms: int = 0,
    on_ready: Callable[[str, str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; `on_ready(base_url, admin_url)` once bound."""
    app = create_app(config)
    state: SandboxState = app.state.sandbox
    if latency_ms:
        state.faults.update({"latency_ms": latency_ms})
    sock = _bind(host, port)
    if on_ready is not None:
        on_ready(*_urls(host, sock.getsockname()[1]))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it once it has shut down; end quietly, not by traceback.
    signal.signal(signal.SIGTERM, stop)
    try:
        _server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        state.close()
