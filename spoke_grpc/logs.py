"""Log lines: plain text, or one JSON object per line (``SPOKE_LOG_FORMAT=json``) for log
shippers.

Every line written while a call is served carries its request id (``RequestIdFilter``
reads it from the call's record), so one grep finds everything a call logged, its access
line included. Both formats hold the same facts: time (UTC), level, logger, message,
request id, and the structured fields a line was given (``extra={"fields": {...}}``),
which the access lines use. What the service logs never includes API or invitation
tokens, request payloads or file contents: access lines name the method, the outcome, the
org and the caller, nothing from the request body.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import IO, Any

from spoke_grpc.call_record import current_request_id

ACCESS_LOGGER = "spoke_grpc.access"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call it was logged in (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value … request_id=…``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"]
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        parts.extend(f"{key}={value}" for key, value in fields.items() if value is not None)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            parts.append(f"request_id={request_id}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        entry.update((key, value) for key, value in fields.items() if key not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """Sends every log line to ``stream`` (stderr) in ``log_format``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
