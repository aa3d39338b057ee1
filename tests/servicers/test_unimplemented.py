from __future__ import annotations

import grpc
import pytest
from spoke.v1 import member_pb2, module_pb2, organization_pb2

from tests.harness import Client, failure


@pytest.fixture
def org(admin: Client) -> str:
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="later"))
    return "later"


def test_later_rpcs_still_enforce_access(anonymous: Client, org: str) -> None:
    error = failure(lambda: anonymous.members.ListMembers(member_pb2.ListMembersRequest(org=org)))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED


def test_anonymous_methods_reach_the_servicer(anonymous: Client) -> None:
    response = anonymous.modules.ListPublicModules(module_pb2.ListPublicModulesRequest())
    assert list(response.modules) == []
