"""Logging set-up: readable lines on a terminal, JSON lines otherwise (for the scheduler and journald)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging"]

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


def configure_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Send logs to stderr; JSON lines unless stderr is a terminal (or as forced)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "alembic.runtime.migration", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
