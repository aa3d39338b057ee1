from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc.error_details_pb2 import PreconditionFailure
from spoke.v1 import member_pb2 as mpb
from spoke.v1 import organization_pb2 as opb
from spoke.v1 import user_pb2

from spoke_grpc.types import Role
from tests import harness
from tests.conftest import Users
from tests.harness import Client, all_pages, failure

ROLE = {
    Role.ADMIN: mpb.ROLE_ADMIN,
    Role.DEVELOPER: mpb.ROLE_DEVELOPER,
    Role.VIEWER: mpb.ROLE_VIEWER,
}


class Org:
    """An organization with an owner and one member of each role."""

    def __init__(self, users: Users, name: str = "team") -> None:
        self.name = name
        self.owner = users.create("owner")
        self.id = self.owner.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name=name)
        ).organization.id
        self.admin = users.create("admin")
        self.developer = users.create("dev")
        self.viewer = users.create("viewer")
        users.join(self.id, self.admin, Role.ADMIN)
        users.join(self.id, self.developer, Role.DEVELOPER)
        users.join(self.id, self.viewer, Role.VIEWER)

    def roles(self) -> dict[str, int]:
        listed = self.owner.members.ListMembers(mpb.ListMembersRequest(org=self.name)).members
        return {m.user_id: m.role for m in listed}


@pytest.fixture
def team(users: Users) -> Org:
    return Org(users)


def invite(client: Client, org: str, email: str, role: int = mpb.ROLE_DEVELOPER) -> Any:
    return client.members.CreateInvitation(
        mpb.CreateInvitationRequest(org=org, email=email, role=role)
    )


def accept(client: Client, token: str) -> Any:
    return client.members.AcceptInvitation(mpb.AcceptInvitationRequest(token=token))


# --- members -----------------------------------------------------------------------------


def test_a_platform_admin_adds_by_id_or_email_and_keeps_who_added_and_when(
    team: Org, users: Users, admin: Client, db: psycopg.Connection[Any]
) -> None:
    by_id, by_email = users.create("carol"), users.create("dave")
    added = admin.members.AddMember(
        mpb.AddMemberRequest(org=team.name, user=by_id.user_id, role=mpb.ROLE_VIEWER)
    ).member
    assert (added.user_id, added.email, added.role) == (by_id.user_id, by_id.email, mpb.ROLE_VIEWER)
    assert added.invited_by == admin.user_id
    assert added.join_time.seconds > 0
    response = admin.members.AddMember(
        mpb.AddMemberRequest(org=team.name, user=by_email.email.upper(), role=mpb.ROLE_DEVELOPER)
    )
    assert response.member.user_id == by_email.user_id
    assert not response.HasField("invitation") and response.token == ""
    listed = team.viewer.members.ListMembers(mpb.ListMembersRequest(org=team.name)).members
    assert [m.user_id for m in listed][-2:] == [by_id.user_id, by_email.user_id]
    assert db.execute(
        "SELECT count(*) FROM audit_events WHERE method LIKE %s AND outcome = 'OK'", ["%AddMember"]
    ).fetchone() == (5,)  # the three of the fixture and these two


def _invitation_shape(response: Any) -> tuple[Any, ...]:
    """What an AddMember answer tells, less what differs between any two calls."""
    invitation = response.invitation
    return (
        response.HasField("member"),
        response.HasField("invitation"),
        response.token.startswith("spkinv_"),
        invitation.role,
        invitation.state,
        invitation.invited_by,
        invitation.expire_time.seconds - invitation.create_time.seconds,
    )


def test_an_org_admin_adding_by_email_invites_whether_or_not_the_account_exists(
    team: Org, users: Users, db: psycopg.Connection[Any]
) -> None:
    known = users.create("known")
    answers = {
        email: team.admin.members.AddMember(
            mpb.AddMemberRequest(org=team.name, user=email, role=mpb.ROLE_DEVELOPER)
        )
        for email in (known.email, "nobody@example.com")
    }
    # The same answer either way: an invitation, no member; nothing tells which has an account.
    shapes = {_invitation_shape(a) for a in answers.values()}
    assert shapes == {
        (
            False,
            True,
            True,
            mpb.ROLE_DEVELOPER,
            mpb.INVITATION_STATE_PENDING,
            team.admin.user_id,
            7 * 86400,
        )
    }
    assert {a.invitation.email for a in answers.values()} == {known.email, "nobody@example.com"}
    assert known.user_id not in team.roles()  # nobody joins without accepting
    assert db.execute("SELECT count(*) FROM email_outbox").fetchone() == (2,)
    # The invitee accepts and joins with the role asked for.
    member = accept(known, answers[known.email].token).member
    assert (member.user_id, member.role, member.invited_by) == (
        known.user_id,
        mpb.ROLE_DEVELOPER,
        team.admin.user_id,
    )
    targets = db.execute(
        "SELECT target FROM audit_events WHERE method LIKE %s AND outcome = 'OK' ORDER BY id",
        ["%AddMember"],
    ).fetchall()
    assert [t for (t,) in targets][-2:] == [
        f"organizations/team/invitations/{a.invitation.id}:developer" for a in answers.values()
    ]


def test_an_org_admin_cannot_add_by_user_id_and_learns_nothing_of_the_id(
    team: Org, users: Users
) -> None:
    existing = users.create("existing")
    errors = [
        failure(
            lambda ref=ref: team.owner.members.AddMember(
                mpb.AddMemberRequest(org=team.name, user=ref, role=mpb.ROLE_VIEWER)
            )
        )
        for ref in (
            existing.user_id,
            "0b9d7a58-0b87-4b8e-9d1e-3f0c1c2a4b5d",
            existing.user_id.upper(),
        )
    ]
    assert {e.code for e in errors} == {grpc.StatusCode.PERMISSION_DENIED}
    assert len({(e.message, e.status.SerializeToString()) for e in errors}) == 1
    assert "platform admins" in errors[0].message and "email" in errors[0].message
    assert existing.user_id not in team.roles()


@pytest.mark.parametrize("who", ["anonymous", "stranger", "other-org-admin", "viewer"])
def test_callers_who_may_not_add_learn_nothing_of_accounts(
    team: Org, users: Users, anonymous: Client, who: str
) -> None:
    existing = users.create("existing")
    if who == "other-org-admin":
        other = Org(users, "other-team")
        client = other.admin
    else:
        client = {"anonymous": anonymous, "stranger": users.create("s"), "viewer": team.viewer}[who]
    refs = (
        existing.email,
        "nobody@example.com",
        existing.user_id,
        "0b9d7a58-0b87-4b8e-9d1e-3f0c1c2a4b5d",
    )
    errors = [
        failure(
            lambda ref=ref: client.members.AddMember(
                mpb.AddMemberRequest(org=team.name, user=ref, role=mpb.ROLE_VIEWER)
            )
        )
        for ref in refs
    ]
    expected = {
        "anonymous": grpc.StatusCode.UNAUTHENTICATED,
        "stranger": grpc.StatusCode.NOT_FOUND,
        "other-org-admin": grpc.StatusCode.NOT_FOUND,
        "viewer": grpc.StatusCode.PERMISSION_DENIED,
    }[who]
    assert {e.code for e in errors} == {expected}
    assert len({(e.message, e.status.SerializeToString()) for e in errors}) == 1
    assert existing.email not in errors[0].message


@pytest.mark.parametrize(
    ("user", "role", "code", "field"),
    [
        pytest.param("", mpb.ROLE_VIEWER, grpc.StatusCode.INVALID_ARGUMENT, "user", id="no-user"),
        pytest.param(
            "nobody@example.com",
            mpb.ROLE_VIEWER,
            grpc.StatusCode.NOT_FOUND,
            None,
            id="unknown-email",
        ),
        pytest.param(
            "0b9d7a58-0b87-4b8e-9d1e-3f0c1c2a4b5d",
            mpb.ROLE_VIEWER,
            grpc.StatusCode.NOT_FOUND,
            None,
            id="unknown-id",
        ),
        pytest.param(
            "not-an-email", mpb.ROLE_VIEWER, grpc.StatusCode.INVALID_ARGUMENT, "user", id="bad"
        ),
        pytest.param(
            "x@example.com",
            mpb.ROLE_UNSPECIFIED,
            grpc.StatusCode.INVALID_ARGUMENT,
            "role",
            id="no-role",
        ),
        pytest.param(
            "x@example.com", 42, grpc.StatusCode.INVALID_ARGUMENT, "role", id="unknown-role"
        ),
    ],
)
def test_a_platform_admins_add_member_refuses_bad_requests(
    team: Org, admin: Client, user: str, role: int, code: grpc.StatusCode, field: str | None
) -> None:
    # A platform admin may see every account: an unknown one is NOT_FOUND for them.
    error = failure(
        lambda: admin.members.AddMember(mpb.AddMemberRequest(org=team.name, user=user, role=role))
    )
    assert error.code is code
    if field:
        assert set(error.field_violations) == {field}


def test_adding_a_member_twice_is_already_exists(team: Org) -> None:
    error = failure(
        lambda: team.admin.members.AddMember(
            mpb.AddMemberRequest(org=team.name, user=team.viewer.email, role=mpb.ROLE_ADMIN)
        )
    )
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    assert team.roles()[team.viewer.user_id] == mpb.ROLE_VIEWER


def test_roles_change_and_members_leave(team: Org, db: psycopg.Connection[Any]) -> None:
    promoted = team.admin.members.UpdateMemberRole(
        mpb.UpdateMemberRoleRequest(org=team.name, user_id=team.viewer.user_id, role=mpb.ROLE_ADMIN)
    ).member
    assert promoted.role == mpb.ROLE_ADMIN
    # The promotion takes effect at once: the former viewer can now add members.
    team.viewer.members.RemoveMember(
        mpb.RemoveMemberRequest(org=team.name, user_id=team.developer.user_id)
    )
    assert team.developer.user_id not in team.roles()
    assert failure(
        lambda: team.developer.orgs.GetOrganization(opb.GetOrganizationRequest(org=team.name))
    ).code is (grpc.StatusCode.NOT_FOUND)
    targets = db.execute(
        "SELECT target FROM audit_events WHERE method LIKE %s OR method LIKE %s ORDER BY id",
        ["%UpdateMemberRole", "%RemoveMember"],
    ).fetchall()
    assert targets == [
        (f"organizations/team/members/{team.viewer.user_id}:admin",),
        (f"organizations/team/members/{team.developer.user_id}",),
    ]


def test_the_owner_cannot_be_demoted_or_removed(team: Org) -> None:
    for call in (
        lambda: team.admin.members.UpdateMemberRole(
            mpb.UpdateMemberRoleRequest(
                org=team.name, user_id=team.owner.user_id, role=mpb.ROLE_VIEWER
            )
        ),
        lambda: team.admin.members.RemoveMember(
            mpb.RemoveMemberRequest(org=team.name, user_id=team.owner.user_id)
        ),
    ):
        error = failure(call)
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.detail(PreconditionFailure).violations[0].type == "OWNER_IS_ADMIN"
    assert team.roles()[team.owner.user_id] == mpb.ROLE_ADMIN


def test_the_last_admin_row_is_kept(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    team = Org(users, "lonely")
    # Only one admin membership left (the owner's row was lost): it cannot go.
    db.execute("DELETE FROM organization_members WHERE user_id = %s", [team.owner.user_id])
    for call in (
        lambda: admin.members.UpdateMemberRole(
            mpb.UpdateMemberRoleRequest(
                org="lonely", user_id=team.admin.user_id, role=mpb.ROLE_VIEWER
            )
        ),
        lambda: admin.members.RemoveMember(
            mpb.RemoveMemberRequest(org="lonely", user_id=team.admin.user_id)
        ),
    ):
        error = failure(call)
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.detail(PreconditionFailure).violations[0].type == "LAST_ADMIN"


@contextmanager
def held_before_commit(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Holds a write in flight after its checks and its changes, before its commit: its
    audit insert (the call's last statement) waits for this SHARE lock on audit_events until
    the block ends. A second call can then be proven to wait on the first's row locks."""
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE audit_events IN SHARE MODE")
        yield holder
        holder.rollback()


def test_concurrent_demotions_of_the_last_two_admins_leave_one(
    admin: Client, users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    team = Org(users, "pair")
    team.owner.members.UpdateMemberRole(
        mpb.UpdateMemberRoleRequest(org="pair", user_id=team.developer.user_id, role=mpb.ROLE_ADMIN)
    )
    db.execute("DELETE FROM organization_members WHERE user_id = %s", [team.owner.user_id])

    def demote(user_id: str) -> Callable[[], Any]:
        request = mpb.UpdateMemberRoleRequest(org="pair", user_id=user_id, role=mpb.ROLE_VIEWER)
        return lambda: admin.members.UpdateMemberRole(request)

    with ThreadPoolExecutor(2) as pool, held_before_commit(database_url):
        first = pool.submit(code_of, demote(team.admin.user_id))
        # The first has checked that another admin is left and demoted its target.
        first_pid = harness.wait_for_lock_waiter(db, relation="audit_events")
        second = pool.submit(code_of, demote(team.developer.user_id))
        # The second waits for a row lock the first took: they overlap, provably.
        harness.wait_for_lock_waiter(db, blocked_by=first_pid)
        assert not first.done() and not second.done()
    # The first commits; the second then sees one admin left: the one it would demote.
    assert (first.result(timeout=30), second.result(timeout=30)) == ("OK", "FAILED_PRECONDITION")
    admins = db.execute(
        "SELECT count(*) FROM organization_members m JOIN organizations o ON o.id = m.org_id"
        " WHERE o.name = 'pair' AND m.role = 'admin'"
    ).fetchone()
    assert admins == (1,)


def test_admins_demoting_each_other_at_once_cannot_both_win(
    users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    team = Org(users, "duel")
    team.owner.members.UpdateMemberRole(
        mpb.UpdateMemberRoleRequest(org="duel", user_id=team.developer.user_id, role=mpb.ROLE_ADMIN)
    )

    def demote(caller: Client, target: Client) -> Callable[[], Any]:
        request = mpb.UpdateMemberRoleRequest(
            org="duel", user_id=target.user_id, role=mpb.ROLE_VIEWER
        )
        return lambda: caller.members.UpdateMemberRole(request)

    with ThreadPoolExecutor(2) as pool, held_before_commit(database_url):
        first = pool.submit(code_of, demote(team.admin, team.developer))
        first_pid = harness.wait_for_lock_waiter(db, relation="audit_events")
        # The developer-admin's own call waits to read its membership, which the first holds.
        second = pool.submit(code_of, demote(team.developer, team.admin))
        harness.wait_for_lock_waiter(db, blocked_by=first_pid)
        assert not first.done() and not second.done()
    # Once the first commits, the second's caller is no longer an admin.
    assert (first.result(timeout=30), second.result(timeout=30)) == ("OK", "PERMISSION_DENIED")
    roles = team.roles()
    assert (roles[team.admin.user_id], roles[team.developer.user_id]) == (
        mpb.ROLE_ADMIN,
        mpb.ROLE_VIEWER,
    )


def code_of(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


@pytest.mark.parametrize(
    ("user_id", "code"),
    [
        pytest.param("", grpc.StatusCode.INVALID_ARGUMENT, id="empty"),
        pytest.param("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT, id="not-uuid"),
        pytest.param(
            "0b9d7a58-0b87-4b8e-9d1e-3f0c1c2a4b5d", grpc.StatusCode.NOT_FOUND, id="not-member"
        ),
    ],
)
def test_role_changes_need_a_member(team: Org, user_id: str, code: grpc.StatusCode) -> None:
    for call in (
        lambda: team.admin.members.UpdateMemberRole(
            mpb.UpdateMemberRoleRequest(org=team.name, user_id=user_id, role=mpb.ROLE_VIEWER)
        ),
        lambda: team.admin.members.RemoveMember(
            mpb.RemoveMemberRequest(org=team.name, user_id=user_id)
        ),
    ):
        assert failure(call).code is code


def test_list_members_pages(team: Org) -> None:
    pages = all_pages(
        lambda token: team.viewer.members.ListMembers(
            mpb.ListMembersRequest(org=team.name, page_size=3, page_token=token)
        ),
        "members",
    )
    assert [len(p) for p in pages] == [3, 1]
    assert len({m.user_id for p in pages for m in p}) == 4


# --- the permission matrix ----------------------------------------------------------------

WRITES = ["AddMember", "UpdateMemberRole", "RemoveMember", "CreateInvitation", "RevokeInvitation"]
READS = ["ListMembers", "ListInvitations"]


def matrix_request(team: Org, method: str, victim: Client) -> Any:
    org = team.name
    return {
        "ListMembers": mpb.ListMembersRequest(org=org),
        "ListInvitations": mpb.ListInvitationsRequest(org=org),
        "AddMember": mpb.AddMemberRequest(org=org, user=victim.email, role=mpb.ROLE_VIEWER),
        "UpdateMemberRole": mpb.UpdateMemberRoleRequest(
            org=org, user_id=victim.user_id, role=mpb.ROLE_VIEWER
        ),
        "RemoveMember": mpb.RemoveMemberRequest(org=org, user_id=victim.user_id),
        "CreateInvitation": mpb.CreateInvitationRequest(
            org=org, email="new@example.com", role=mpb.ROLE_VIEWER
        ),
        "RevokeInvitation": mpb.RevokeInvitationRequest(
            org=org, invitation_id="0b9d7a58-0b87-4b8e-9d1e-3f0c1c2a4b5d"
        ),
    }[method]


@pytest.mark.parametrize("method", READS + WRITES)
@pytest.mark.parametrize(
    "caller", ["anonymous", "stranger", "viewer", "developer", "admin", "owner", "platform"]
)
def test_permission_matrix(
    team: Org, users: Users, admin: Client, anonymous: Client, method: str, caller: str
) -> None:
    clients = {
        "anonymous": anonymous,
        "stranger": users.create("stranger"),
        "viewer": team.viewer,
        "developer": team.developer,
        "admin": team.admin,
        "owner": team.owner,
        "platform": admin,
    }
    client = clients[caller]
    # AddMember needs a non-member; the others act on the developer.
    victim = users.create("victim") if method == "AddMember" else team.developer
    call = lambda: getattr(client.members, method)(matrix_request(team, method, victim))  # noqa: E731
    allowed = caller in ("admin", "owner", "platform") or (
        method in READS and caller in ("viewer", "developer")
    )
    expected = {
        "anonymous": grpc.StatusCode.UNAUTHENTICATED,
        "stranger": grpc.StatusCode.NOT_FOUND,
    }.get(caller, grpc.StatusCode.PERMISSION_DENIED)
    if not allowed:
        assert failure(call).code is expected
    elif method == "RevokeInvitation":
        assert failure(call).code is grpc.StatusCode.NOT_FOUND  # allowed, but no such invitation
    else:
        call()


# --- invitations --------------------------------------------------------------------------


def test_invitation_token_is_shown_once_and_stored_nowhere(
    team: Org, db: psycopg.Connection[Any]
) -> None:
    created = invite(team.admin, team.name, "Erin@Example.com")
    token = created.token
    assert token.startswith("spkinv_") and not token.startswith("spoke_")
    assert len(token) >= len("spkinv_") + 43
    assert created.invitation.state == mpb.INVITATION_STATE_PENDING
    assert created.invitation.invited_by == team.admin.user_id
    week = created.invitation.expire_time.seconds - created.invitation.create_time.seconds
    assert week == 7 * 24 * 3600
    assert created.invitation.email == "Erin@example.com"  # normalised: the domain's case
    listing = team.admin.members.ListInvitations(mpb.ListInvitationsRequest(org=team.name))
    assert [i.email for i in listing.invitations] == ["Erin@example.com"]
    assert "token" not in mpb.Invitation.DESCRIPTOR.fields_by_name
    assert token[len("spkinv_") :].encode() not in listing.SerializeToString()
    everything = harness.database_text(db)
    assert token not in everything and token[len("spkinv_") :] not in everything
    assert hashlib.sha256(token.encode()).hexdigest() in everything


def test_accepting_makes_a_member_in_one_go(
    team: Org, users: Users, db: psycopg.Connection[Any]
) -> None:
    erin = users.create("erin")
    token = invite(team.admin, team.name, erin.email.upper(), mpb.ROLE_DEVELOPER).token
    member = accept(erin, token).member
    assert (member.user_id, member.role, member.invited_by) == (
        erin.user_id,
        mpb.ROLE_DEVELOPER,
        team.admin.user_id,
    )
    assert (
        erin.orgs.GetOrganization(opb.GetOrganizationRequest(org=team.name)).organization.id
        == team.id
    )
    states = team.viewer.members.ListInvitations(
        mpb.ListInvitationsRequest(org=team.name)
    ).invitations
    assert [i.state for i in states] == [mpb.INVITATION_STATE_ACCEPTED]
    # Accepted once: the same token again is a state error; the member stays.
    again = failure(lambda: accept(erin, token))
    assert again.code is grpc.StatusCode.FAILED_PRECONDITION
    assert again.detail(PreconditionFailure).violations[0].type == "INVITATION_ACCEPTED"


def test_only_the_invited_email_may_accept(team: Org, users: Users) -> None:
    erin, mallory = users.create("erin"), users.create("mallory")
    token = invite(team.admin, team.name, erin.email).token
    error = failure(lambda: accept(mallory, token))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert mallory.user_id not in team.roles()
    accept(erin, token)


def test_inviting_a_member_is_already_exists(team: Org) -> None:
    error = failure(lambda: invite(team.admin, team.name, team.viewer.email.upper()))
    assert error.code is grpc.StatusCode.ALREADY_EXISTS


def test_accepting_after_joining_otherwise_is_already_exists(team: Org, users: Users) -> None:
    erin = users.create("erin")
    token = invite(team.admin, team.name, erin.email).token
    users.join(team.id, erin, Role.VIEWER)
    assert failure(lambda: accept(erin, token)).code is grpc.StatusCode.ALREADY_EXISTS


def test_one_pending_invitation_per_email_until_revoked_or_expired(
    team: Org, users: Users, db: psycopg.Connection[Any]
) -> None:
    first = invite(team.admin, team.name, "frank@example.com")
    duplicate = failure(lambda: invite(team.admin, team.name, "FRANK@example.com"))
    assert duplicate.code is grpc.StatusCode.ALREADY_EXISTS
    revoked = team.admin.members.RevokeInvitation(
        mpb.RevokeInvitationRequest(org=team.name, invitation_id=first.invitation.id)
    ).invitation
    assert revoked.state == mpb.INVITATION_STATE_REVOKED
    # Revoking again is harmless.
    again = team.admin.members.RevokeInvitation(
        mpb.RevokeInvitationRequest(org=team.name, invitation_id=first.invitation.id)
    ).invitation
    assert again.state == mpb.INVITATION_STATE_REVOKED

    second = invite(team.admin, team.name, "frank@example.com")
    db.execute(
        "UPDATE org_invitations SET created_at = now() - interval '8 days',"
        " expires_at = now() - interval '1 day' WHERE id = %s",
        [second.invitation.id],
    )
    states = {
        i.id: i.state
        for i in team.viewer.members.ListInvitations(
            mpb.ListInvitationsRequest(org=team.name)
        ).invitations
    }
    assert states == {
        first.invitation.id: mpb.INVITATION_STATE_REVOKED,
        second.invitation.id: mpb.INVITATION_STATE_EXPIRED,
    }
    third = invite(team.admin, team.name, "frank@example.com")
    assert third.invitation.state == mpb.INVITATION_STATE_PENDING


def test_expired_and_revoked_invitations_cannot_be_accepted(
    team: Org, users: Users, db: psycopg.Connection[Any]
) -> None:
    gina = users.create("gina")
    expired = invite(team.admin, team.name, gina.email)
    db.execute(
        "UPDATE org_invitations SET created_at = now() - interval '8 days',"
        " expires_at = now() - interval '1 second' WHERE id = %s",
        [expired.invitation.id],
    )
    error = failure(lambda: accept(gina, expired.token))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.detail(PreconditionFailure).violations[0].type == "INVITATION_EXPIRED"
    revoked = invite(team.admin, team.name, gina.email)
    team.admin.members.RevokeInvitation(
        mpb.RevokeInvitationRequest(org=team.name, invitation_id=revoked.invitation.id)
    )
    error = failure(lambda: accept(gina, revoked.token))
    assert error.detail(PreconditionFailure).violations[0].type == "INVITATION_REVOKED"
    assert gina.user_id not in team.roles()


def test_revoke_is_scoped_to_its_org(team: Org, users: Users) -> None:
    other = Org(users, "other-team")
    theirs = invite(other.admin, other.name, "hal@example.com")
    error = failure(
        lambda: team.admin.members.RevokeInvitation(
            mpb.RevokeInvitationRequest(org=team.name, invitation_id=theirs.invitation.id)
        )
    )
    assert error.code is grpc.StatusCode.NOT_FOUND
    listed = other.admin.members.ListInvitations(
        mpb.ListInvitationsRequest(org=other.name)
    ).invitations
    assert [i.state for i in listed] == [mpb.INVITATION_STATE_PENDING]


def test_tokens_cannot_stand_in_for_each_other(team: Org, users: Users) -> None:
    ivan = users.create("ivan")
    token = invite(team.admin, team.name, ivan.email).token
    assert failure(
        lambda: Client(team.admin.channel, token).users.GetCurrentUser(
            user_pb2.GetCurrentUserRequest()
        )
    ).code is (grpc.StatusCode.UNAUTHENTICATED)
    api_token = ivan.token or ""
    for bad in (api_token, "spkinv_" + "A" * 43, "x" * 500):
        assert failure(lambda: accept(ivan, bad)).code is grpc.StatusCode.NOT_FOUND  # noqa: B023
    assert failure(lambda: accept(ivan, "")).code is grpc.StatusCode.INVALID_ARGUMENT


def test_anonymous_callers_cannot_accept(team: Org, anonymous: Client) -> None:
    token = invite(team.admin, team.name, "jo@example.com").token
    assert failure(lambda: accept(anonymous, token)).code is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("email", "role", "field"),
    [
        pytest.param("", mpb.ROLE_VIEWER, "email", id="no-email"),
        pytest.param("not-an-email", mpb.ROLE_VIEWER, "email", id="bad-email"),
        pytest.param("k@example.com", mpb.ROLE_UNSPECIFIED, "role", id="no-role"),
    ],
)
def test_create_invitation_validates(team: Org, email: str, role: int, field: str) -> None:
    error = failure(lambda: invite(team.admin, team.name, email, role))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {field}


# Addresses that name other or more recipients than one accepted address would.
NOT_ONE_ADDRESS = [
    pytest.param("a,b@corp.example.com", id="comma-list"),
    pytest.param("a;b@corp.example.com", id="semicolon-list"),
    pytest.param("a@corp.example.com,b@corp.example.com", id="two-addresses"),
    pytest.param('"A" <a@corp.example.com>', id="display-name"),
    pytest.param("<a@corp.example.com>", id="angle-brackets"),
    pytest.param('"a b"@corp.example.com', id="quoted-local-part"),
    pytest.param("a b@corp.example.com", id="space"),
    pytest.param(" a@corp.example.com", id="leading-space"),
    pytest.param("a@corp.example.com\n", id="newline"),
    pytest.param("a\x00@corp.example.com", id="nul"),
    pytest.param("a@[192.0.2.1]", id="ip-literal"),
    pytest.param("a@localhost", id="localhost"),
    pytest.param("a@corp.test", id="special-use-test"),
    pytest.param("(c)a@corp.example.com", id="comment"),
    pytest.param("a@@corp.example.com", id="two-at-signs"),
    pytest.param("x" * 250 + "@corp.example.com", id="too-long"),
]


@pytest.mark.parametrize("address", NOT_ONE_ADDRESS)
@pytest.mark.parametrize("how", ["CreateInvitation", "AddMember-org-admin", "AddMember-platform"])
def test_an_address_that_is_not_exactly_one_recipient_is_refused(
    team: Org, admin: Client, db: psycopg.Connection[Any], address: str, how: str
) -> None:
    if how == "CreateInvitation":
        call, field = (lambda: invite(team.admin, team.name, address)), "email"
    else:
        client = admin if how == "AddMember-platform" else team.admin
        request = mpb.AddMemberRequest(org=team.name, user=address, role=mpb.ROLE_VIEWER)
        call, field = (lambda: client.members.AddMember(request)), "user"
    error = failure(call)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {field}
    assert db.execute("SELECT count(*) FROM org_invitations").fetchone() == (0,)


def test_an_accepted_address_is_stored_normalised_and_matched_in_any_case(
    team: Org, users: Users
) -> None:
    created = invite(team.admin, team.name, "Zoe@Corp.EXAMPLE.com")
    assert created.invitation.email == "Zoe@corp.example.com"
    again = failure(lambda: invite(team.admin, team.name, "zoe@corp.example.com"))
    assert again.code is grpc.StatusCode.ALREADY_EXISTS
    # An internationalised domain is one address whether written in Unicode or IDNA.
    idn = invite(team.admin, team.name, "ana@xn--mnchen-3ya.de")
    assert idn.invitation.email == "ana@münchen.de"
    twin = failure(lambda: invite(team.admin, team.name, "ana@MÜNCHEN.de"))
    assert twin.code is grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("who", "sees"),
    [
        ("viewer", False),
        ("developer", False),
        ("admin", True),
        ("owner", True),
        ("platform", True),
    ],
)
def test_only_admins_see_whom_an_org_invited(
    team: Org, admin: Client, who: str, sees: bool
) -> None:
    created = invite(team.admin, team.name, "secret-hire@example.com")
    client = admin if who == "platform" else getattr(team, who)
    listed = client.members.ListInvitations(mpb.ListInvitationsRequest(org=team.name))
    [invitation] = listed.invitations
    assert invitation.id == created.invitation.id
    assert invitation.email == ("secret-hire@example.com" if sees else "")
    assert (b"secret-hire" in listed.SerializeToString()) is sees


@pytest.mark.parametrize("who", ["anonymous", "stranger", "other-org-admin"])
def test_outsiders_see_no_member_or_invitation(
    team: Org, users: Users, anonymous: Client, who: str
) -> None:
    invite(team.admin, team.name, "secret-hire@example.com")
    if who == "other-org-admin":
        client = Org(users, "other-team").admin
    else:
        client = anonymous if who == "anonymous" else users.create("s")
    expected = grpc.StatusCode.UNAUTHENTICATED if who == "anonymous" else grpc.StatusCode.NOT_FOUND
    for call in (
        lambda: client.members.ListMembers(mpb.ListMembersRequest(org=team.name)),
        lambda: client.members.ListInvitations(mpb.ListInvitationsRequest(org=team.name)),
    ):
        error = failure(call)
        assert error.code is expected
        assert "example.com" not in error.message


# --- ownership ----------------------------------------------------------------------------


def transfer(client: Client, org: str, user_id: str) -> opb.Organization:
    response = client.orgs.TransferOwnership(opb.TransferOwnershipRequest(org=org, user_id=user_id))
    organization: opb.Organization = response.organization
    return organization


def test_transfer_ownership_hands_over_delete_rights(
    team: Org, db: psycopg.Connection[Any]
) -> None:
    org = transfer(team.owner, team.name, team.viewer.user_id)
    assert org.owner_id == team.viewer.user_id
    roles = team.roles()
    assert roles[team.viewer.user_id] == mpb.ROLE_ADMIN
    assert roles[team.owner.user_id] == mpb.ROLE_ADMIN  # the previous owner stays an admin
    old = failure(
        lambda: team.owner.orgs.DeleteOrganization(opb.DeleteOrganizationRequest(org=team.name))
    )
    assert old.code is grpc.StatusCode.PERMISSION_DENIED
    # The new owner cannot be demoted; the old one now can.
    team.viewer.members.UpdateMemberRole(
        mpb.UpdateMemberRoleRequest(org=team.name, user_id=team.owner.user_id, role=mpb.ROLE_VIEWER)
    )
    team.viewer.orgs.DeleteOrganization(opb.DeleteOrganizationRequest(org=team.name))
    assert db.execute("SELECT count(*) FROM organizations WHERE id = %s", [team.id]).fetchone() == (
        0,
    )
    assert db.execute(
        "SELECT target FROM audit_events WHERE method LIKE %s", ["%TransferOwnership"]
    ).fetchall() == [(f"organizations/team/owner/{team.viewer.user_id}",)]


def test_transfer_rules(team: Org, users: Users, admin: Client) -> None:
    stranger = users.create("stranger")
    error = failure(lambda: transfer(team.owner, team.name, stranger.user_id))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.detail(PreconditionFailure).violations[0].type == "NOT_A_MEMBER"
    assert transfer(team.owner, team.name, team.owner.user_id).owner_id == team.owner.user_id
    denied = failure(lambda: transfer(team.admin, team.name, team.admin.user_id))
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert (
        failure(lambda: transfer(team.owner, team.name, "nope")).code
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    # A platform admin may hand any org over.
    assert transfer(admin, team.name, team.developer.user_id).owner_id == team.developer.user_id
