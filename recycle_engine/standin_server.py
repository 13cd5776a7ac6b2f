"""The loopback HTTP plumbing the NMI and CRM stand-ins share: a threading server holding its fake,
a quiet handler base, and the server run in a daemon thread.

It imports nothing of the product, so the stand-ins that use it stay self-contained.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

__all__ = ["RunningStandin", "StandinHandler", "StandinServer", "make_server", "start_standin"]

FakeT = TypeVar("FakeT")


class StandinServer(ThreadingHTTPServer, Generic[FakeT]):
    """A server whose handlers answer from `fake`; `stopping` is set once it shuts down, so a handler
    holding an answer back (a scripted timeout) lets go."""

    daemon_threads = True
    fake: FakeT
    stopping: threading.Event


class StandinHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, no request lines on stderr, and `send` for a whole answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it
        return  # a stand-in keeps its own request log, without credentials

    def send(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class RunningStandin(Generic[FakeT]):
    """A stand-in serving on loopback in a thread; `url` is its root."""

    fake: FakeT
    server: StandinServer[FakeT]
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def make_server(
    fake: FakeT, handler: type[StandinHandler], host: str = "127.0.0.1", port: int = 0
) -> StandinServer[FakeT]:
    """A server for `fake` bound to `host:port` (0: a free port), not yet serving."""
    server: StandinServer[FakeT] = StandinServer((host, port), handler)
    server.fake = fake
    server.stopping = threading.Event()
    return server


def start_standin(
    fake: FakeT, handler: type[StandinHandler], *, name: str, host: str = "127.0.0.1", port: int = 0
) -> RunningStandin[FakeT]:
    """Serve `fake` on `host:port` (0: a free port) in a daemon thread called `name`."""
    server = make_server(fake, handler, host, port)
    # stop() waits for the serving loop to look up; the default half-second poll made every stop that long.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
    )
    thread.start()
    return RunningStandin(fake, server, thread)
