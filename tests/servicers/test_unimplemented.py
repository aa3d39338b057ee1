from __future__ import annotations

import grpc
import pytest
from spoke.v1 import member_pb2, module_pb2, organization_pb2

from tests.harness import Client, failure


@pytest.fixture
def org(admin: Client) -> str:
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="later"))
    return "later"


@pytest.mark.parametrize(
    ("service", "method", "request_type"),
    [
        ("modules", "CompileVersion", module_pb2.CompileVersionRequest),
        ("modules", "CheckCompatibility", module_pb2.CheckCompatibilityRequest),
        ("modules", "GetDependencyGraph", module_pb2.GetDependencyGraphRequest),
    ],
)
def test_later_rpcs_answer_unimplemented_with_a_clear_message(
    admin: Client, org: str, service: str, method: str, request_type: type
) -> None:
    stub = getattr(admin, service)
    error = failure(lambda: getattr(stub, method)(request_type(org=org)))
    assert error.code is grpc.StatusCode.UNIMPLEMENTED
    assert method in error.message
    assert error.error_info.reason == "UNIMPLEMENTED"


def test_later_rpcs_still_enforce_access(anonymous: Client, org: str) -> None:
    error = failure(lambda: anonymous.members.ListMembers(member_pb2.ListMembersRequest(org=org)))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED


def test_anonymous_methods_reach_the_servicer(anonymous: Client) -> None:
    response = anonymous.modules.ListPublicModules(module_pb2.ListPublicModulesRequest())
    assert list(response.modules) == []
