"""Caps the spoke.v1 calls one process serves at once (``SPOKE_MAX_CONCURRENT_CALLS``).

A call over the cap is answered at once with RESOURCE_EXHAUSTED and RetryInfo
(``TOO_MANY_CONCURRENT_CALLS``): it sits before the unit of work, so a refused call takes
no database connection and waits for nothing, and the calls already admitted keep their
latency instead of queueing behind a pool that cannot serve them all. Health and
reflection are not spoke.v1 methods and are never refused. The count is a plain integer:
every call of a process runs on its one event loop.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from spoke_grpc.errors import TooManyCalls
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Policy


class ConcurrencyLimitInterceptor(PolicyInterceptor):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.in_flight = 0

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if self.in_flight >= self.limit:
            raise TooManyCalls(self.limit)
        self.in_flight += 1
        try:
            return await call_next(request, context)
        finally:
            self.in_flight -= 1
