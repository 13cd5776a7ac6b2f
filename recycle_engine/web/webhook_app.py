"""The HTTP service of `recycle-engine serve`: signed FlexFactor webhooks, real-time cascades, health check."""

from __future__ import annotations

import hmac
import logging
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import uvicorn
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from recycle_engine.adapters.flexfactor_webhooks import (
    NonceCache,
    WebhookEvent,
    WebhookMalformed,
    WebhookRejected,
    parse_event,
    verify_signature,
)
from recycle_engine.config import Settings
from recycle_engine.errors import InputError, StorageError
from recycle_engine.ports import Clock, FlexFactorGateway
from recycle_engine.services.initial_sales.cascade import cascade_order, parse_cascade_request
from recycle_engine.services.initial_sales.new_sales import Refused
from recycle_engine.services.outcomes.inbox_writer import InboxWriter
from recycle_engine.services.outcomes.webhook_events import accept_delivery, record_refusal, store_delivery
from recycle_engine.storage.webhook_repo import DbNonceCache, Delivery, ping

__all__ = ["AcceptedTally", "OnAccepted", "cascade_route", "create_app", "serve", "serving"]

log = logging.getLogger(__name__)

OnAccepted = Callable[[list[str]], None]
WEBHOOK_PATH = "/webhooks/flexfactor/{gateway_id}"


@dataclass
class AcceptedTally:
    """Counts accepted deliveries so that INFO carries one summary per `every`, not a line per delivery
    (each delivery is logged at DEBUG). `add` returns the summary's fields when one is due."""

    every: timedelta = timedelta(minutes=1)
    since: datetime | None = None
    by_event: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, event: str, reason: str, now: datetime) -> dict[str, object] | None:
        if self.since is None:
            self.since = now
        self.by_event[event] += 1
        self.by_reason[reason] += 1
        if now - self.since < self.every:
            return None
        summary: dict[str, object] = {
            "count": sum(self.by_event.values()),
            "since": self.since.isoformat(),
            "events": dict(sorted(self.by_event.items())),
            "reasons": dict(sorted(self.by_reason.items())),
        }
        self.since, self.by_event, self.by_reason = now, Counter(), Counter()
        return summary


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def create_app(
    settings: Settings,
    engine: Engine,
    clock: Clock,
    *,
    on_accepted: OnAccepted | None = None,
    apply_inline: bool = False,
) -> Starlette:
    """The service as an ASGI app: POST /webhooks/flexfactor/{gateway_id}, POST /cascade, GET /healthz.

    An accepted delivery is answered 200 once it is journalled and in the webhook inbox; the app's
    single writer (services.outcomes.inbox_writer, started and drained with the app's lifespan) applies it to its
    hand-off and then calls `on_accepted(handoff_ids)` with the hand-offs that reached a final state
    (serve passes services.outcomes.applying.apply_outcomes). `apply_inline=True` is the former synchronous path,
    kept for comparison: each request applies its event before answering, on_accepted after the answer."""
    writer = None if apply_inline else InboxWriter(engine, clock, on_applied=on_accepted)
    receiver = _Receiver(settings, engine, clock, on_accepted, writer)
    cascade_clients: list[Mapping[str, FlexFactorGateway]] = []

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if writer is not None:
            writer.start()
        try:
            yield
        finally:
            if writer is not None:
                await run_in_threadpool(writer.stop)
            if cascade_clients:
                from recycle_engine.bootstrap import close_clients

                for clients in cascade_clients:
                    close_clients(clients)

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, receiver.receive, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
            cascade_route(settings, engine, clock, built=cascade_clients),
        ],
        lifespan=lifespan,
    )
    app.state.inbox_writer = writer
    return app


class _Receiver:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        on_accepted: OnAccepted | None,
        writer: InboxWriter | None,
    ) -> None:
        self.settings, self.engine, self.clock, self.on_accepted = settings, engine, clock, on_accepted
        self.writer = writer
        self.max_body = settings.serve.max_body_bytes
        # One cache per gateway: its purge uses that gateway's freshness window.
        self.nonces: dict[str, NonceCache] = {
            g.id: DbNonceCache(engine, g.id, window_s=g.flexfactor.webhook_tolerance_seconds)
            for g in settings.flexfactor_gateways()
            if g.flexfactor is not None
        }
        self.tally = AcceptedTally()

    async def receive(self, request: Request) -> Response:
        if self.writer is None:
            return await self._receive(request)
        with self.writer.receiving():
            return await self._receive(request)

    async def _receive(self, request: Request) -> Response:
        gateway_id = str(request.path_params["gateway_id"])
        now = self.clock.now()
        nonce = request.headers.get("x-fc-nonce")
        gateway = self.settings.gateways.get(gateway_id)
        if gateway is None or gateway.flexfactor is None:
            return await self._refuse(gateway_id, now, 404, "unknown gateway", nonce=nonce)
        ff = gateway.flexfactor
        try:
            raw = await self._read_body(request)
        except _Refused as exc:
            return await self._refuse(gateway_id, now, exc.status, exc.reason, nonce=nonce)
        try:
            await run_in_threadpool(
                verify_signature,
                raw,
                dict(request.headers),
                signing_key_b64=ff.hmac_signing_key,
                # Behind a proxy FlexFactor signs the public host, not the one that reaches us.
                host=ff.webhook_public_host or request.headers.get("host", ""),
                now=now,
                tolerance_s=ff.webhook_tolerance_seconds,
                nonces=self.nonces[gateway_id],
            )
        except WebhookRejected as exc:
            return await self._refuse(gateway_id, now, 401, exc.reason, nonce=nonce)
        except StorageError:
            log.exception("webhook nonce not stored; answering 503 so FlexFactor resends")
            return JSONResponse({"error": "storage unavailable"}, 503)
        body_text = raw.decode("utf-8", errors="replace")[: self.max_body]
        try:
            event = parse_event(raw)
        except WebhookMalformed as exc:
            return await self._refuse(gateway_id, now, 400, str(exc), nonce=nonce, body=body_text)
        if self.writer is None:
            return await self._apply_inline(gateway_id, event, nonce or "", body_text, now)
        try:
            accepted = await run_in_threadpool(
                accept_delivery,
                self.engine,
                gateway_id=gateway_id,
                event=event,
                nonce=nonce or "",
                body=body_text,
                now=now,
            )
        except StorageError:
            log.exception("webhook event not stored; answering 503 so FlexFactor resends")
            return JSONResponse({"error": "storage unavailable"}, 503)
        if not accepted.is_duplicate:
            self.writer.wake()
        status = "duplicate" if accepted.is_duplicate else "accepted"
        self._log_accepted(gateway_id, event, status, now)
        return JSONResponse({"status": status, "delivery": accepted.delivery_id}, 200)

    async def _apply_inline(
        self, gateway_id: str, event: WebhookEvent, nonce: str, body_text: str, now: datetime
    ) -> Response:
        """The synchronous path: the event is applied before the answer (see create_app)."""
        try:
            stored = await run_in_threadpool(
                store_delivery,
                self.engine,
                gateway_id=gateway_id,
                event=event,
                nonce=nonce,
                body=body_text,
                now=now,
            )
        except StorageError:
            log.exception("webhook event not stored; answering 503 so FlexFactor resends")
            return JSONResponse({"error": "storage unavailable"}, 503)
        reason = "duplicate" if stored.effect is None else stored.effect.reason
        self._log_accepted(gateway_id, event, reason, now)
        background = None
        if self.on_accepted is not None and stored.handoff_ids:
            background = BackgroundTask(self._after_commit, stored.handoff_ids)
        status = "duplicate" if stored.is_duplicate else "accepted"
        return JSONResponse({"status": status, "reason": reason}, 200, background=background)

    def _log_accepted(self, gateway_id: str, event: WebhookEvent, reason: str, now: datetime) -> None:
        summary = self.tally.add(event.event, reason, now)
        if summary is not None:
            log.info("webhooks accepted", extra=summary)
        log.debug(
            "webhook accepted",
            extra={
                "gateway": gateway_id,
                "event": event.event,
                "flexfactor_order_id": event.flexfactor_order_id,
                "external_order_id": event.external_order_id,
                "reason": reason,
                "resent": event.is_resent,
            },
        )

    async def _read_body(self, request: Request) -> bytes:
        """The raw bytes, whatever the Content-Type; refused above max_body_bytes before and while reading."""
        return await _bounded_body(request, self.max_body)

    async def _refuse(
        self,
        gateway_id: str,
        now: datetime,
        status: int,
        reason: str,
        *,
        nonce: str | None,
        body: str | None = None,
    ) -> Response:
        delivery = Delivery(
            gateway_id=gateway_id,
            received_at=now,
            accepted=False,
            http_status=status,
            reason=reason,
            nonce=nonce,
            body=body,  # only for verified bodies: an unverified one is anybody's text
        )
        try:
            await run_in_threadpool(record_refusal, self.engine, delivery)
        except StorageError:
            log.exception("refused webhook delivery not recorded", extra={"gateway": gateway_id[:64]})
        log.warning(
            "webhook refused", extra={"gateway": gateway_id[:64], "http_status": status, "reason": reason}
        )
        return JSONResponse({"error": reason}, status)

    def _after_commit(self, handoff_ids: list[str]) -> None:
        assert self.on_accepted is not None
        try:
            self.on_accepted(handoff_ids)
        except Exception:
            # The outcome is committed on the hand-off; reconcile applies whatever this missed.
            log.exception("applying outcomes after a webhook failed", extra={"handoffs": handoff_ids})

    async def healthz(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self._ping)
        except (SQLAlchemyError, StorageError):
            log.warning("health check: database unavailable")
            return JSONResponse({"status": "unavailable", "database": "down"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    def _ping(self) -> None:
        with self.engine.connect() as conn:
            ping(conn)


# --- POST /cascade ------------------------------------------------------------------------------


def cascade_route(
    settings: Settings,
    engine: Engine,
    clock: Clock,
    clients: Mapping[str, FlexFactorGateway] | None = None,
    *,
    built: list[Mapping[str, FlexFactorGateway]] | None = None,
) -> Route:
    """POST /cascade {"order_id": "..."}: a real-time cascade for a caller holding serve.api_key.

    503 while no api_key is configured; 401 for a missing or wrong bearer key; 400 for a body that is
    not exactly {"order_id": string}; 404 for an unknown order; 422 with the reason for an order that
    may not cascade; else 200 {"order_id", "result": approved|declined|unknown, "handoff_id", "reason"?}.
    `clients` default to one FlexFactor client per gateway, built on first use and kept in `built` (the
    app closes them when it stops: each holds a pool and its token cache's connection)."""
    api_key = settings.serve.api_key
    limit = settings.serve.max_body_bytes
    lock = threading.Lock()
    built = built if built is not None else []
    if clients is not None:
        built.append(clients)

    def flexfactor() -> Mapping[str, FlexFactorGateway]:
        with lock:
            if not built:
                from recycle_engine.bootstrap import flexfactor_clients

                built.append(flexfactor_clients(settings, clock, engine=engine))
            return built[0]

    async def cascade(request: Request) -> Response:
        if not api_key:
            return JSONResponse({"error": "cascade disabled: set serve.api_key"}, 503)
        scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
        # Constant time, so the key cannot be guessed byte by byte from response times.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), api_key.encode()
        ):
            return JSONResponse(
                {"error": "missing or wrong API key"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            order_id = parse_cascade_request(await _bounded_body(request, limit))
        except _Refused as exc:
            return JSONResponse({"error": exc.reason}, exc.status)
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        try:
            outcome = await run_in_threadpool(
                cascade_order, settings, engine, flexfactor(), order_id, now=clock.now()
            )
        except (SQLAlchemyError, StorageError):
            log.exception("cascade not stored", extra={"order": order_id})
            return JSONResponse({"error": "storage unavailable"}, 503)
        if isinstance(outcome, Refused):
            body = {"order_id": order_id, "error": outcome.reason, "code": outcome.code}
            return JSONResponse(body, 404 if outcome.code == "UNKNOWN_ORDER" else 422)
        return JSONResponse(outcome.as_json(), 200)

    return Route("/cascade", cascade, methods=["POST"])


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The raw request body, refused (413) above `limit` bytes before and while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _Refused(400, "bad content-length")
        if int(declared) > limit:
            raise _Refused(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, "body too large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Refused(400, "client disconnected") from None
    return b"".join(chunks)


# --- runners -------------------------------------------------------------------------------------


def _config(app: Starlette, *, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",  # starts the inbox writer, and drains it after the last request
        access_log=False,
        log_config=None,  # keep the engine's structured logging
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def serve(app: Starlette, *, host: str, port: int) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (uvicorn finishes requests in flight)."""
    # uvicorn re-raises the stopping signal after its graceful shutdown, to the handlers it found at
    # start: make those handlers no-ops so a requested stop ends with exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    # Bind here, so that a port in use is an OSError the command line turns into a sentence.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        log.info("webhook service listening", extra={"host": host, "port": port})
        uvicorn.Server(_config(app, host=host, port=port)).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def serving(app: Starlette, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` in a background thread (port 0 = a free port); yields its base URL until the block ends."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_config(app))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="webhook-service", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the webhook service did not start")
            time.sleep(0.01)
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
