"""Headless Chromium at an exact viewport width, driven over the DevTools protocol on a pipe (stdlib only).

`--window-size` cannot go below about 500 px in headless mode, so the viewport is set with
Emulation.setDeviceMetricsOverride instead; the pipe (--remote-debugging-pipe: commands on fd 3,
answers and events on fd 4, each message JSON ended by NUL) needs no port and no websocket library.

    with ChromiumPage(browser, width=390, height=844) as page:
        page.open(Path("report.html"))
        page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(Path("out.png"), height=2000)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ChromiumPage", "find_browser"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ChromiumPage:
    """One headless browser with one page whose viewport is `width` x `height` CSS px at scale 1."""

    def __init__(self, browser: str, *, width: int, height: int = 900, timeout_s: float = 60.0) -> None:
        self.browser, self.width, self.height, self.timeout_s = browser, width, height, timeout_s
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> ChromiumPage:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def at_fds_3_and_4() -> None:  # in the child, before exec: the pipe ends where Chromium wants them
            # Copied above 10 first, so neither end is overwritten, nor left close-on-exec, if it is 3 or 4.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._process = subprocess.Popen(
            [self.browser, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=at_fds_3_and_4,  # safe here: this process starts no threads around it
            close_fds=False,  # fds 3 and 4, made by at_fds_3_and_4, must survive the exec
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        metrics = {
            "width": self.width,
            "height": self.height,
            "deviceScaleFactor": 1,
            "mobile": self.width < 600,
        }
        self._call("Emulation.setDeviceMetricsOverride", metrics, session=True)
        self._call("Page.enable", {}, session=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._send("Browser.close", {})
            self._process.wait(timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, path: Path) -> None:
        """Load a local file and wait until its load event has fired."""
        self._events.clear()
        self._call("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._read_message()

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (returned by value)."""
        answer = self._call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"script failed: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def screenshot(self, out: Path, *, height: int | None = None) -> Path:
        """A PNG of the page from its top: `height` CSS px of it (the whole page when None)."""
        full = int(self.evaluate("document.documentElement.scrollHeight"))
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(height or full, full), "scale": 1}
        params = {"format": "png", "captureBeyondViewport": True, "clip": clip}
        data = self._call("Page.captureScreenshot", params, session=True)["data"]
        out.write_bytes(base64.b64decode(data))
        return out

    # --- the protocol ---------------------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any], *, session: bool = False) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _call(self, method: str, params: dict[str, Any], *, session: bool = False) -> dict[str, Any]:
        wanted = self._send(method, params, session=session)
        while True:
            message = self._read_message()
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error'].get('message')}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], self.timeout_s)
            if not ready:
                raise TimeoutError(f"chromium sent nothing for {self.timeout_s} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            self._events.append(message)
        return message
