"""Log records of the server as one JSON object per line on stdout.

Each line has `time` (UTC, RFC 3339 with milliseconds), `level`, `logger` and `message`,
plus the fields a record carries in `extra` (the access log adds method, path, status
and duration_ms), and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

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
