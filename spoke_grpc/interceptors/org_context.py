"""Resolves the request's ``org`` (id or name) and enforces the method's minimum access.

A caller who is not a member gets NOT_FOUND with the same message as for an
organization that does not exist, so names cannot be probed. A member whose role is
too low gets PERMISSION_DENIED. Writes to a suspended organization fail with
FAILED_PRECONDITION, except a platform admin's (who may need to reactivate it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from grpc import aio
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.call import current_call, set_call
from spoke_grpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
)
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.store import organizations
from spoke_grpc.tiers import QuotaTier
from spoke_grpc.types import Access, OrgContext, OrgStatus, Policy, Principal, Role
from spoke_grpc.validation import parse_uuid

_MAX_REF_LENGTH = 64
_ACCESS_OF_ROLE = {
    Role.VIEWER: Access.ORG_VIEWER,
    Role.DEVELOPER: Access.ORG_DEVELOPER,
    Role.ADMIN: Access.ORG_ADMIN,
}


class OrgContextInterceptor(PolicyInterceptor):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        super().__init__()
        self._pool = pool

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if not policy.org_scoped:
            return await call_next(request, context)
        call = current_call()
        ref = str(request.org)
        org = await self._resolve(ref, call.principal)
        set_call(replace(call, org=org))  # before the check, so refusals are audited with it
        check_access(policy, call.principal, org, ref)
        return await call_next(request, context)

    async def _resolve(self, ref: str, principal: Principal | None) -> OrgContext:
        if not ref:
            raise InvalidArgument.field("org", "required: the organization's id or name")
        if len(ref) > _MAX_REF_LENGTH:
            raise NotFound("organization", ref[:_MAX_REF_LENGTH] + "…")
        user_id = principal.user_id if principal else None
        org_id = parse_uuid(ref)
        async with self._pool.connection() as conn:
            if org_id is not None:
                row = await organizations.access_by_id(conn, org_id, user_id)
            else:
                row = await organizations.access_by_name(conn, ref, user_id)
        if row is None:
            raise NotFound("organization", ref)
        return OrgContext(
            id=row.id,
            name=row.name,
            status=OrgStatus(row.status),
            tier=QuotaTier(row.quota_tier),
            owner_id=row.owner_id,
            role=Role(row.role) if row.role else None,
        )


def check_access(policy: Policy, principal: Principal | None, org: OrgContext, ref: str) -> None:
    """Raises unless ``principal`` may call ``policy.method`` on ``org`` (named ``ref``)."""
    if principal is not None and principal.is_admin:
        return
    if org.role is None:
        if policy.public_read:
            return  # the servicer shows only public resources to non-members
        raise NotFound("organization", ref)
    is_owner = principal is not None and principal.user_id == org.owner_id
    level = Access.ORG_OWNER if is_owner else _ACCESS_OF_ROLE[org.role]
    if level < policy.access:
        method = policy.method.rsplit("/", 1)[-1]
        if policy.access is Access.PLATFORM_ADMIN:
            raise PermissionDenied(f"{method} is for platform admins only")
        needed = policy.access.name.removeprefix("ORG_").lower()
        raise PermissionDenied(
            f"{method} needs the {needed} role or higher in organization {org.name!r};"
            f" your role is {org.role.value}"
        )
    if org.suspended and not policy.read_only:
        raise FailedPrecondition(
            PreconditionViolation(
                type="ORGANIZATION_SUSPENDED",
                subject=f"organizations/{org.name}",
                description=f"organization {org.name!r} is suspended; only reads are allowed",
            )
        )
