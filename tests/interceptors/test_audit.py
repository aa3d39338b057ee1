from __future__ import annotations

from typing import Any

import grpc
import psycopg
from google.protobuf.field_mask_pb2 import FieldMask
from spoke.v1 import organization_pb2 as pb

from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import failure


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
