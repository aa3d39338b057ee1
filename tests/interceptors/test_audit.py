from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from spoke.v1 import member_pb2, module_pb2, user_pb2
from spoke.v1 import organization_pb2 as pb

from spoke_grpc import metrics
from spoke_grpc.config import Settings
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure
from tests.operating import Dedicated, dedicated_server, scrape


def audit_rows(db: psycopg.Connection[Any], method: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT actor_id::text, org_id::text, outcome FROM audit_events WHERE method = %s"
        " ORDER BY id",
        [f"/spoke.v1.OrganizationService/{method}"],
    ).fetchall()


def test_refused_writes_are_audited_with_their_outcome(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner, viewer = users.create(), users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="audited")).organization
    users.join(org.id, viewer, Role.VIEWER)
    request = pb.UpdateOrganizationRequest(
        org="audited",
        organization=pb.Organization(description="x"),
        update_mask=FieldMask(paths=["description"]),
    )
    assert failure(lambda: viewer.orgs.UpdateOrganization(request)).code is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    owner.orgs.UpdateOrganization(request)
    assert audit_rows(db, "UpdateOrganization") == [
        (viewer.user_id, org.id, "PERMISSION_DENIED"),
        (owner.user_id, org.id, "OK"),
    ]
    assert (
        failure(
            lambda: owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="audited"))
        ).code
        is grpc.StatusCode.ALREADY_EXISTS
    )
    assert audit_rows(db, "CreateOrganization") == [
        (owner.user_id, org.id, "OK"),
        (owner.user_id, None, "ALREADY_EXISTS"),
    ]
    # A refused call's event names what it acted on, as a successful one's does.
    targets = db.execute(
        "SELECT outcome, target FROM audit_events WHERE method LIKE %s ORDER BY id",
        ["%Organization"],
    ).fetchall()
    assert targets == [
        ("OK", "organizations/audited"),
        ("PERMISSION_DENIED", "organizations/audited"),
        ("OK", "organizations/audited:description"),
        ("ALREADY_EXISTS", "organizations/audited"),
    ]


def test_reads_and_anonymous_attempts_are_not_audited(
    users: Users, anonymous: Any, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="quiet"))
    failure(lambda: owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="nope")))
    failure(lambda: anonymous.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="quiet")))
    assert db.execute(
        "SELECT count(*) FROM audit_events WHERE method LIKE '/spoke.v1.OrganizationService/%%'"
    ).fetchone() == (1,)


REFUSED_OUTSIDER = "spoke_refused_outsider_calls_total"


@pytest.fixture
def metered(pg_admin_url: str, template_url: str, tmp_path: Path) -> Iterator[Dedicated]:
    settings = Settings(metrics_listen="127.0.0.1:0", usage_flush_interval_seconds=600)
    with dedicated_server(pg_admin_url, template_url, tmp_path, settings) as dedicated:
        yield dedicated


def refused_outsiders(server: ServerThread) -> dict[str, float]:
    """spoke_refused_outsider_calls_total by method, as scraped."""
    served = server.server.metrics
    assert served is not None and isinstance(served.endpoint, metrics.HttpEndpoint)
    return {
        dict(labels)["method"]: n
        for (name, labels), n in scrape(served.endpoint.port).items()
        if name == REFUSED_OUTSIDER
    }


def test_outsiders_refused_calls_write_no_audit_rows_and_are_counted(metered: Dedicated) -> None:
    admin = metered.admin
    made = [admin.users.CreateUser(user_pb2.CreateUserRequest(email=f"{n}@ex.com")) for n in "osv"]
    owner, stranger, viewer = (Client(admin.channel, m.token, m.user.id) for m in made)
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="guarded")).organization
    admin.members.AddMember(
        member_pb2.AddMemberRequest(org=org.id, user=viewer.user_id, role=member_pb2.ROLE_VIEWER)
    )
    anonymous = Client(admin.channel)
    with psycopg.connect(metered.database_url, autocommit=True) as db:

        def trail() -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT id, actor_id::text, method, outcome FROM audit_events"
                " WHERE org_id = %s OR actor_id = %s ORDER BY id",
                [org.id, stranger.user_id],
            ).fetchall()

        before = trail()
        rename = pb.UpdateOrganizationRequest(
            org="guarded",
            organization=pb.Organization(description="mine now"),
            update_mask=FieldMask(paths=["description"]),
        )
        outsider_calls = [
            lambda: stranger.orgs.UpdateOrganization(rename),
            lambda: stranger.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org=org.id)),
            lambda: stranger.members.AddMember(
                member_pb2.AddMemberRequest(
                    org="guarded", user=stranger.user_id, role=member_pb2.ROLE_ADMIN
                )
            ),
            lambda: stranger.modules.CreateModule(
                module_pb2.CreateModuleRequest(org="guarded", name="planted")
            ),
            lambda: stranger.orgs.GetOrganization(pb.GetOrganizationRequest(org="guarded")),
            lambda: anonymous.modules.ListModules(module_pb2.ListModulesRequest(org="guarded")),
        ]
        for call in outsider_calls:
            assert failure(call).code is grpc.StatusCode.NOT_FOUND
        assert trail() == before  # nothing written into the org, nor by the stranger
        refused = refused_outsiders(metered.server)
        assert refused == {
            "spoke.v1.OrganizationService/UpdateOrganization": 1,
            "spoke.v1.OrganizationService/DeleteOrganization": 1,
            "spoke.v1.MemberService/AddMember": 1,
            "spoke.v1.ModuleService/CreateModule": 1,
            "spoke.v1.OrganizationService/GetOrganization": 1,
            "spoke.v1.ModuleService/ListModules": 1,
        }

        # A member's refused write is audited as before, and is no outsider's.
        assert failure(lambda: viewer.orgs.UpdateOrganization(rename)).code is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert [row[1:] for row in trail()[len(before) :]] == [
            (
                viewer.user_id,
                "/spoke.v1.OrganizationService/UpdateOrganization",
                "PERMISSION_DENIED",
            )
        ]
        assert refused_outsiders(metered.server) == refused
