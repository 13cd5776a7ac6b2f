"""The fake's HTTP side: /api/transact.php and /api/query.php as NMI answers them, plus /_fake admin."""

from __future__ import annotations

import json
import socket
from urllib.parse import parse_qsl, urlencode

from recycle_engine.nmi_fake.state import FakeNmi, Fault
from recycle_engine.standin_server import RunningStandin, StandinHandler, StandinServer, start_standin
from recycle_engine.standin_server import make_server as make_standin_server

__all__ = ["FakeNmi", "Fault", "RunningFakeNmi", "make_server", "start_fake_nmi"]

RunningFakeNmi = RunningStandin[FakeNmi]  # a fake serving on loopback in a thread; `url` is its root


class _Handler(StandinHandler):
    server: StandinServer[FakeNmi]

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        self.send(status, body, content_type)

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path == "/_fake/health":
            self._send(200, "ok")
        elif self.path == "/_fake/log":
            self._send(200, json.dumps(fake.log()), "application/json")
        else:
            self._send(404, "not found")

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self._body()
        if self.path == "/api/transact.php":
            self._transact(fake, dict(parse_qsl(raw.decode(), keep_blank_values=True)))
        elif self.path == "/api/query.php":
            status, xml = fake.query(dict(parse_qsl(raw.decode(), keep_blank_values=True)))
            self._send(status, xml, "text/xml")
        elif self.path == "/_fake/script":
            body = json.loads(raw or b"{}")
            fake.script(by_vault=body.get("by_vault"), default_code=body.get("default_code"))
            if "answer_delay_s" in body:
                fake.answer_delay_s = float(body["answer_delay_s"])
            self._send(204, "")
        elif self.path == "/_fake/faults":
            fake.add_faults(*(Fault(f) for f in json.loads(raw or b"{}").get("faults", [])))
            self._send(204, "")
        else:
            self._send(404, "not found")

    def _transact(self, fake: FakeNmi, form: dict[str, str]) -> None:
        answer = fake.transact(form)
        if answer.charge is not None and fake.answer_delay_s:
            self.server.stopping.wait(fake.answer_delay_s)
        match answer.fault:
            case Fault.SERVER_ERROR:
                self._send(500, "Internal Server Error")
            case Fault.SERVER_ERROR_AFTER_CHARGE:
                self._send(502, "Bad Gateway")
            case Fault.MALFORMED_AFTER_CHARGE:
                self._send(200, "<html><body>Service Unavailable</body></html>", "text/html")
            case Fault.RESET_AFTER_CHARGE:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            case Fault.TIMEOUT_AFTER_CHARGE:
                self.server.stopping.wait(fake.hold_s)
                self._send(200, urlencode(answer.fields))
            case _:
                self._send(200, urlencode(answer.fields))


def make_server(fake: FakeNmi, host: str = "127.0.0.1", port: int = 0) -> StandinServer[FakeNmi]:
    return make_standin_server(fake, _Handler, host, port)


def start_fake_nmi(fake: FakeNmi, host: str = "127.0.0.1", port: int = 0) -> RunningFakeNmi:
    """Serve `fake` on `host:port` (0: a free port) in a daemon thread."""
    return start_standin(fake, _Handler, name="nmi-fake", host=host, port=port)
