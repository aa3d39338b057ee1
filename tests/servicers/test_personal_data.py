"""Personal data (issue 14, item 3; SPEC §3): no response to a caller who is not a platform
admin carries an email the caller did not supply or could not see as a co-member.

Outsiders (anonymous, a stranger, a member of another org) read public modules and versions:
``created_by`` is the creator's opaque user id there, never an email, and no answer or error
they get carries the email of anyone in the org.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from spoke.v1 import member_pb2 as mpb
from spoke.v1 import module_pb2 as pb
from spoke.v1 import organization_pb2 as opb

from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client
from tests.servicers.test_modules import SIMPLE, create_module, create_org, push

DEP = {"acme/dep/v1/dep.proto": 'syntax = "proto3";\npackage acme.dep.v1;\nmessage D {}\n'}


def _answers(client: Client) -> list[tuple[str, Callable[[], Any]]]:
    ref = {"org": "acme", "module": "open", "version": "1.0.0"}
    calls: list[tuple[str, Any, Any]] = [
        ("GetOrganization", client.orgs, opb.GetOrganizationRequest(org="acme")),
        ("GetModule", client.modules, pb.GetModuleRequest(org="acme", module="open")),
        ("ListModules", client.modules, pb.ListModulesRequest(org="acme")),
        ("ListPublicModules", client.modules, pb.ListPublicModulesRequest()),
        ("GetVersion", client.modules, pb.GetVersionRequest(**ref)),
        ("ListVersions", client.modules, pb.ListVersionsRequest(org="acme", module="open")),
        ("GetDependencyGraph", client.modules, pb.GetDependencyGraphRequest(**ref)),
        ("GetModule", client.modules, pb.GetModuleRequest(org="acme", module="hidden")),
        ("ListMembers", client.members, mpb.ListMembersRequest(org="acme")),
        ("ListInvitations", client.members, mpb.ListInvitationsRequest(org="acme")),
    ]
    return [
        (f"{method}:{i}", lambda s=stub, m=method, r=request: getattr(s, m)(r))
        for i, (method, stub, request) in enumerate(calls)
    ]


@pytest.mark.parametrize("who", ["anonymous", "stranger", "other-org-member"])
def test_outsiders_see_opaque_creators_and_no_email(
    users: Users, anonymous: Client, who: str
) -> None:
    owner = users.create("owner-person")
    creator = users.create("creator-person")
    users.join(create_org(owner, "acme"), creator, Role.DEVELOPER)
    owner.members.CreateInvitation(
        mpb.CreateInvitationRequest(org="acme", email="hire@example.com", role=mpb.ROLE_VIEWER)
    )
    create_module(creator, "acme", "hidden")
    push(creator, "acme", "hidden", "1.0.0", DEP)
    create_module(creator, "acme", "open", is_public=True)
    pushed = push(creator, "acme", "open", "1.0.0", SIMPLE)
    if who == "anonymous":
        client = anonymous
    elif who == "stranger":
        client = users.create("stranger")
    else:
        client = users.create("elsewhere")
        create_org(client, "globex")
    emails = [owner.email, creator.email, "hire@example.com"]

    seen: dict[str, Any] = {}
    for name, call in _answers(client):
        try:
            answer = call()
        except grpc.RpcError as exc:
            text = f"{exc.details()} {exc.trailing_metadata()}"  # type: ignore[attr-defined]
            assert not any(e in text for e in emails), (name, text)
            continue
        seen[name] = answer
        data = answer.SerializeToString()
        assert not any(e.encode() in data for e in emails), (name, answer)

    # The public module and version are readable, and name their creator by id only.
    assert seen["GetModule:1"].module.created_by == creator.user_id
    assert seen["GetVersion:4"].version.created_by == creator.user_id == pushed.created_by
    assert [v.created_by for v in seen["ListVersions:5"].versions] == [creator.user_id]
    listed = [m for m in seen["ListPublicModules:3"].modules if m.org_name == "acme"]
    assert [m.created_by for m in listed] == [creator.user_id]
    # Members and invitations are no outsider's business.
    assert not {"ListMembers:8", "ListInvitations:9", "GetModule:7"} & set(seen)
