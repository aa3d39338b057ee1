"""Counts every org-scoped call as an API request of its organization, and tells the
caller where it stands: ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and
``x-ratelimit-reset`` (seconds to the end of the UTC hour) response metadata, all without
a database statement. The headers join the call's others (``spoke_grpc.call_record``),
sent once for the whole call.

Calls are charged to the organization when its members make them; public reads by
non-members and a platform admin's operations are not, so that nobody outside an
organization can spend its hourly quota. A call retried after a deadlock is counted
once. Organizations without an hourly limit get no rate-limit metadata.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from grpc import aio

from spoke_grpc.call import current_call
from spoke_grpc.call_record import add_response_headers
from spoke_grpc.database import UnitOfWork
from spoke_grpc.domain import usage_alerts
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Policy
from spoke_grpc.usage import UsageBuffer, hour_end


class UsageInterceptor(PolicyInterceptor):
    def __init__(self, buffer: UsageBuffer) -> None:
        super().__init__()
        self._buffer = buffer

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        call = current_call()
        org = call.org
        if org is None or org.role is None or call.unit is None:
            return await call_next(request, context)
        if call.unit.first_time("usage"):
            self._buffer.count(org.id)
        limit = org.limits.max_api_requests_per_hour if org.limits else None
        if limit is None:
            return await call_next(request, context)
        self._buffer.watch(org.id, limit, usage_alerts.thresholds(org.org.settings))
        try:
            response = await call_next(request, context)
        except Exception:
            self._add_rate_limit(call.unit, org.id, limit)
            raise
        self._add_rate_limit(call.unit, org.id, limit)
        return response

    def _add_rate_limit(self, unit: UnitOfWork, org_id: uuid.UUID, limit: int) -> None:
        if not unit.first_time("rate-limit metadata"):
            return  # queued by an earlier attempt of this call
        now = self._buffer.clock()
        used = self._buffer.requests_this_hour(org_id)
        reset = max(1, math.ceil((hour_end(now) - now).total_seconds()))
        add_response_headers(
            (
                ("x-ratelimit-limit", str(limit)),
                ("x-ratelimit-remaining", str(max(0, limit - used))),
                ("x-ratelimit-reset", str(reset)),
            )
        )
