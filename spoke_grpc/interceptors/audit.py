"""Audits refused and failed writes.

A successful mutating call writes its audit event inside its own transaction (domain
code). When such a call fails after the caller was identified (permission denied, bad
input, conflicts), that transaction rolled back, so this interceptor records the
attempt with its status code in a transaction of its own. Auditing never changes the
call's outcome: if the database cannot take the event, it is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from grpc import aio
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.call import current_call
from spoke_grpc.database import is_unavailable
from spoke_grpc.errors import SpokeError, Unavailable, Unimplemented
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.store import audit
from spoke_grpc.types import Policy

log = logging.getLogger(__name__)


class AuditInterceptor(PolicyInterceptor):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        super().__init__()
        self._pool = pool

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if policy.read_only:
            return await call_next(request, context)
        try:
            return await call_next(request, context)
        except SpokeError as exc:
            if not isinstance(exc, Unavailable | Unimplemented):
                await self._record_failure(policy, exc.code.name)
            raise
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if not is_unavailable(exc):
                await self._record_failure(policy, "INTERNAL")
            raise

    async def _record_failure(self, policy: Policy, outcome: str) -> None:
        call = None
        with suppress(LookupError):
            call = current_call()
        if call is None or call.principal is None:
            return  # unauthenticated noise is not audited
        event = audit.AuditEvent(
            method=policy.method,
            actor_id=call.principal.user_id,
            org_id=call.org.id if call.org else None,
            target=f"organizations/{call.org.name}" if call.org else "",
            outcome=outcome,
        )
        try:
            async with self._pool.connection() as conn:
                await audit.record(conn, event)
        except Exception:
            log.warning("could not audit failed %s", policy.method, exc_info=True)
