"""Turns exceptions into gRPC statuses with google.rpc details.

SpokeError → its own code and details. A database that cannot be reached → UNAVAILABLE
(and the health monitor is told at once), and so is a pool that timed out with room to
grow: it could not open a connection (e.g. pgbouncer is down). A full pool with no free
connection → UNAVAILABLE with RetryInfo too, but health is left alone: overload is not an
outage. Anything else is
a bug: INTERNAL with a reference (the call's request id) the log line carries, never the
exception text, SQL or a traceback. The call's response headers (``x-request-id``…) are
sent before the error, so a failed call has them too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from grpc import aio
from grpc_status import rpc_status
from psycopg_pool import PoolTimeout

from spoke_grpc.call_record import current_request_id, note_failure, response_headers
from spoke_grpc.config import Settings
from spoke_grpc.database import is_unavailable, overloaded, unavailable
from spoke_grpc.errors import Internal, SpokeError
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Policy

log = logging.getLogger(__name__)


class ErrorsInterceptor(PolicyInterceptor):
    def __init__(
        self,
        settings: Settings,
        on_database_unavailable: Callable[[], None] = lambda: None,
        pool_is_full: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._on_database_unavailable = on_database_unavailable
        self._pool_is_full = pool_is_full

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        try:
            return await call_next(request, context)
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except SpokeError as exc:
            # The reason, not the message: messages may quote request text (file contents).
            log.debug("%s failed: %s %s", policy.method, exc.code.name, exc.reason)
            error: SpokeError = exc
        except Exception as exc:
            error = self._classify(policy, exc)
        note_failure(error.reason)
        status = rpc_status.to_status(error.to_status())
        trailing = (*response_headers(), *status.trailing_metadata)
        await context.abort(status.code, status.details, trailing)

    def _classify(self, policy: Policy, exc: Exception) -> SpokeError:
        if isinstance(exc, PoolTimeout) and self._pool_is_full():
            log.warning("%s: no free database connection: %s", policy.method, exc)
            return overloaded(self._settings)
        # A timeout while the pool had room to grow: it could not open connections.
        if is_unavailable(exc) or isinstance(exc, PoolTimeout):
            log.warning("%s: database unavailable: %s", policy.method, exc)
            self._on_database_unavailable()
            return unavailable(exc)
        reference = current_request_id() or uuid.uuid4().hex[:12]
        log.error("%s: internal error %s", policy.method, reference, exc_info=exc)
        return Internal(f"internal error (reference {reference}); the server log has the details")
