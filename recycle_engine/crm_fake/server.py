"""The fake's HTTP side: the CRM's API endpoints (POST, form or query parameters) and /_fake admin calls."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from recycle_engine.crm_fake.state import FakeCrm, Fault, FaultKind
from recycle_engine.standin_server import RunningStandin, StandinHandler, StandinServer, start_standin
from recycle_engine.standin_server import make_server as make_standin_server

__all__ = ["FakeCrm", "Fault", "FaultKind", "RunningFakeCrm", "make_server", "start_fake_crm"]

RunningFakeCrm = RunningStandin[FakeCrm]  # a fake serving on loopback in a thread; `url` is its root


class _Handler(StandinHandler):
    server: StandinServer[FakeCrm]
    # Headers and body go out in two writes: without this, Nagle holds the body for the client's
    # delayed ACK, about 40 ms a call, and the fake's latency would be a kernel artefact.
    disable_nagle_algorithm = True

    def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
        self.send(status, body, content_type)

    def do_GET(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        if path == "/_fake/health":
            self._send(200, "ok", "text/plain")
        elif path == "/_fake/log":
            self._send(200, json.dumps(fake.log()))
        elif path == "/_fake/purchases":
            self._send(200, json.dumps(fake.purchase_records()))
        else:
            self._send(404, "not found", "text/plain")

    def do_POST(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts.path.startswith("/_fake/"):
            self._admin(fake, parts.path, json.loads(raw or b"{}"))
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        with fake.serving(parts.path, params) as alongside:
            answer = fake.call(parts.path, params, self.client_address[0], alongside)
            if answer.hold:
                self.server.stopping.wait(fake.hold_s)
                self.close_connection = True
                return
            # The latency is waited here, outside the fake's lock: calls made at once wait together.
            delay_s = answer.delay_s + fake.latency_ms / 1000
            if delay_s:
                self.server.stopping.wait(delay_s)
            if answer.text is None:
                self._send(answer.status, "<html><body>Server Error</body></html>", "text/html")
            else:
                self._send(answer.status, answer.text)

    def _admin(self, fake: FakeCrm, path: str, body: dict[str, Any]) -> None:
        if path == "/_fake/records":
            fake.add(body.get("transactions", ()), body.get("orders", ()), body.get("purchases", ()))
        elif path == "/_fake/faults":
            fake.add_faults(*(_fault(f) for f in body.get("faults", [])))
        elif path == "/_fake/arrivals":
            fake.arrive_after_page(int(body["after_page"]), body.get("transactions", ()))
        else:
            self._send(404, "not found", "text/plain")
            return
        self._send(204, "")


def _fault(raw: dict[str, Any]) -> Fault:
    return Fault(
        FaultKind(raw["kind"]),
        raw.get("endpoint"),
        raw.get("message", "Temporary error, please try again"),
        float(raw.get("seconds", 0)),
    )


def make_server(fake: FakeCrm, host: str = "127.0.0.1", port: int = 0) -> StandinServer[FakeCrm]:
    return make_standin_server(fake, _Handler, host, port)


def start_fake_crm(fake: FakeCrm, host: str = "127.0.0.1", port: int = 0) -> RunningFakeCrm:
    """Serve `fake` on `host:port` (0: a free port) in a daemon thread."""
    return start_standin(fake, _Handler, name="crm-fake", host=host, port=port)
