"""Organizations: create (with owner membership, quotas, audit), update by mask, delete."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

from spoke_grpc.domain import events, usage_alerts, user_limits
from spoke_grpc.domain.events import EventType
from spoke_grpc.errors import FailedPrecondition, NotFound, PermissionDenied, PreconditionViolation
from spoke_grpc.store import audit, members, organizations, quotas
from spoke_grpc.tiers import QuotaTier
from spoke_grpc.types import Organization, OrgContext, OrgStatus, Principal, Role
from spoke_grpc.validation import MAX_DESCRIPTION, MAX_DISPLAY_NAME, Violations


@dataclass(frozen=True)
class NewOrganization:
    name: str
    display_name: str = ""
    description: str = ""
    quota_tier: QuotaTier | None = None
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OrganizationUpdate:
    """New values for exactly the listed fields; a field not present is never touched."""

    display_name: str | None = None
    description: str | None = None
    settings: Mapping[str, str] | None = None
    quota_tier: QuotaTier | None = None
    status: OrgStatus | None = None

    def changes(self) -> dict[str, Any]:
        values = {
            "display_name": self.display_name,
            "description": self.description,
            "settings": dict(self.settings) if self.settings is not None else None,
            "quota_tier": self.quota_tier.value if self.quota_tier else None,
            "status": self.status.value if self.status else None,
        }
        return {column: value for column, value in values.items() if value is not None}


async def create_organization(
    conn: AsyncConnection,
    new: NewOrganization,
    *,
    principal: Principal,
    default_tier: QuotaTier,
    max_owned: int,
    method: str,
) -> Organization:
    """Creates the organization, owned by the caller, unless they own ``max_owned`` already
    (0: no cap; ``spoke_grpc.domain.user_limits``)."""
    violations = Violations()
    violations.slug("name", new.name)
    violations.text("display_name", new.display_name, max_length=MAX_DISPLAY_NAME)
    violations.text("description", new.description, max_length=MAX_DESCRIPTION)
    violations.settings("settings", new.settings)
    _check_alert_setting(violations, "settings", new.settings)
    violations.raise_if_any()
    tier = new.quota_tier or default_tier
    if tier is not default_tier and not principal.is_admin:
        raise PermissionDenied(
            f"only platform admins may create organizations outside the default tier"
            f" ({default_tier.value}); omit quota_tier or ask an admin"
        )
    await user_limits.reserve_organization(conn, principal, max_owned)
    org = await organizations.insert_org(
        conn,
        name=new.name,
        display_name=new.display_name.strip() or new.name,
        description=new.description,
        owner_id=principal.user_id,
        quota_tier=tier.value,
        settings=new.settings,
    )
    await members.insert_member(
        conn, org_id=org.id, user_id=principal.user_id, role=Role.ADMIN, invited_by=None
    )
    await quotas.set_tier(conn, org.id, tier)
    await _audit(conn, method, principal, org.id, f"organizations/{org.name}")
    return org


async def update_organization(
    conn: AsyncConnection,
    org: OrgContext,
    update: OrganizationUpdate,
    *,
    principal: Principal,
    method: str,
) -> Organization:
    violations = Violations()
    if update.display_name is not None:
        violations.text(
            "organization.display_name",
            update.display_name,
            max_length=MAX_DISPLAY_NAME,
            required=True,
        )
    if update.description is not None:
        violations.text("organization.description", update.description, max_length=MAX_DESCRIPTION)
    if update.settings is not None:
        violations.settings("organization.settings", update.settings)
        _check_alert_setting(violations, "organization.settings", update.settings)
    violations.raise_if_any()
    if (update.quota_tier or update.status) and not principal.is_admin:
        raise PermissionDenied("only platform admins may change quota_tier or status")
    changes = update.changes()
    if update.status is not None or update.quota_tier is not None:
        # FOR UPDATE waits for the writes in flight in the org (they hold FOR KEY SHARE):
        # none of them commits after the suspension it did not see.
        await organizations.get_org(conn, org.id, lock=True)
    row = await organizations.update_org(conn, org.id, changes)
    if row is None:
        raise NotFound("organization", org.name)
    if update.quota_tier is not None:
        await quotas.set_tier(conn, org.id, update.quota_tier)
    await _audit(
        conn, method, principal, org.id, f"organizations/{org.name}:{','.join(sorted(changes))}"
    )
    await events.emit(
        conn,
        org.id,
        EventType.ORGANIZATION_UPDATED,
        {"actor_id": str(principal.user_id), "changed": sorted(changes)},
    )
    return row


async def delete_organization(
    conn: AsyncConnection, org: OrgContext, *, force: bool, principal: Principal, method: str
) -> None:
    # Lock the row so a module created concurrently either lands first (and is
    # counted) or fails on the foreign key after the delete.
    if await organizations.get_org(conn, org.id, lock=True) is None:
        raise NotFound("organization", org.name)
    modules = await organizations.count_modules(conn, org.id)
    if modules and not force:
        raise FailedPrecondition(
            PreconditionViolation(
                type="ORGANIZATION_HAS_MODULES",
                subject=f"organizations/{org.name}",
                description=(
                    f"organization {org.name!r} still has {modules} module(s);"
                    " delete them first or pass force=true"
                ),
            )
        )
    await organizations.delete_org(conn, org.id)
    await _audit(
        conn,
        method,
        principal,
        org.id,
        f"organizations/{org.name}" + (f" (force, {modules} modules)" if modules else ""),
    )


async def _audit(
    conn: AsyncConnection, method: str, principal: Principal, org_id: uuid.UUID, target: str
) -> None:
    await audit.record(
        conn,
        audit.AuditEvent(method=method, actor_id=principal.user_id, org_id=org_id, target=target),
    )


def _check_alert_setting(violations: Violations, field: str, settings: Mapping[str, str]) -> None:
    value = settings.get(usage_alerts.SETTING)
    if value is not None and (problem := usage_alerts.threshold_problem(value)):
        violations.add(f"{field}.{usage_alerts.SETTING}", problem)
