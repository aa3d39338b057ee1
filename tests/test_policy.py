"""The declared policies are the contract: every RPC has one, and it is coherent."""

from __future__ import annotations

import pytest

from spoke_grpc.policy import POLICIES, services
from spoke_grpc.types import Access, QuotaKind

ORG_LEVELS = {
    Access.ORG_VIEWER,
    Access.ORG_DEVELOPER,
    Access.ORG_ADMIN,
    Access.ORG_OWNER,
    Access.PLATFORM_ADMIN,
}


def test_every_rpc_of_every_service_declares_a_policy() -> None:
    methods = {f"/{s.full_name}/{m.name}" for s in services() for m in s.methods}
    assert {s.name for s in services()} == {
        "UserService",
        "OrganizationService",
        "MemberService",
        "QuotaService",
        "ModuleService",
        "WebhookService",
        "EventService",
    }
    assert methods == set(POLICIES)
    undeclared = [m for m, p in POLICIES.items() if p.access is Access.UNSPECIFIED]
    assert undeclared == []


@pytest.mark.parametrize("method", sorted(POLICIES))
def test_policy_is_coherent(method: str) -> None:
    policy = POLICIES[method]
    if policy.org_scoped:
        assert policy.access in ORG_LEVELS, "org-scoped methods check a role in the org"
    if policy.quota is not QuotaKind.NONE:
        assert not policy.read_only, "consuming quota is a write"
    if policy.access is Access.ANONYMOUS or policy.public_read:
        assert policy.read_only, "anonymous callers may only read"
    name = method.rsplit("/", 1)[1]
    if name.startswith(("Get", "List", "Watch")):
        assert policy.read_only
    else:
        assert not policy.read_only


@pytest.mark.parametrize(
    ("method", "access"),
    [
        ("/spoke.v1.OrganizationService/DeleteOrganization", Access.ORG_OWNER),
        ("/spoke.v1.OrganizationService/UpdateOrganization", Access.ORG_ADMIN),
        ("/spoke.v1.QuotaService/UpdateQuotas", Access.PLATFORM_ADMIN),
        ("/spoke.v1.UserService/CreateUser", Access.PLATFORM_ADMIN),
        ("/spoke.v1.MemberService/AddMember", Access.ORG_ADMIN),
        ("/spoke.v1.ModuleService/CreateVersion", Access.ORG_DEVELOPER),
        ("/spoke.v1.ModuleService/ListPublicModules", Access.ANONYMOUS),
    ],
)
def test_permission_matrix_rows(method: str, access: Access) -> None:
    assert POLICIES[method].access is access
