"""The sandbox HTTP server: the ASGI app of the /v1 and /_sandbox routes, and the runners that serve it."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from recycle_engine.sandbox.admin import _admin_routes
from recycle_engine.sandbox.orders import cancel, external_cancel, get_order, list_orders
from recycle_engine.sandbox.state import SandboxConfig, SandboxState
from recycle_engine.sandbox.vendor import evaluate, token, vendor

# SandboxConfig is re-exported: callers may take it from here, next to run_sandbox.
__all__ = ["RunningSandbox", "SandboxConfig", "create_app", "run_sandbox", "serve_forever"]


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
            date_header=False,  # the /v1 answers carry the sandbox clock's Date instead
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
