"""spoke.v1.OrganizationService."""

from __future__ import annotations

from grpc import aio
from spoke.v1 import organization_pb2, organization_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.domain import members
from spoke_grpc.domain import organizations as domain
from spoke_grpc.servicers.convert import (
    STATUS_TO_PROTO,
    TIER_TO_PROTO,
    mask_paths,
    status_from_proto,
    tier_from_proto,
    timestamp,
)
from spoke_grpc.store import organizations as store
from spoke_grpc.tiers import QuotaTier
from spoke_grpc.types import Organization, OrgStatus

_UPDATABLE_PATHS = ("display_name", "description", "settings", "quota_tier", "status")
_IMMUTABLE_PATHS = ("id", "name", "owner_id", "create_time", "update_time")


def org_to_proto(row: Organization) -> organization_pb2.Organization:
    return organization_pb2.Organization(
        id=str(row.id),
        name=row.name,
        display_name=row.display_name,
        description=row.description,
        owner_id=str(row.owner_id),
        quota_tier=TIER_TO_PROTO[QuotaTier(row.quota_tier)],
        status=STATUS_TO_PROTO[OrgStatus(row.status)],
        settings=row.settings,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def update_from_proto(
    request: organization_pb2.UpdateOrganizationRequest,
) -> domain.OrganizationUpdate:
    """Reads exactly the masked fields; an empty or unknown path is INVALID_ARGUMENT."""
    source = request.organization
    values: dict[str, object] = {}
    for path in mask_paths(request.update_mask, _UPDATABLE_PATHS, _IMMUTABLE_PATHS):
        if path == "quota_tier":
            values[path] = tier_from_proto(
                "organization.quota_tier", source.quota_tier, required=True
            )
        elif path == "status":
            values[path] = status_from_proto("organization.status", source.status)
        elif path == "settings":
            values[path] = dict(source.settings)
        else:
            values[path] = getattr(source, path)
    return domain.OrganizationUpdate(**values)  # type: ignore[arg-type]


class OrganizationServicer(organization_pb2_grpc.OrganizationServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def CreateOrganization(
        self, request: organization_pb2.CreateOrganizationRequest, context: aio.ServicerContext
    ) -> organization_pb2.CreateOrganizationResponse:
        call = current_call()
        new = domain.NewOrganization(
            name=request.name,
            display_name=request.display_name,
            description=request.description,
            quota_tier=tier_from_proto("quota_tier", request.quota_tier, required=False),
            settings=dict(request.settings),
        )
        row = await domain.create_organization(
            await call.connection(),
            new,
            principal=call.require_principal(),
            default_tier=self._app.settings.default_quota_tier,
            max_owned=self._app.settings.max_orgs_per_user,
            method=call.policy.method,
        )
        return organization_pb2.CreateOrganizationResponse(organization=org_to_proto(row))

    async def GetOrganization(
        self, request: organization_pb2.GetOrganizationRequest, context: aio.ServicerContext
    ) -> organization_pb2.GetOrganizationResponse:
        # The organization was read with the caller: no statement of its own.
        org = current_call().require_org()
        return organization_pb2.GetOrganizationResponse(organization=org_to_proto(org.org))

    async def ListOrganizations(
        self, request: organization_pb2.ListOrganizationsRequest, context: aio.ServicerContext
    ) -> organization_pb2.ListOrganizationsResponse:
        call = current_call()
        principal = call.require_principal()
        member_id = None if principal.is_admin else principal.user_id
        # A platform admin's list (every org) and a member's differ: tokens are bound to it.
        scope = "all" if member_id is None else member_id
        pages = self._app.pages
        page = pages.request(
            "organizations", scope, request.page_size, request.page_token, (pagination.text,)
        )
        rows = await store.list_orgs(await call.connection(), member_id, page)
        return organization_pb2.ListOrganizationsResponse(
            organizations=[org_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "organizations", scope, rows, page, lambda r: [r.name]
            ),
        )

    async def UpdateOrganization(
        self, request: organization_pb2.UpdateOrganizationRequest, context: aio.ServicerContext
    ) -> organization_pb2.UpdateOrganizationResponse:
        call = current_call()
        update = update_from_proto(request)
        row = await domain.update_organization(
            await call.connection(),
            call.require_org(),
            update,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return organization_pb2.UpdateOrganizationResponse(organization=org_to_proto(row))

    async def DeleteOrganization(
        self, request: organization_pb2.DeleteOrganizationRequest, context: aio.ServicerContext
    ) -> organization_pb2.DeleteOrganizationResponse:
        call = current_call()
        await domain.delete_organization(
            await call.connection(),
            call.require_org(),
            force=request.force,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return organization_pb2.DeleteOrganizationResponse()

    async def TransferOwnership(
        self, request: organization_pb2.TransferOwnershipRequest, context: aio.ServicerContext
    ) -> organization_pb2.TransferOwnershipResponse:
        call = current_call()
        row = await members.transfer_ownership(
            await call.connection(),
            call.require_org(),
            request.user_id,
            principal=call.require_principal(),
            max_owned=self._app.settings.max_orgs_per_user,
            method=call.policy.method,
        )
        return organization_pb2.TransferOwnershipResponse(organization=org_to_proto(row))
