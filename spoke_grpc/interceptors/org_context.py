"""Enforces the method's declared access in the organization the request names.

The organization and the caller's role were read with the caller (auth interceptor); this
interceptor only decides. A caller who is not a member gets NOT_FOUND with the same
message as for an organization that does not exist, so names cannot be probed; for
``public_read`` methods a non-member (or anonymous caller) passes only when the org has a
public module, and otherwise sees exactly that NOT_FOUND too (SPEC §3). A member whose
role is too low gets PERMISSION_DENIED. Writes to a suspended organization fail with
FAILED_PRECONDITION, except a platform admin's (who may need to reactivate it).
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from spoke_grpc.call import current_call
from spoke_grpc.errors import FailedPrecondition, NotFound, PermissionDenied, PreconditionViolation
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.types import Access, OrgContext, Policy, Principal, Role

_ACCESS_OF_ROLE = {
    Role.VIEWER: Access.ORG_VIEWER,
    Role.DEVELOPER: Access.ORG_DEVELOPER,
    Role.ADMIN: Access.ORG_ADMIN,
}


class OrgContextInterceptor(PolicyInterceptor):
    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if policy.org_scoped:
            call = current_call()
            check_access(policy, call.principal, call.org, request.org)
        return await call_next(request, context)


def check_access(
    policy: Policy, principal: Principal | None, org: OrgContext | None, ref: str
) -> None:
    """Raises unless ``principal`` may call ``policy.method`` on ``org`` (named ``ref``)."""
    if org is None:
        raise NotFound("organization", ref)
    if principal is not None and principal.is_admin:
        return
    if org.role is None:
        if policy.public_read and org.has_public_modules:
            return  # the servicer shows only public resources to non-members
        raise NotFound("organization", ref)
    level = Access.ORG_OWNER if org.is_owner else _ACCESS_OF_ROLE[org.role]
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
