"""Logging set-up: readable lines on a terminal, JSON lines otherwise (for the scheduler and journald)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging", "end_progress", "show_progress"]

# uvicorn adds `color_message`, the message with ANSI colours: never written.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        return f"{base} {tail}".rstrip()


class _Progress:
    """The one-line progress display on a terminal, which log lines must not run into."""

    line: str | None = None


_CLEAR_LINE = "\r\x1b[K"


def show_progress(text: str) -> None:
    """Draw (or redraw) the progress line at the bottom of the terminal."""
    _Progress.line = text
    sys.stderr.write(_CLEAR_LINE + text)
    sys.stderr.flush()


def end_progress() -> None:
    """Leave the last progress line on screen and move below it."""
    if _Progress.line is not None:
        _Progress.line = None
        sys.stderr.write("\n")
        sys.stderr.flush()


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes a log line above the progress line: clears it, writes the record, draws it again."""

    def emit(self, record: logging.LogRecord) -> None:
        if _Progress.line is None:
            super().emit(record)
            return
        self.stream.write(_CLEAR_LINE)
        super().emit(record)
        self.stream.write(_Progress.line)
        self.flush()


def configure_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Send logs to stderr; JSON lines unless stderr is a terminal (or as forced)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr) if json_lines else _TerminalHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # alembic.runtime.plugins announces every autogenerate plugin at INFO on each upgrade.
    for noisy in ("urllib3", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
