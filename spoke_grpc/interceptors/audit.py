"""Audits refused and failed writes.

A successful mutating call writes its audit event inside its own transaction (domain
code). When such a call fails after the caller was identified (permission denied, bad
input, conflicts), that transaction rolls back, so this interceptor asks the unit of work
to record the attempt, with its status code and its target, on the same connection right
after the rollback. Auditing never changes the call's outcome: if the database cannot
take the event, it is logged and dropped. Calls refused before the caller is known
(unauthenticated, undecodable or bad text) are not audited.

An organization's audit trail is its members' (and platform admins') doing: a refused call
into an organization by someone who is not a member (a stranger or an anonymous caller,
whether or not the organization exists) writes no audit event, so outsiders cannot fill
another organization's audit table, or the database, with their attempts. Such refusals,
reads included, are counted instead (``spoke_refused_outsider_calls_total{method}``); the
access log line still names the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from grpc import aio
from psycopg import AsyncConnection

from spoke_grpc.call import current_call
from spoke_grpc.database import is_retryable, is_unavailable
from spoke_grpc.errors import SpokeError, Unavailable, Unimplemented
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.store import audit
from spoke_grpc.types import CallContext, Policy

log = logging.getLogger(__name__)

# Request fields that name what a call acts on, as (field, collection), outermost first.
_TARGET_FIELDS = (
    ("module", "modules"),
    ("version", "versions"),
    ("user_id", "members"),
    ("user", "members"),
    ("invitation_id", "invitations"),
    ("api_token_id", "api_tokens"),
    ("webhook_id", "webhooks"),
    ("delivery_id", "deliveries"),
    ("email", "users"),
)
_MAX_TARGET_PART = 100


class AuditInterceptor(PolicyInterceptor):
    """``on_outsider_refused`` is told the method (``spoke.v1.X/Y``) of each refused call by
    an outsider: it counts them in the metrics."""

    def __init__(self, on_outsider_refused: Callable[[str], None] = lambda method: None) -> None:
        super().__init__()
        self._on_outsider_refused = on_outsider_refused

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        try:
            return await call_next(request, context)
        except SpokeError as exc:
            if not isinstance(exc, Unavailable | Unimplemented):
                self._refused(policy, request, exc.code.name)
            raise
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if not (is_unavailable(exc) or is_retryable(exc)):
                self._refused(policy, request, "INTERNAL")
            raise

    def _refused(self, policy: Policy, request: Any, outcome: str) -> None:
        call = current_call()
        if outcome == "UNAUTHENTICATED":
            return  # no caller to speak of: neither audited nor an outsider's attempt
        if is_outsider(call):
            self._on_outsider_refused(policy.method.removeprefix("/"))
        elif not policy.read_only:
            self._record_failure(policy, request, outcome, call)

    def _record_failure(
        self, policy: Policy, request: Any, outcome: str, call: CallContext
    ) -> None:
        if call.principal is None or call.unit is None:
            return  # unauthenticated noise is not audited
        event = audit.AuditEvent(
            method=policy.method,
            actor_id=call.principal.user_id,
            org_id=call.org.id if call.org else None,
            target=failure_target(policy, request, call),
            outcome=outcome,
        )

        async def record(conn: AsyncConnection) -> None:
            await audit.record(conn, event)

        call.unit.on_rollback(record)


def is_outsider(call: CallContext) -> bool:
    """Whether the call names an organization its caller is not a member of (a platform
    admin is never an outsider; a missing organization has no members)."""
    if not call.policy.org_scoped:
        return False
    if call.principal is not None and call.principal.is_admin:
        return False
    return call.org is None or call.org.role is None


def failure_target(policy: Policy, request: Message, call: CallContext) -> str:
    """What a failed call was acting on, read from its request (``organizations/x/modules/y``)."""
    fields = request.DESCRIPTOR.fields_by_name
    parts: list[str] = []
    if call.org is not None:
        parts.append(f"organizations/{call.org.name}")
    elif "/spoke.v1.OrganizationService/" in policy.method and "name" in fields:
        parts.append(f"organizations/{str(getattr(request, 'name', ''))[:_MAX_TARGET_PART]}")
    for field, collection in _TARGET_FIELDS:
        if field in fields and (value := getattr(request, field)):
            parts.append(f"{collection}/{str(value)[:_MAX_TARGET_PART]}")
    return "/".join(parts)
