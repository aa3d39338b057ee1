"""What is recorded about a spoke.v1 call while it runs: its request id, the response
headers it will send, and why it failed.

The telemetry interceptor (outermost) starts the record; code further in reads or adds to
it through a ContextVar, as ``spoke_grpc.call`` does for the CallContext. Interceptors
never send headers themselves: they add them here (``add_response_headers``) and they go
out together as the call's trailing metadata, with the response or, for a failed call,
with its status (``response_headers``), so a caller gets ``x-request-id`` either way.
Trailing rather than initial metadata: it travels with the status at no cost, where
sending initial metadata early is an extra round through grpc for every call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is used as is when it is short visible ASCII (no spaces, no control
# characters: it goes into log lines); anything else is replaced by a generated one.
_REQUEST_ID = re.compile(r"[!-~]{1,64}")

Header = tuple[str, str]


@dataclass(slots=True)
class CallRecord:
    method: str
    request_id: str
    response_headers: list[Header] = field(default_factory=list)
    reason: str | None = None  # the ErrorInfo reason of a failed call
    headers_sent: bool = False


_current: ContextVar[CallRecord | None] = ContextVar("spoke_call_record", default=None)


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id`` when it is a short printable one, else a new id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            if isinstance(value, str) and _REQUEST_ID.fullmatch(value):
                return value
            break
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex without a UUID object


def start_record(method: str, request_id: str) -> CallRecord:
    """Starts the current call's record; its response headers begin with x-request-id."""
    record = CallRecord(method, request_id, [(REQUEST_ID_HEADER, request_id)])
    _current.set(record)
    return record


def current_record() -> CallRecord | None:
    return _current.get()


def current_request_id() -> str | None:
    record = _current.get()
    return record.request_id if record is not None else None


def add_response_headers(headers: Iterable[Header]) -> None:
    """Queues response headers (trailing metadata) of the current call."""
    record = _current.get()
    if record is not None:
        record.response_headers.extend(headers)


def note_failure(reason: str) -> None:
    """Records why the current call failed (its ErrorInfo reason) for its access line."""
    record = _current.get()
    if record is not None:
        record.reason = reason


def response_headers() -> tuple[Header, ...]:
    """The current call's queued response headers, handed out once (then empty)."""
    record = _current.get()
    if record is None or record.headers_sent:
        return ()
    record.headers_sent = True
    return tuple(record.response_headers)
