"""One unit of work per call: at most one pool checkout, and for writes one transaction.

Everything the call does (authentication, org resolution, the access check, the work and
its audit event) runs on the connection checked out here; a write runs inside one
transaction, so nothing committed by another call can slip between a check and the write
it guards. The call runs under a time budget: the caller's remaining deadline, capped by
the server's maximum; when it runs out, the running statement is cancelled in PostgreSQL
and the transaction rolls back. A deadlock or serialization failure rolls back and runs the
call again, a few times, then answers ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from grpc import aio
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.cache import AccessCache
from spoke_grpc.call import current_call, set_call
from spoke_grpc.config import Settings
from spoke_grpc.database import Lease, UnitOfWork, is_retryable
from spoke_grpc.errors import Aborted, DeadlineExceeded
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.response_cache import ResponseCache
from spoke_grpc.types import CallContext, Policy, QuotaKind

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
_BACKOFF_SECONDS = 0.01


class UnitOfWorkInterceptor(PolicyInterceptor):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: Settings,
        cache: AccessCache,
        responses: ResponseCache | None = None,
    ) -> None:
        super().__init__()
        self._pool = pool
        self._cache = cache
        self._responses = responses
        self._max_seconds = settings.statement_timeout_seconds

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        remaining = context.time_remaining()
        budget = self._max_seconds
        if remaining is not None:
            # Finish a little before the caller gives up, so that the statement is cancelled
            # cleanly here rather than interrupted by grpc's own cancellation of the call.
            budget = min(budget, max(0.001, remaining - min(0.1, remaining / 10)))
        try:
            async with asyncio.timeout(budget):
                return await self._run(policy, request, context, call_next)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the call did not finish within its {budget:.3g}s budget (the caller's"
                f" deadline, at most {self._max_seconds:g}s); its changes were rolled back"
            ) from None

    async def _run(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        async with contextlib.AsyncExitStack() as stack:
            lease = Lease(lambda: stack.enter_async_context(self._pool.connection()))
            attempt = 1
            done_once: set[str] = set()
            while True:
                unit = UnitOfWork(lease, writes=not policy.read_only, done_once=done_once)
                set_call(CallContext(policy=policy, unit=unit))
                try:
                    if not unit.writes:
                        return await call_next(request, context)
                    conn = await lease.get()
                    async with conn.transaction():
                        response = await call_next(request, context)
                    self._forget_cached(current_call())
                    return response
                except Exception as exc:
                    if is_retryable(exc) and attempt < MAX_ATTEMPTS:
                        log.info(
                            "%s: %s (SQLSTATE %s); retrying (attempt %d)",
                            policy.method,
                            type(exc).__name__,
                            getattr(exc, "sqlstate", None),
                            attempt,
                        )
                        await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * 2**attempt))
                        attempt += 1
                        continue
                    await _run_rollback_hooks(unit, policy)
                    if is_retryable(exc):
                        raise Aborted(
                            "the call collided with concurrent changes"
                            f" {MAX_ATTEMPTS} times and was rolled back; retry it"
                        ) from exc
                    raise

    def _forget_cached(self, call: CallContext) -> None:
        """After a write committed: this process sees its own changes at once (the other
        processes hear of them from the database's notifications)."""
        if call.org is not None:
            self._cache.invalidate_org(call.org.id)
            # A compile job's write is its job, its count and its audit event: no response
            # of the response cache depends on those.
            if self._responses is not None and call.policy.quota is not QuotaKind.COMPILE_JOBS:
                self._responses.invalidate_org(call.org.id)
        else:  # a write that names no org may have created one, which was remembered missing
            self._cache.invalidate_org_names()
        if call.principal is not None:
            self._cache.invalidate_user(call.principal.user_id)


async def _run_rollback_hooks(unit: UnitOfWork, policy: Policy) -> None:
    """After a failed call, what must be recorded anyway; never changes the call's outcome."""
    for hook in unit.rollback_hooks:
        try:
            await hook(await unit.connection())
        except Exception:
            log.warning("%s: could not run a rollback hook", policy.method, exc_info=True)
