"""Logging for rag-serve: plain text or one JSON object per line, every record tagged with its request id.

``REQUEST_ID`` is set per request by ``api.observe.ObserveRequests``; context variables follow the request into
its handler task, its worker threads (``asyncio.to_thread`` copies the context) and its streamed body, so any
log line written while serving a request carries that request's id. Structured fields ride in a record's
``fields`` attribute (``log.info(..., extra={"fields": {...}})``): top-level keys in JSON, ``key=value`` in text.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("rag_request_id", default=None)
LogFormat = Literal["text", "json"]
_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id when serving a
    request, the record's ``fields``, and the traceback as ``exc_info`` text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """The root logger at ``level`` writing ``fmt`` to stderr (uvicorn's loggers propagate to it)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def key_values(fields: dict[str, Any]) -> str:
    """``fields`` as ``key=value`` pairs for the text format (lists joined by commas, None as '-')."""

    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "-"
        text = str(value)
        return json.dumps(text) if any(c.isspace() for c in text) else text

    return " ".join(f"{k}={show(v)}" for k, v in fields.items())
