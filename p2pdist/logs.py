"""Structured logs, one schema for the agent and the tracker: one JSON object per line.

Every line has ``ts`` (UTC, milliseconds), ``level``, ``logger`` and ``msg`` (what happened: a short
phrase, or an event name such as ``lease_granted``), then the call's fields, then ``exc`` (the
traceback) when there is one. Fields come from ``extra={...}`` or, through :func:`log_event`, as
keyword arguments (any names, even ones a LogRecord uses itself).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FIELDS_ATTR = "fields"  # the ``extra`` key log_event carries its fields under
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", FIELDS_ATTR}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        out.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", stream=sys.stderr) -> None:
    """JSON lines on ``stream`` for the whole process (aiohttp's own loggers included)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP request only when debugging: at info they would drown the events.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields``: ``{"msg": event, **fields}``."""
    logger.log(level, event, extra={FIELDS_ATTR: fields})
