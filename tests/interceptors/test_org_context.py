"""The access rules, closed: public reads never reveal an org without public modules, the
owner is always recognised, and a server with an unenforceable policy refuses to start."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import module_pb2
from spoke.v1 import organization_pb2 as pb

from spoke_grpc import policy, server
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.server import SpokeServer
from spoke_grpc.types import Access
from tests.conftest import Users
from tests.harness import Client, failure

GET_MODULE = module_pb2.GetModuleRequest


def add_module(db: psycopg.Connection[Any], org_id: str, name: str, *, public: bool) -> None:
    db.execute(
        "INSERT INTO modules (org_id, name, is_public) VALUES (%s, %s, %s)", [org_id, name, public]
    )


@pytest.mark.parametrize("caller", ["anonymous", "stranger"])
def test_public_reads_of_an_org_without_public_modules_look_like_a_missing_org(
    users: Users, anonymous: Client, db: psycopg.Connection[Any], caller: str
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(
        pb.CreateOrganizationRequest(name="secret-org")
    ).organization
    add_module(db, org.id, "private-mod", public=False)
    client = anonymous if caller == "anonymous" else users.create()
    for ref, missing_ref in (("secret-org", "nosuch-org"), (org.id, str(uuid.uuid4()))):
        hidden = failure(partial(client.modules.GetModule, GET_MODULE(org=ref, module="x")))
        missing = failure(partial(client.modules.GetModule, GET_MODULE(org=missing_ref)))
        assert hidden.code is missing.code is grpc.StatusCode.NOT_FOUND
        assert hidden.message == f"organization {ref!r} not found"
        assert missing.message == f"organization {missing_ref!r} not found"
        assert dict(hidden.error_info.metadata) == {"kind": "organization", "ref": ref}


def test_an_org_with_a_public_module_is_visible_to_public_reads_only(
    users: Users, anonymous: Client, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="open-org")).organization
    add_module(db, org.id, "shared", public=True)
    # Past the org check: the public module itself is readable.
    module = anonymous.modules.GetModule(GET_MODULE(org="open-org", module="shared")).module
    assert module.name == "shared"
    # Reads that are not public stay hidden, and writes too.
    stranger = users.create()
    for call in (
        lambda: stranger.orgs.GetOrganization(pb.GetOrganizationRequest(org="open-org")),
        lambda: stranger.modules.CreateModule(
            module_pb2.CreateModuleRequest(org="open-org", name="mine")
        ),
    ):
        assert failure(call).code is grpc.StatusCode.NOT_FOUND


def test_the_owner_is_recognised_without_a_membership_row(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="owned")).organization
    db.execute("DELETE FROM organization_members WHERE org_id = %s", [org.id])
    assert owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="owned")).organization.id
    owner.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="owned"))
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)


def test_every_declared_policy_is_enforceable() -> None:
    assert policy.unenforceable(policy.POLICIES) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param({"access": Access.UNSPECIFIED}, "declares no access", id="no-access"),
        pytest.param(
            {"access": Access.ORG_ADMIN, "org_scoped": False},
            "has no 'org' field",
            id="org-role-without-org",
        ),
        pytest.param(
            {"public_read": True, "org_scoped": False},
            "public_read but its request has no 'org'",
            id="public-without-org",
        ),
        pytest.param({"public_read": True, "read_only": False}, "not read_only", id="public-write"),
    ],
)
def test_a_server_with_an_unenforceable_policy_refuses_to_start(
    database_url: str, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], fragment: str
) -> None:
    method = "/spoke.v1.OrganizationService/UpdateOrganization"
    broken = dict(policy.POLICIES)
    broken[method] = replace(broken[method], **change)
    monkeypatch.setattr(server, "POLICIES", broken)

    async def start() -> None:
        await SpokeServer(Settings(), database_url).start("127.0.0.1:0")

    with pytest.raises(ConfigError) as raised:
        asyncio.run(start())
    assert method in str(raised.value)
    assert fragment in str(raised.value)
