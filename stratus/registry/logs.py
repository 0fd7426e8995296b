"""Log records of the server as one JSON object per line on stdout.

Each line has `time` (UTC, RFC 3339 with milliseconds), `level`, `logger` and `message`,
plus the fields a record carries in `extra` (the access log adds method, path, status
and duration_ms), and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

ACCESS_LOGGER = "stratus.access"
# Longer request paths are cut in access lines; no valid registry path comes close.
MAX_LOGGED_PATH = 1024

# Attributes every LogRecord has, and uvicorn's terminal-coloured copy of its message;
# anything else on a record came from `extra`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def logging_config(level: str) -> dict[str, Any]:
    """Return a dictConfig that writes Stratus's and uvicorn's records to stdout as JSON."""
    handler_level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "stratus": {"handlers": ["stdout"], "level": handler_level, "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": handler_level, "propagate": False},
            # Stratus writes its own access line, with the time taken; uvicorn's would repeat it.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "botocore": {"handlers": ["stdout"], "level": "WARNING", "propagate": False},
        },
    }


class AccessLog:
    """One JSON line per request on stdout, in the same shape as JsonFormatter's lines.

    Lines are collected in memory and written together every FLUSH_INTERVAL seconds by
    the event loop, because a write per request costs the registry a large share of its
    throughput. A process killed with SIGKILL loses at most that interval of lines.
    """

    FLUSH_INTERVAL = 0.1

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        self._stream = stream
        self._lines: list[str] = []
        self._flush_scheduled = False
        self._second = -1
        self._second_text = ""

    def record(self, method: str, path: str, status: int, duration_ms: float) -> None:
        if len(path) > MAX_LOGGED_PATH:
            path = path[:MAX_LOGGED_PATH] + "..."
        now = time.time()
        line = orjson.dumps({
            "time": self._timestamp(now),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "message": f"{method} {path} {status} {duration_ms:.2f}ms",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
        }).decode()
        self._lines.append(line)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._lines:
            return
        stream = self._stream or sys.stdout
        stream.write("\n".join(self._lines) + "\n")
        stream.flush()
        self._lines.clear()

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"
