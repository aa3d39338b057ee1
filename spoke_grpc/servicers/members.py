"""spoke.v1.MemberService."""

from __future__ import annotations

import datetime as dt

from grpc import aio
from spoke.v1 import member_pb2, member_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.domain import members as domain
from spoke_grpc.servicers.convert import ROLE_TO_PROTO, role_from_proto, timestamp
from spoke_grpc.store import members as store
from spoke_grpc.store.members import InvitationRow, MemberRow
from spoke_grpc.types import OrgContext, Principal, Role

_STATE_TO_PROTO = {
    "pending": member_pb2.INVITATION_STATE_PENDING,
    "accepted": member_pb2.INVITATION_STATE_ACCEPTED,
    "revoked": member_pb2.INVITATION_STATE_REVOKED,
    "expired": member_pb2.INVITATION_STATE_EXPIRED,
}
_MEMBER_KEY = (pagination.timestamp, pagination.uuid_part)
_INVITATION_KEY = (pagination.timestamp, pagination.uuid_part)


def member_to_proto(row: MemberRow) -> member_pb2.Member:
    return member_pb2.Member(
        user_id=str(row.user_id),
        email=row.email,
        display_name=row.display_name,
        role=ROLE_TO_PROTO[Role(row.role)],
        invited_by=str(row.invited_by or ""),
        join_time=timestamp(row.joined_at),
    )


def sees_invitee_emails(principal: Principal, org: OrgContext) -> bool:
    """Who is shown an invitation's email (SPEC §3, personal data): the org's admins, who
    invite and revoke, and platform admins. Other members see the invitation without it:
    the invitee is nobody's co-member yet."""
    return principal.is_admin or org.role is Role.ADMIN


def invitation_to_proto(row: InvitationRow, *, show_email: bool) -> member_pb2.Invitation:
    return member_pb2.Invitation(
        id=str(row.id),
        email=row.email if show_email else "",
        role=ROLE_TO_PROTO[Role(row.role)],
        state=_STATE_TO_PROTO[row.state],
        invited_by=str(row.invited_by or ""),
        create_time=timestamp(row.created_at),
        expire_time=timestamp(row.expires_at),
    )


class MemberServicer(member_pb2_grpc.MemberServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def ListMembers(
        self, request: member_pb2.ListMembersRequest, context: aio.ServicerContext
    ) -> member_pb2.ListMembersResponse:
        call = current_call()
        org = call.require_org()
        pages = self._app.pages
        page = pages.request("members", org.id, request.page_size, request.page_token, _MEMBER_KEY)
        rows = await store.list_members(await call.connection(), org.id, page)
        return member_pb2.ListMembersResponse(
            members=[member_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "members", org.id, rows, page, lambda r: [r.joined_at, r.user_id]
            ),
        )

    async def AddMember(
        self, request: member_pb2.AddMemberRequest, context: aio.ServicerContext
    ) -> member_pb2.AddMemberResponse:
        call = current_call()
        added = await domain.add_member(
            await call.connection(),
            call.require_org(),
            request.user,
            role_from_proto("role", request.role),
            ttl=dt.timedelta(hours=self._app.settings.invitation_ttl_hours),
            principal=call.require_principal(),
            method=call.policy.method,
        )
        if added.invitation is not None:
            show_email = sees_invitee_emails(call.require_principal(), call.require_org())
            return member_pb2.AddMemberResponse(
                invitation=invitation_to_proto(added.invitation.invitation, show_email=show_email),
                token=added.invitation.token.value,
            )
        return member_pb2.AddMemberResponse(
            member=member_to_proto(added.member) if added.member else None
        )

    async def UpdateMemberRole(
        self, request: member_pb2.UpdateMemberRoleRequest, context: aio.ServicerContext
    ) -> member_pb2.UpdateMemberRoleResponse:
        call = current_call()
        member = await domain.update_member_role(
            await call.connection(),
            call.require_org(),
            request.user_id,
            role_from_proto("role", request.role),
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return member_pb2.UpdateMemberRoleResponse(member=member_to_proto(member))

    async def RemoveMember(
        self, request: member_pb2.RemoveMemberRequest, context: aio.ServicerContext
    ) -> member_pb2.RemoveMemberResponse:
        call = current_call()
        await domain.remove_member(
            await call.connection(),
            call.require_org(),
            request.user_id,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return member_pb2.RemoveMemberResponse()

    async def CreateInvitation(
        self, request: member_pb2.CreateInvitationRequest, context: aio.ServicerContext
    ) -> member_pb2.CreateInvitationResponse:
        call = current_call()
        created = await domain.create_invitation(
            await call.connection(),
            call.require_org(),
            request.email,
            role_from_proto("role", request.role),
            ttl=dt.timedelta(hours=self._app.settings.invitation_ttl_hours),
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return member_pb2.CreateInvitationResponse(
            invitation=invitation_to_proto(
                created.invitation,
                show_email=sees_invitee_emails(call.require_principal(), call.require_org()),
            ),
            token=created.token.value,
        )

    async def ListInvitations(
        self, request: member_pb2.ListInvitationsRequest, context: aio.ServicerContext
    ) -> member_pb2.ListInvitationsResponse:
        call = current_call()
        org = call.require_org()
        pages = self._app.pages
        page = pages.request(
            "invitations", org.id, request.page_size, request.page_token, _INVITATION_KEY
        )
        rows = await store.list_invitations(await call.connection(), org.id, page)
        show_email = sees_invitee_emails(call.require_principal(), org)
        return member_pb2.ListInvitationsResponse(
            invitations=[invitation_to_proto(r, show_email=show_email) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "invitations", org.id, rows, page, lambda r: [r.created_at, r.id]
            ),
        )

    async def RevokeInvitation(
        self, request: member_pb2.RevokeInvitationRequest, context: aio.ServicerContext
    ) -> member_pb2.RevokeInvitationResponse:
        call = current_call()
        invitation = await domain.revoke_invitation(
            await call.connection(),
            call.require_org(),
            request.invitation_id,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        show_email = sees_invitee_emails(call.require_principal(), call.require_org())
        return member_pb2.RevokeInvitationResponse(
            invitation=invitation_to_proto(invitation, show_email=show_email)
        )

    async def AcceptInvitation(
        self, request: member_pb2.AcceptInvitationRequest, context: aio.ServicerContext
    ) -> member_pb2.AcceptInvitationResponse:
        call = current_call()
        member = await domain.accept_invitation(
            await call.connection(),
            request.token,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return member_pb2.AcceptInvitationResponse(member=member_to_proto(member))
