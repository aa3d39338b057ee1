"""Refuses mutating calls once the organization's API requests this UTC hour (as this
process sees them: the database total at its last flush plus its own unflushed counts)
have passed the limit: RESOURCE_EXHAUSTED with RetryInfo until the hour ends. Read-only
calls are never refused for quota, nor are platform admins (who may need to raise the
limit). Allocation quotas are checked by the domain, inside the
transaction that creates what they limit.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from spoke_grpc.call import current_call
from spoke_grpc.domain.quotas import check_api_rate
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Policy
from spoke_grpc.usage import UsageBuffer


class QuotaInterceptor(PolicyInterceptor):
    def __init__(self, buffer: UsageBuffer) -> None:
        super().__init__()
        self._buffer = buffer

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        call = current_call()
        org = call.org
        admin = call.principal is not None and call.principal.is_admin
        if not policy.read_only and org is not None and not admin:
            check_api_rate(org, self._buffer.requests_this_hour(org.id), self._buffer.clock())
        return await call_next(request, context)
