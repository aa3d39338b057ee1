"""Log lines: plain text, or one JSON object per line (``SPOKE_LOG_FORMAT=json``) for log
shippers.

Every line written while a call is served carries its request id (``RequestIdFilter``
reads it from the call's record), so one grep finds everything a call logged, its access
line included. The access line is written on every call, so it takes a short way through
``logging`` (``write_access_line``): nothing at all when the level is off, no caller lookup,
its fields in a slotted ``AccessFields`` rather than a dict, the time's text made once per
second, and JSON encoding only for the JSON format.

Both formats hold the same facts: time (UTC), level, logger, message, request id, and the
structured fields a line was given (``extra={"fields": {...}}``; the access lines'
``AccessFields``). What the service logs never includes API or invitation
tokens, request payloads or file contents: access lines name the method, the outcome, the
org and the caller, nothing from the request body.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

from spoke_grpc.call_record import current_request_id

ACCESS_LOGGER = "spoke_grpc.access"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call it was logged in (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    """``2026-11-30T21:55:35.824Z``; the text up to the second is made once per second."""
    global _second
    seconds = int(record.created)
    if _second[0] != seconds:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
        _second = (seconds, moment.strftime("%Y-%m-%dT%H:%M:%S"))
    millis = min(999, int((record.created - seconds) * 1000))
    return f"{_second[1]}.{millis:03d}Z"


class AccessFields:
    """The fields of one access line, in their order, without a dict per call."""

    __slots__ = ("caller", "code", "duration_ms", "method", "org", "reason")
    NAMES = ("method", "code", "reason", "duration_ms", "org", "caller")

    def __init__(
        self,
        method: str,
        code: str,
        reason: str | None,
        duration_ms: float,
        org: str | None,
        caller: str | None,
    ) -> None:
        self.method = method
        self.code = code
        self.reason = reason
        self.duration_ms = duration_ms
        self.org = org
        self.caller = caller

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.NAMES:
            yield name, getattr(self, name)

    def text(self) -> str:
        line = f"method={self.method} code={self.code}"
        if self.reason is not None:
            line += f" reason={self.reason}"
        line += f" duration_ms={self.duration_ms}"
        if self.org is not None:
            line += f" org={self.org}"
        if self.caller is not None:
            line += f" caller={self.caller}"
        return line


_access = logging.getLogger(ACCESS_LOGGER)


def write_access_line(fields: AccessFields) -> None:
    """Logs one access line (``spoke_grpc.access``, INFO, message ``call``) the short way:
    the same record, handlers and filters as ``logger.info`` would use, minus its
    caller lookup and ``extra`` handling."""
    if not _access.isEnabledFor(logging.INFO):
        return
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "call", None, None)
    record.fields = fields
    _access.handle(record)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value … request_id=…``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"]
        fields = getattr(record, "fields", None)
        if isinstance(fields, AccessFields):
            parts.append(fields.text())
        elif fields:
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
        fields = getattr(record, "fields", None)
        if fields:
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
