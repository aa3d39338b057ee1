from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from spoke.v1 import organization_pb2 as pb

from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client, all_pages, failure
from tests.overlap import released_together


def create(client: Client, name: str, **fields: Any) -> pb.Organization:
    request = pb.CreateOrganizationRequest(name=name, **fields)
    org: pb.Organization = client.orgs.CreateOrganization(request).organization
    return org


def list_pages(client: Client, page_size: int) -> list[list[pb.Organization]]:
    return all_pages(
        lambda token: client.orgs.ListOrganizations(
            pb.ListOrganizationsRequest(page_size=page_size, page_token=token)
        ),
        "organizations",
    )


def update(client: Client, org: str, paths: list[str], **fields: Any) -> pb.Organization:
    request = pb.UpdateOrganizationRequest(
        org=org, organization=pb.Organization(**fields), update_mask=FieldMask(paths=paths)
    )
    result: pb.Organization = client.orgs.UpdateOrganization(request).organization
    return result


def test_create_makes_org_owner_admin_quotas_and_audit_in_one_go(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create("owner")
    org = create(owner, "acme-corp", description="Rockets", settings={"region": "eu"})
    assert org.name == "acme-corp"
    assert org.display_name == "acme-corp"
    assert org.owner_id == owner.user_id
    assert org.quota_tier == pb.QUOTA_TIER_SMALL
    assert org.status == pb.ORGANIZATION_STATUS_ACTIVE
    assert dict(org.settings) == {"region": "eu"}
    assert org.create_time.seconds > 0
    assert db.execute(
        "SELECT user_id::text, role FROM organization_members WHERE org_id = %s", [org.id]
    ).fetchall() == [(owner.user_id, "admin")]
    assert db.execute(
        "SELECT tier, max_modules, max_storage_bytes FROM org_quotas WHERE org_id = %s", [org.id]
    ).fetchone() == ("small", 10, 5 * 2**30)
    assert db.execute(
        "SELECT method, actor_id::text FROM audit_events WHERE org_id = %s", [org.id]
    ).fetchall() == [("/spoke.v1.OrganizationService/CreateOrganization", owner.user_id)]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("ab", id="too-short"),
        pytest.param("a" * 41, id="too-long"),
        pytest.param("Acme", id="uppercase"),
        pytest.param("1acme", id="leading-digit"),
        pytest.param("acme-", id="trailing-dash"),
        pytest.param("ac--me", id="double-dash"),
        pytest.param("ac_me", id="underscore"),
        pytest.param("acme corp", id="space"),
        pytest.param("a1b2c3d4-e5f6-a7b8-c9d0-e1f2a3b4c5d6", id="uuid-shaped"),
        pytest.param("ac\u00e9me", id="non-ascii"),
    ],
)
def test_create_rejects_bad_names(users: Users, db: psycopg.Connection[Any], name: str) -> None:
    owner = users.create()
    error = failure(lambda: create(owner, name))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"name"}
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)


@pytest.mark.parametrize("name", ["abc", "a" * 40, "a-1-b", "x9z"])
def test_create_accepts_boundary_names(users: Users, name: str) -> None:
    assert create(users.create(), name).name == name


def test_create_reports_every_bad_field_at_once(users: Users) -> None:
    error = failure(
        lambda: create(
            users.create(),
            "OK",
            display_name="d" * 201,
            description="x" * 2001,
            settings={f"k{i}": "v" for i in range(65)},
        )
    )
    assert set(error.field_violations) == {"name", "display_name", "description", "settings"}


def test_duplicate_name_is_already_exists(users: Users) -> None:
    create(users.create(), "taken")
    error = failure(lambda: create(users.create(), "taken"))
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    assert error.error_info.metadata["kind"] == "organization"


def test_concurrent_creates_of_one_name_make_exactly_one(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    callers = [users.create() for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(create, c, "race") for c in callers]
    codes = []
    for future in futures:
        try:
            future.result()
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
    assert sorted(codes) == ["ALREADY_EXISTS"] * 7 + ["OK"]
    assert db.execute("SELECT count(*) FROM organization_members").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM org_quotas").fetchone() == (1,)


def test_non_default_tier_needs_a_platform_admin(admin: Client, users: Users) -> None:
    error = failure(lambda: create(users.create(), "big", quota_tier=pb.QUOTA_TIER_LARGE))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    # Naming the default tier explicitly is fine.
    assert create(users.create(), "small-one", quota_tier=pb.QUOTA_TIER_SMALL).quota_tier == (
        pb.QUOTA_TIER_SMALL
    )
    assert create(admin, "big", quota_tier=pb.QUOTA_TIER_LARGE).quota_tier == pb.QUOTA_TIER_LARGE


def test_unknown_tier_value_is_invalid(admin: Client) -> None:
    error = failure(lambda: create(admin, "weird", quota_tier=99))  # type: ignore[arg-type]
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"quota_tier"}


def test_get_by_id_and_by_name(users: Users) -> None:
    owner = users.create()
    org = create(owner, "get-me")
    by_name = owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="get-me")).organization
    by_id = owner.orgs.GetOrganization(pb.GetOrganizationRequest(org=org.id)).organization
    assert by_name == by_id == org
    upper = owner.orgs.GetOrganization(pb.GetOrganizationRequest(org=org.id.upper())).organization
    assert upper.id == org.id


@pytest.mark.parametrize("use_id", [False, True], ids=["by-name", "by-id"])
def test_non_members_cannot_tell_an_org_exists(users: Users, use_id: bool) -> None:
    owner, stranger = users.create(), users.create()
    org = create(owner, "secret-org")
    ref = org.id if use_id else org.name
    missing = "5f0c6f3e-0000-4000-8000-000000000000" if use_id else "no-such-org"
    hidden = failure(lambda: stranger.orgs.GetOrganization(pb.GetOrganizationRequest(org=ref)))
    absent = failure(lambda: stranger.orgs.GetOrganization(pb.GetOrganizationRequest(org=missing)))
    assert hidden.code is absent.code is grpc.StatusCode.NOT_FOUND
    assert hidden.message == absent.message.replace(missing, ref)
    assert hidden.error_info.metadata["kind"] == absent.error_info.metadata["kind"]
    # Writes too: no PERMISSION_DENIED that would confirm the org exists.
    write = failure(lambda: update(stranger, ref, ["description"], description="x"))
    assert write.code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        pytest.param("", grpc.StatusCode.INVALID_ARGUMENT, id="empty"),
        pytest.param("x" * 10_000, grpc.StatusCode.NOT_FOUND, id="huge"),
        pytest.param("'; DROP TABLE organizations; --", grpc.StatusCode.NOT_FOUND, id="sql"),
    ],
)
def test_get_with_odd_refs(users: Users, ref: str, code: grpc.StatusCode) -> None:
    error = failure(lambda: users.create().orgs.GetOrganization(pb.GetOrganizationRequest(org=ref)))
    assert error.code is code


def test_platform_admin_sees_every_org(admin: Client, users: Users) -> None:
    org = create(users.create(), "private-one")
    got = admin.orgs.GetOrganization(pb.GetOrganizationRequest(org=org.name)).organization
    assert got.id == org.id


def test_list_shows_only_the_callers_orgs(admin: Client, users: Users) -> None:
    alice, bob = users.create(), users.create()
    create(alice, "alpha")
    beta = create(bob, "beta")
    users.join(beta.id, alice, Role.VIEWER)
    create(bob, "gamma")
    names = [
        o.name for o in alice.orgs.ListOrganizations(pb.ListOrganizationsRequest()).organizations
    ]
    assert names == ["alpha", "beta"]
    all_names = admin.orgs.ListOrganizations(pb.ListOrganizationsRequest()).organizations
    assert [o.name for o in all_names] == ["alpha", "beta", "gamma"]
    assert users.create().orgs.ListOrganizations(pb.ListOrganizationsRequest()).organizations == []


def test_list_pages_by_name_without_gaps_or_repeats(admin: Client) -> None:
    names = sorted(f"org-{i:02d}" for i in range(23))
    for name in reversed(names):
        create(admin, name)
    pages = list_pages(admin, page_size=5)
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert [o.name for page in pages for o in page] == names


def test_list_page_size_edges(admin: Client) -> None:
    for i in range(3):
        create(admin, f"edge-{i}")
    full = admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_size=3))
    assert len(full.organizations) == 3
    assert full.next_page_token == ""  # exactly one page: no empty page after it
    capped = admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_size=1_000_000))
    assert len(capped.organizations) == 3
    default = admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_size=0))
    assert len(default.organizations) == 3
    error = failure(lambda: admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_size=-1)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"page_size"}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage!!", id="not-base64"),
        pytest.param("eyJsIjoiYXBpX3Rva2VucyIsImsiOlsieCIsInkiXX0", id="other-list"),
        pytest.param("eyJsIjoib3JnYW5pemF0aW9ucyIsImsiOlsxXX0", id="wrong-key-type"),
        pytest.param("A" * 5000, id="huge"),
    ],
)
def test_list_rejects_foreign_page_tokens(admin: Client, token: str) -> None:
    error = failure(
        lambda: admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_token=token))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"page_token"}


def test_update_changes_only_masked_fields(users: Users, db: psycopg.Connection[Any]) -> None:
    owner = users.create()
    org = create(owner, "masked", display_name="Masked", description="keep", settings={"a": "1"})
    updated = update(owner, org.name, ["display_name"], display_name="New name", description="")
    assert updated.display_name == "New name"
    assert updated.description == "keep"
    assert dict(updated.settings) == {"a": "1"}
    assert updated.update_time.ToDatetime() > org.update_time.ToDatetime()
    cleared = update(owner, org.id, ["description", "settings"])
    assert (cleared.description, dict(cleared.settings)) == ("", {})
    assert cleared.display_name == "New name"
    assert db.execute(
        "SELECT count(*) FROM audit_events WHERE method LIKE '%%UpdateOrganization'"
    ).fetchone() == (2,)


@pytest.mark.parametrize(
    ("paths", "fragment"),
    [
        pytest.param([], "required", id="empty-mask"),
        pytest.param(["name"], "cannot be updated", id="immutable-name"),
        pytest.param(["owner_id"], "cannot be updated", id="immutable-owner"),
        pytest.param(["colour"], "unknown field", id="unknown"),
        pytest.param(["description", "description"], "twice", id="repeated"),
    ],
)
def test_update_rejects_bad_masks(users: Users, paths: list[str], fragment: str) -> None:
    owner = users.create()
    create(owner, "mask-me")
    error = failure(lambda: update(owner, "mask-me", paths, description="x"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.field_violations["update_mask"]


def test_update_validates_values(users: Users) -> None:
    owner = users.create()
    create(owner, "valid-me")
    error = failure(lambda: update(owner, "valid-me", ["display_name"], display_name=" "))
    assert set(error.field_violations) == {"organization.display_name"}
    error = failure(lambda: update(owner, "valid-me", ["status"]))
    assert set(error.field_violations) == {"organization.status"}


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.VIEWER, False), (Role.DEVELOPER, False), (Role.ADMIN, True)],
    ids=["viewer", "developer", "admin"],
)
def test_update_needs_the_admin_role(users: Users, role: Role, allowed: bool) -> None:
    owner, member = users.create(), users.create()
    org = create(owner, "roles")
    users.join(org.id, member, role)
    # Every member can read.
    assert member.orgs.GetOrganization(pb.GetOrganizationRequest(org="roles")).organization.id
    if allowed:
        assert update(member, "roles", ["description"], description="ok").description == "ok"
    else:
        error = failure(lambda: update(member, "roles", ["description"], description="no"))
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert role.value in error.message


@pytest.mark.parametrize("path", ["quota_tier", "status"])
def test_tier_and_status_need_a_platform_admin(users: Users, path: str) -> None:
    owner = users.create()
    create(owner, "plat")
    error = failure(
        lambda: update(
            owner,
            "plat",
            [path],
            quota_tier=pb.QUOTA_TIER_LARGE,
            status=pb.ORGANIZATION_STATUS_SUSPENDED,
        )
    )
    assert error.code is grpc.StatusCode.PERMISSION_DENIED


def test_tier_change_resets_quotas(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    org = create(users.create(), "tiered")
    updated = update(admin, org.name, ["quota_tier"], quota_tier=pb.QUOTA_TIER_MEDIUM)
    assert updated.quota_tier == pb.QUOTA_TIER_MEDIUM
    assert db.execute(
        "SELECT tier, max_modules, max_api_requests_per_hour FROM org_quotas WHERE org_id = %s",
        [org.id],
    ).fetchone() == ("medium", 50, 25_000)
    update(admin, org.name, ["quota_tier"], quota_tier=pb.QUOTA_TIER_UNLIMITED)
    assert db.execute(
        "SELECT max_modules, max_storage_bytes FROM org_quotas WHERE org_id = %s", [org.id]
    ).fetchone() == (None, None)


def test_suspended_org_is_read_only_until_a_platform_admin_reactivates_it(
    admin: Client, users: Users
) -> None:
    owner = users.create()
    org = create(owner, "paused")
    update(admin, org.id, ["status"], status=pb.ORGANIZATION_STATUS_SUSPENDED)
    assert owner.orgs.GetOrganization(
        pb.GetOrganizationRequest(org="paused")
    ).organization.status == (pb.ORGANIZATION_STATUS_SUSPENDED)
    error = failure(lambda: update(owner, "paused", ["description"], description="x"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "ORGANIZATION_SUSPENDED"
    delete = failure(
        lambda: owner.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="paused"))
    )
    assert delete.code is grpc.StatusCode.FAILED_PRECONDITION
    update(admin, org.id, ["status"], status=pb.ORGANIZATION_STATUS_ACTIVE)
    assert update(owner, "paused", ["description"], description="back").description == "back"


def test_delete_is_for_the_owner(users: Users, db: psycopg.Connection[Any]) -> None:
    owner, other_admin = users.create(), users.create()
    org = create(owner, "doomed")
    users.join(org.id, other_admin, Role.ADMIN)
    error = failure(
        lambda: other_admin.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="doomed"))
    )
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    owner.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="doomed"))
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM organization_members").fetchone() == (0,)
    assert db.execute(
        "SELECT outcome FROM audit_events"
        " WHERE org_id = %s AND method LIKE '%%DeleteOrganization' ORDER BY id",
        [org.id],
    ).fetchall() == [("PERMISSION_DENIED",), ("OK",)]
    gone = failure(lambda: owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="doomed")))
    assert gone.code is grpc.StatusCode.NOT_FOUND


def test_delete_with_modules_needs_force(users: Users, db: psycopg.Connection[Any]) -> None:
    owner = users.create()
    org = create(owner, "has-modules")
    db.execute(
        "INSERT INTO modules (org_id, name, created_by) VALUES (%s, 'common-types', %s)",
        [org.id, owner.user_id],
    )
    error = failure(
        lambda: owner.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="has-modules"))
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "ORGANIZATION_HAS_MODULES"
    assert "force" in violation.description
    assert db.execute("SELECT count(*) FROM modules").fetchone() == (1,)
    owner.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="has-modules", force=True))
    assert db.execute("SELECT count(*) FROM modules").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM org_quotas").fetchone() == (0,)


def test_platform_admin_may_delete_any_org(admin: Client, users: Users) -> None:
    create(users.create(), "admin-deletes")
    admin.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="admin-deletes"))
    assert admin.orgs.ListOrganizations(pb.ListOrganizationsRequest()).organizations == []


def test_anonymous_callers_are_unauthenticated(anonymous: Client, admin: Client) -> None:
    create(admin, "anon-target")
    for call in (
        lambda: anonymous.orgs.GetOrganization(pb.GetOrganizationRequest(org="anon-target")),
        lambda: anonymous.orgs.ListOrganizations(pb.ListOrganizationsRequest()),
        lambda: create(anonymous, "anon-org"),
    ):
        assert failure(call).code is grpc.StatusCode.UNAUTHENTICATED


def test_list_order_is_bytewise_on_every_server(admin: Client) -> None:
    names = ["a-b-c", "a1b", "aab", "a0b", "ab-c", "abc"]
    for name in names:
        create(admin, name)
    seen = [o.name for page in list_pages(admin, page_size=2) for o in page]
    assert seen == sorted(names)  # Python sorts str by code point, like COLLATE "C"


def test_control_characters_are_refused(users: Users) -> None:
    error = failure(lambda: create(users.create(), "ctrl", description="bad\x00byte"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"description"}


def test_oversized_request_is_refused_before_any_work(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    with pytest.raises(grpc.RpcError) as caught:
        create(owner, "too-big", description="x" * (17 * 2**20))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)


# Per-user cap on organizations owned (SPOKE_MAX_ORGS_PER_USER, default 10).
ORG_CAP = 10


def count(db: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def owned(db: psycopg.Connection[Any], user: Client) -> int:
    return count(db, "SELECT count(*) FROM organizations WHERE owner_id = %s", user.user_id)


def assert_org_cap(error: Any, user_id: str, current: int = ORG_CAP) -> None:
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error.error_info
    assert info.reason == "RESOURCE_QUOTA_EXCEEDED"
    assert dict(info.metadata) == {
        "quota": "organizations_per_user",
        "limit": str(ORG_CAP),
        "current": str(current),
    }
    violation = error.detail(error_details_pb2.QuotaFailure).violations[0]
    assert violation.subject == f"users/{user_id}"
    assert f"{current} of {ORG_CAP} used" in error.message
    assert "SPOKE_MAX_ORGS_PER_USER" in error.message


def test_a_user_owns_at_most_ten_orgs_and_a_deleted_one_frees_its_place(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    maker, other = users.create(), users.create()
    for i in range(ORG_CAP):
        create(maker, f"mine-{i}")
    error = failure(lambda: create(maker, "one-too-many"))
    assert_org_cap(error, maker.user_id)
    assert "delete an organization you own or transfer its ownership" in error.message
    assert owned(db, maker) == ORG_CAP
    assert count(db, "SELECT count(*) FROM organizations WHERE name = 'one-too-many'") == 0
    # Membership of other orgs does not count, nor does another user's ownership.
    create(other, "theirs")
    users.join(
        other.orgs.GetOrganization(pb.GetOrganizationRequest(org="theirs")).organization.id,
        maker,
        Role.ADMIN,
    )
    # Orgs owned now: deleting one frees a place.
    maker.orgs.DeleteOrganization(pb.DeleteOrganizationRequest(org="mine-0"))
    assert create(maker, "one-more").owner_id == maker.user_id
    assert_org_cap(failure(lambda: create(maker, "again-too-many")), maker.user_id)


def test_platform_admins_may_own_more_orgs(admin: Client, users: Users) -> None:
    for i in range(ORG_CAP + 2):
        create(admin, f"admin-org-{i}")
    assert len(list_pages(admin, 100)[0]) == ORG_CAP + 2


def test_ownership_cannot_be_handed_to_a_user_at_the_cap(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    full, giver = users.create(), users.create()
    for i in range(ORG_CAP):
        create(full, f"full-{i}")
    gift = create(giver, "gift")
    users.join(gift.id, full, Role.VIEWER)
    transfer = pb.TransferOwnershipRequest(org="gift", user_id=full.user_id)
    error = failure(lambda: giver.orgs.TransferOwnership(transfer))
    assert_org_cap(error, full.user_id)
    assert "the new owner must delete or hand over" in error.message
    assert owned(db, giver) == 1 and owned(db, full) == ORG_CAP
    # A platform admin may hand it over anyway.
    assert admin.orgs.TransferOwnership(transfer).organization.owner_id == full.user_id


def test_two_creates_at_once_by_a_user_one_short_of_the_cap_make_one(
    users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    racer = users.create()
    for i in range(ORG_CAP - 1):
        create(racer, f"race-{i}")
    codes = released_together(
        database_url,
        "SELECT 1 FROM users WHERE id = %s FOR UPDATE",
        [racer.user_id],
        [lambda n=n: create(racer, n) for n in ("race-a", "race-b")],
    )
    assert sorted(codes) == ["OK", "RESOURCE_EXHAUSTED"]
    assert owned(db, racer) == ORG_CAP
