"""Reads each RPC's ``spoke.v1.policy`` option from the generated descriptors.

The table is built once at import from the protos, so the interceptors enforce
exactly what the contract declares. ``unenforceable`` lists the policies the interceptors
could not enforce (none declared, an org role on a method without ``org``, …): the server
refuses to start while there is any, rather than failing when the method is called.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType

from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from spoke.v1 import (
    event_pb2,
    member_pb2,
    module_pb2,
    organization_pb2,
    policy_pb2,
    quota_pb2,
    user_pb2,
    webhook_pb2,
)

from spoke_grpc.types import Access, Policy, QuotaKind

PROTO_MODULES: tuple[ModuleType, ...] = (
    user_pb2,
    organization_pb2,
    member_pb2,
    quota_pb2,
    module_pb2,
    webhook_pb2,
    event_pb2,
)


def services(modules: Iterable[ModuleType] = PROTO_MODULES) -> list[ServiceDescriptor]:
    found: list[ServiceDescriptor] = []
    for module in modules:
        file: FileDescriptor = module.DESCRIPTOR
        found.extend(file.services_by_name.values())
    return found


def load_policies(modules: Iterable[ModuleType] = PROTO_MODULES) -> dict[str, Policy]:
    """Maps full method paths (``/spoke.v1.UserService/GetCurrentUser``) to policies."""
    table: dict[str, Policy] = {}
    for service in services(modules):
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            options = method.GetOptions()
            declared: policy_pb2.MethodPolicy = options.Extensions[policy_pb2.policy]  # type: ignore[index]
            table[path] = Policy(
                method=path,
                access=Access(declared.access),
                read_only=declared.read_only,
                quota=QuotaKind(declared.quota),
                public_read=declared.public_read,
                org_scoped="org" in method.input_type.fields_by_name,
            )
    return table


def unenforceable(policies: Mapping[str, Policy]) -> list[str]:
    """Why each policy in ``policies`` cannot be enforced; empty when all can."""
    problems: list[str] = []
    org_levels = {Access.ORG_VIEWER, Access.ORG_DEVELOPER, Access.ORG_ADMIN, Access.ORG_OWNER}
    for method, policy in sorted(policies.items()):
        if policy.access is Access.UNSPECIFIED:
            problems.append(f"{method} declares no access (spoke.v1.policy)")
        if policy.access in org_levels and not policy.org_scoped:
            problems.append(
                f"{method} requires {policy.access.name} but its request has no 'org' field"
            )
        if policy.public_read and not policy.org_scoped:
            problems.append(f"{method} is public_read but its request has no 'org' field")
        if policy.public_read and not policy.read_only:
            problems.append(f"{method} is public_read but not read_only")
        if policy.access is Access.ANONYMOUS and not policy.read_only:
            problems.append(f"{method} lets anonymous callers write")
    return problems


POLICIES: Mapping[str, Policy] = load_policies()
