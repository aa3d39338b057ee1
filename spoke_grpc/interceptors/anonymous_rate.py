"""Rate limits anonymous calls per client address (``spoke_grpc.anonymous_rate``).

A call is anonymous when it carries no ``authorization`` metadata; only the methods open
to anonymous callers (``ACCESS_ANONYMOUS`` and ``public_read``) are limited, the others
refuse such a call anyway, without a statement. It sits before the unit of work, so a
refused call takes no database connection. Each limited call gets ``x-ratelimit-limit``,
``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (seconds to the end of the minute)
response metadata, as members' calls get their organization's; over the limit it is
RESOURCE_EXHAUSTED (``RATE_LIMIT_EXCEEDED``) with a QuotaFailure naming the address's key
and RetryInfo to the end of the window.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from spoke_grpc.anonymous_rate import AnonymousRateLimiter, client_key
from spoke_grpc.call_record import add_response_headers
from spoke_grpc.errors import QuotaExceeded
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Access, Policy


class AnonymousRateInterceptor(PolicyInterceptor):
    def __init__(self, limiter: AnonymousRateLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if not (policy.access is Access.ANONYMOUS or policy.public_read) or _has_credentials(
            context
        ):
            return await call_next(request, context)
        key = client_key(context.peer())
        admission = self._limiter.admit(key)
        add_response_headers(
            (
                ("x-ratelimit-limit", str(admission.limit)),
                ("x-ratelimit-remaining", str(admission.remaining)),
                ("x-ratelimit-reset", str(admission.reset_seconds)),
            )
        )
        if not admission.allowed:
            raise QuotaExceeded(
                quota="anonymous_requests_per_minute",
                subject=f"clients/{key}",
                current=admission.limit,
                limit=admission.limit,
                retry_after_seconds=admission.reset_seconds,
                advice=(
                    "retry when the minute ends, or call with an API token"
                    " ('authorization: Bearer spoke_...'), which this limit does not apply to"
                ),
            )
        return await call_next(request, context)


def _has_credentials(context: aio.ServicerContext) -> bool:
    return any(key == "authorization" for key, _ in context.invocation_metadata() or ())
