"""Records every spoke.v1 call: its request id, one access log line, and its metrics.

Outermost of the spoke.v1 interceptors (inside only the OpenTelemetry one, when tracing
is on), so it sees every call with its final status code, calls refused by the
concurrency cap or at the edge included. The request id is the caller's ``x-request-id``
when it is a short printable one, else a new one; it is returned as ``x-request-id``
trailing response metadata (with any other response headers: see
``spoke_grpc.call_record``), is in every log line of the call and is the reference of an
INTERNAL error.

The access line (logger ``spoke_grpc.access``, INFO) names the method, the status code,
the ErrorInfo reason of a failure, the duration, the organization (by name, once
resolved) and the caller (user id): nothing from the request body; it takes the short way
through logging (``spoke_grpc.logs.write_access_line``). The metrics cost the call an
in-memory update of a gauge, a histogram and a counter, whose labelled children are bound
once per method (an OK call's counter too); they are skipped when metrics are off.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from spoke_grpc.call import current_call
from spoke_grpc.call_record import (
    CallRecord,
    request_id_from,
    response_headers,
    start_record,
)
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.logs import AccessFields, write_access_line
from spoke_grpc.metrics import RpcMetrics
from spoke_grpc.types import Policy


class TelemetryInterceptor(PolicyInterceptor):
    def __init__(self, metrics: RpcMetrics | None, *, tracing: bool = False) -> None:
        super().__init__()
        self._metrics = metrics
        self._tracing = tracing
        self._per_method: dict[str, tuple[Gauge, Histogram, Counter]] = {}
        self._calls: dict[tuple[str, str, str], Counter] = {}

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        method = policy.method.removeprefix("/")
        record = start_record(method, request_id_from(context.invocation_metadata()))
        started = time.perf_counter()
        if self._metrics is not None:
            self._children(self._metrics, method)[0].inc()
        code = grpc.StatusCode.OK
        try:
            response = await call_next(request, context)
            if headers := response_headers():
                context.set_trailing_metadata(headers)
            return response
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._finish(record, code, time.perf_counter() - started)

    def _children(self, metrics: RpcMetrics, method: str) -> tuple[Gauge, Histogram, Counter]:
        """The method's in-flight gauge, latency histogram and OK calls counter (labelled
        once, then reused)."""
        children = self._per_method.get(method)
        if children is None:
            children = (
                metrics.in_flight.labels(method),
                metrics.duration.labels(method),
                metrics.calls.labels(method, "OK", ""),
            )
            self._per_method[method] = children
        return children

    def _finish(self, record: CallRecord, code: grpc.StatusCode, seconds: float) -> None:
        reason = record.reason if code is not grpc.StatusCode.OK else None
        metrics = self._metrics
        if metrics is not None:
            in_flight, duration, ok = self._children(metrics, record.method)
            in_flight.dec()
            duration.observe(seconds)
            if code is grpc.StatusCode.OK:
                ok.inc()
            else:
                key = (record.method, code.name, reason or "")
                calls = self._calls.get(key)
                if calls is None:
                    calls = self._calls[key] = metrics.calls.labels(*key)
                calls.inc()
        try:
            call = current_call()
        except LookupError:  # refused before the unit of work
            org, caller = None, None
        else:
            org = call.org.name if call.org is not None else None
            caller = str(call.principal.user_id) if call.principal is not None else None
        if self._tracing:
            span = trace.get_current_span()
            span.set_attribute("spoke.request_id", record.request_id)
            if org is not None:
                span.set_attribute("spoke.org", org)
            if caller is not None:
                span.set_attribute("enduser.id", caller)
        write_access_line(
            AccessFields(record.method, code.name, reason, round(seconds * 1000, 2), org, caller)
        )
