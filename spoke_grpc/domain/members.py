"""Members, roles, invitations and ownership: the rules that keep an organization governable.

- The owner is always an admin: it cannot be demoted or removed, only replaced by
  ``transfer_ownership``, after which the previous owner stays an admin.
- The organization always keeps an admin. The check locks every admin membership
  (``FOR UPDATE``, stable order) in the call's transaction, so two concurrent demotions of
  the last two admins cannot both pass: the second waits, then sees one admin left.
- A role change or removal locks the member's row ``FOR UPDATE``: it waits for that
  member's writes in flight (they hold the row ``FOR KEY SHARE``).
- Accounts cannot be found through membership calls: only a platform admin adds an
  existing user directly (by id or email); an org admin's AddMember takes an email and
  invites it, answering the same whether or not an account has that address, and a user
  id from an org admin is refused without being looked up.
- Invitation tokens are returned once; only their SHA-256 is stored. Accepting needs the
  invited email (any case), creates the membership and closes the invitation together.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection

from spoke_grpc import tokens
from spoke_grpc.domain import events, user_limits
from spoke_grpc.domain.events import EventType
from spoke_grpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
)
from spoke_grpc.store import audit, members, organizations, outbox, users
from spoke_grpc.store.members import InvitationRow, MemberRow
from spoke_grpc.types import Organization, OrgContext, OrgStatus, Principal, Role
from spoke_grpc.validation import Violations, parse_uuid, required_uuid

_MAX_INVITATION_TOKEN = 128


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: InvitationRow
    token: tokens.IssuedToken


@dataclass(frozen=True)
class AddedMember:
    """What AddMember did: added a member (platform admins) or invited the address."""

    member: MemberRow | None = None
    invitation: CreatedInvitation | None = None


def _user_id(field: str, value: str) -> uuid.UUID:
    return required_uuid(field, value, what="a user id (UUID)")


def _violation(kind: str, org: OrgContext, description: str) -> FailedPrecondition:
    return FailedPrecondition(
        PreconditionViolation(
            type=kind, subject=f"organizations/{org.name}", description=description
        )
    )


async def add_member(
    conn: AsyncConnection,
    org: OrgContext,
    user_ref: str,
    role: Role,
    *,
    ttl: dt.timedelta,
    principal: Principal,
    method: str,
) -> AddedMember:
    """A platform admin adds an existing user (by id or email) at once. Anyone else (an org
    admin) adds by email only, and that invites the address: the answer is the same
    whether or not an account has it, so AddMember cannot be used to find accounts, and
    nobody becomes a member of an org without accepting."""
    if not user_ref:
        raise InvalidArgument.field(
            "user", "required: the user's email (or id, for platform admins)"
        )
    user_id = parse_uuid(user_ref)
    if not principal.is_admin:
        if user_id is not None:
            # Never looked up: the answer is the same for any id, existing or not.
            raise PermissionDenied(
                "adding a member by user id is for platform admins; add them by email"
                " (they get an invitation to accept), or call CreateInvitation"
            )
        invited = await create_invitation(
            conn, org, user_ref, role, ttl=ttl, principal=principal, method=method, field="user"
        )
        return AddedMember(invitation=invited)
    ref: uuid.UUID | str
    if user_id is None:
        violations = Violations()
        ref = violations.email("user", user_ref)
        violations.raise_if_any()
    else:
        ref = user_id
    user = await users.find_user(conn, ref)
    if user is None:
        raise NotFound("user", user_ref)
    await members.insert_member(
        conn, org_id=org.id, user_id=user.id, role=role, invited_by=principal.user_id
    )
    await _audit(conn, method, principal, org, f"members/{user.id}:{role.value}")
    await _emit(conn, org, EventType.MEMBER_ADDED, principal, user_id=user.id, role=role.value)
    return AddedMember(member=await _member(conn, org, user.id))


async def update_member_role(
    conn: AsyncConnection,
    org: OrgContext,
    user_ref: str,
    role: Role,
    *,
    principal: Principal,
    method: str,
) -> MemberRow:
    user_id = _user_id("user_id", user_ref)
    member = await _locked_member(conn, org, user_id, user_ref)
    if member.role != role.value:
        if user_id == org.owner_id:
            raise _violation(
                "OWNER_IS_ADMIN",
                org,
                "the owner is always an admin; transfer ownership to another admin first",
            )
        if member.role == Role.ADMIN.value:
            await _keep_an_admin(conn, org, user_id, "demoting")
        await members.set_role(conn, org.id, user_id, role)
        await _emit(
            conn,
            org,
            EventType.MEMBER_ROLE_CHANGED,
            principal,
            user_id=user_id,
            role=role.value,
            previous_role=member.role,
        )
    await _audit(conn, method, principal, org, f"members/{user_id}:{role.value}")
    return await _member(conn, org, user_id)


async def remove_member(
    conn: AsyncConnection, org: OrgContext, user_ref: str, *, principal: Principal, method: str
) -> None:
    user_id = _user_id("user_id", user_ref)
    member = await _locked_member(conn, org, user_id, user_ref)
    if user_id == org.owner_id:
        raise _violation(
            "OWNER_IS_ADMIN", org, "the owner cannot be removed; transfer ownership first"
        )
    if member.role == Role.ADMIN.value:
        await _keep_an_admin(conn, org, user_id, "removing")
    await members.delete_member(conn, org.id, user_id)
    await _audit(conn, method, principal, org, f"members/{user_id}")
    await _emit(conn, org, EventType.MEMBER_REMOVED, principal, user_id=user_id, role=member.role)


async def transfer_ownership(
    conn: AsyncConnection,
    org: OrgContext,
    user_ref: str,
    *,
    principal: Principal,
    max_owned: int,
    method: str,
) -> Organization:
    """Makes a member the owner and an admin; the previous owner stays an admin. The new
    owner must own fewer than ``max_owned`` organizations (``domain.user_limits``)."""
    user_id = _user_id("user_id", user_ref)
    # FOR UPDATE: waits for the org's writes in flight, and serialises transfers.
    current = await organizations.get_org(conn, org.id, lock=True)
    if current is None:
        raise NotFound("organization", org.name)
    if user_id == current.owner_id:
        return current
    if await members.get_member(conn, org.id, user_id, lock=True) is None:
        raise _violation(
            "NOT_A_MEMBER",
            org,
            f"user {user_ref!r} is not a member of {org.name!r}; add them first",
        )
    await user_limits.reserve_transfer(conn, principal, user_id, max_owned)
    previous = current.owner_id
    await members.set_role(conn, org.id, user_id, Role.ADMIN)
    if await members.get_member(conn, org.id, previous, lock=True) is None:
        await members.insert_member(
            conn, org_id=org.id, user_id=previous, role=Role.ADMIN, invited_by=None
        )
    else:
        await members.set_role(conn, org.id, previous, Role.ADMIN)
    await members.set_owner(conn, org.id, user_id)
    await _audit(conn, method, principal, org, f"owner/{user_id}")
    await events.emit(
        conn,
        org.id,
        EventType.ORGANIZATION_UPDATED,
        {"actor_id": str(principal.user_id), "changed": ["owner_id"], "owner_id": str(user_id)},
    )
    updated = await organizations.get_org(conn, org.id)
    if updated is None:
        raise NotFound("organization", org.name)
    return updated


async def create_invitation(
    conn: AsyncConnection,
    org: OrgContext,
    email: str,
    role: Role,
    *,
    ttl: dt.timedelta,
    principal: Principal,
    method: str,
    field: str = "email",
) -> CreatedInvitation:
    """A pending invitation for ``email`` (read from the request's ``field``)."""
    violations = Violations()
    email = violations.email(field, email)
    violations.raise_if_any()
    # Members are visible to the org's admins anyway; whether a non-member has an
    # account is not told (the invitation is the same either way).
    if await members.is_member_email(conn, org.id, email):
        raise AlreadyExists("member", email)
    token = tokens.issue(tokens.INVITATION_TOKEN_PREFIX)
    invitation = await members.insert_invitation(
        conn,
        org_id=org.id,
        email=email,
        role=role,
        token_hash=token.digest,
        invited_by=principal.user_id,
        ttl=ttl,
    )
    await outbox.enqueue(conn, org.id, invitation.id)
    await _audit(conn, method, principal, org, f"invitations/{invitation.id}:{role.value}")
    await _emit(
        conn,
        org,
        EventType.INVITATION_CREATED,
        principal,
        invitation_id=invitation.id,
        role=role.value,
    )
    return CreatedInvitation(invitation=invitation, token=token)


async def revoke_invitation(
    conn: AsyncConnection, org: OrgContext, ref: str, *, principal: Principal, method: str
) -> InvitationRow:
    """Revokes a pending invitation of this org; repeating it (or an expired one) is harmless."""
    invitation_id = required_uuid("invitation_id", ref)
    invitation = await members.get_invitation(conn, org.id, invitation_id)
    if invitation is None:
        raise NotFound("invitation", ref)
    if invitation.state == "accepted":
        raise _violation(
            "INVITATION_ACCEPTED",
            org,
            f"invitation {ref!r} was accepted; remove the member instead",
        )
    if invitation.state == "pending":
        invitation = await members.close_invitation(
            conn, org.id, invitation_id, state="revoked", by=principal.user_id
        )
    await _audit(conn, method, principal, org, f"invitations/{invitation_id}")
    return invitation


async def accept_invitation(
    conn: AsyncConnection, token: str, *, principal: Principal, method: str
) -> MemberRow:
    """Makes the caller a member; the invitation must be pending and for the caller's email."""
    if not token:
        raise InvalidArgument.field("token", "required: the invitation token")
    not_found = NotFound("invitation", "token")
    if not token.startswith(tokens.INVITATION_TOKEN_PREFIX) or len(token) > _MAX_INVITATION_TOKEN:
        raise not_found
    invitation = await members.invitation_by_token(conn, tokens.digest(token))
    if invitation is None:
        raise not_found
    if invitation.email.lower() != principal.email.lower():
        raise PermissionDenied(
            "this invitation is for another email address; sign in as the invited user"
        )
    row = await organizations.get_org(conn, invitation.org_id)
    if row is None:
        raise not_found
    org = OrgContext(org=row, role=None)
    if invitation.state != "pending":
        raise _violation(
            f"INVITATION_{invitation.state.upper()}",
            org,
            f"this invitation is {invitation.state}; ask an admin of {org.name!r} for a new one",
        )
    if OrgStatus(row.status) is OrgStatus.SUSPENDED:
        raise _violation("ORGANIZATION_SUSPENDED", org, f"organization {org.name!r} is suspended")
    await members.insert_member(
        conn,
        org_id=org.id,
        user_id=principal.user_id,
        role=Role(invitation.role),
        invited_by=invitation.invited_by,
    )
    await members.close_invitation(
        conn, org.id, invitation.id, state="accepted", by=principal.user_id
    )
    await _audit(conn, method, principal, org, f"invitations/{invitation.id}")
    await _emit(
        conn,
        org,
        EventType.INVITATION_ACCEPTED,
        principal,
        invitation_id=invitation.id,
        user_id=principal.user_id,
        role=invitation.role,
    )
    await _emit(
        conn,
        org,
        EventType.MEMBER_ADDED,
        principal,
        user_id=principal.user_id,
        role=invitation.role,
    )
    return await _member(conn, org, principal.user_id)


async def _locked_member(
    conn: AsyncConnection, org: OrgContext, user_id: uuid.UUID, ref: str
) -> MemberRow:
    member = await members.get_member(conn, org.id, user_id, lock=True)
    if member is None:
        raise NotFound("member", ref)
    return member


async def _member(conn: AsyncConnection, org: OrgContext, user_id: uuid.UUID) -> MemberRow:
    member = await members.get_member(conn, org.id, user_id)
    if member is None:
        raise NotFound("member", str(user_id))
    return member


async def _keep_an_admin(
    conn: AsyncConnection, org: OrgContext, user_id: uuid.UUID, action: str
) -> None:
    admins = await members.lock_admins(conn, org.id)
    if admins == [user_id]:
        raise _violation(
            "LAST_ADMIN",
            org,
            f"{action} the last admin of {org.name!r} would leave it without one;"
            " make another member an admin first",
        )


async def _audit(
    conn: AsyncConnection, method: str, principal: Principal, org: OrgContext, target: str
) -> None:
    await audit.record(
        conn,
        audit.AuditEvent(
            method=method,
            actor_id=principal.user_id,
            org_id=org.id,
            target=f"organizations/{org.name}/{target}",
        ),
    )


async def _emit(
    conn: AsyncConnection,
    org: OrgContext,
    event_type: EventType,
    principal: Principal,
    **data: uuid.UUID | str,
) -> None:
    await events.emit(
        conn,
        org.id,
        event_type,
        {"actor_id": str(principal.user_id), **{k: str(v) for k, v in data.items()}},
    )
