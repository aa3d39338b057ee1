"""The vocabulary that crosses layers: who calls, in which organization, under which policy."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spoke_grpc.tiers import QuotaLimits, QuotaTier

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from spoke_grpc.database import UnitOfWork


class Role(enum.StrEnum):
    """A member's role, stored as these strings; the proto enum is ``ROLE_<NAME>``."""

    ADMIN = "admin"
    DEVELOPER = "developer"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.ADMIN: 3}


class OrgStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Access(enum.IntEnum):
    """Mirror of ``spoke.v1.Access``: the minimum access a method needs, ordered."""

    UNSPECIFIED = 0
    ANONYMOUS = 1
    AUTHENTICATED = 2
    ORG_VIEWER = 3
    ORG_DEVELOPER = 4
    ORG_ADMIN = 5
    ORG_OWNER = 6
    PLATFORM_ADMIN = 7


class QuotaKind(enum.IntEnum):
    """Mirror of ``spoke.v1.QuotaKind``."""

    NONE = 0
    MODULES = 1
    VERSIONS = 2
    COMPILE_JOBS = 3


@dataclass(frozen=True)
class Policy:
    """One RPC's declared policy (the ``spoke.v1.policy`` method option)."""

    method: str
    access: Access
    read_only: bool
    quota: QuotaKind
    public_read: bool
    org_scoped: bool


@dataclass(frozen=True)
class OrgRef:
    """The request's ``org``: an id or a name (names are never UUID-shaped)."""

    id: uuid.UUID | None = None
    name: str | None = None


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    display_name: str
    is_admin: bool
    created_at: dt.datetime


@dataclass(frozen=True)
class Organization:
    id: uuid.UUID
    name: str
    display_name: str
    description: str
    owner_id: uuid.UUID
    quota_tier: str
    status: str
    settings: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the user row read with its token, carried to the servicer."""

    user: User
    token_id: uuid.UUID

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin


@dataclass(frozen=True)
class OrgContext:
    """The organization a call targets (its whole row, read once) and the caller's standing.

    ``role`` is the caller's effective role: the owner is always an admin; ``None`` when
    the caller is not a member (a platform admin, or a public read).
    ``has_public_modules`` is only known for public reads by non-members.
    """

    org: Organization
    role: Role | None
    is_owner: bool = False
    has_public_modules: bool = False
    limits: QuotaLimits | None = None  # read with the org; None where it was not read

    @property
    def id(self) -> uuid.UUID:
        return self.org.id

    @property
    def name(self) -> str:
        return self.org.name

    @property
    def status(self) -> OrgStatus:
        return OrgStatus(self.org.status)

    @property
    def tier(self) -> QuotaTier:
        return QuotaTier(self.org.quota_tier)

    @property
    def owner_id(self) -> uuid.UUID:
        return self.org.owner_id

    @property
    def suspended(self) -> bool:
        return self.status is OrgStatus.SUSPENDED


@dataclass(frozen=True)
class CallContext:
    """What the interceptors learned about a call, for the servicer to use."""

    policy: Policy
    unit: UnitOfWork | None = None
    principal: Principal | None = None
    org: OrgContext | None = None

    async def connection(self) -> AsyncConnection:
        """The call's connection (checked out now if it was not yet): inside the call's
        transaction when the method writes."""
        if self.unit is None:
            raise RuntimeError(f"{self.policy.method} has no unit of work")
        return await self.unit.connection()

    def require_principal(self) -> Principal:
        if self.principal is None:  # the auth interceptor guarantees this for non-anonymous calls
            raise RuntimeError(f"{self.policy.method} reached its servicer without a principal")
        return self.principal

    def require_org(self) -> OrgContext:
        if self.org is None:
            raise RuntimeError(f"{self.policy.method} reached its servicer without an org")
        return self.org
