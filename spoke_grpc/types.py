"""The vocabulary that crosses layers: who calls, in which organization, under which policy."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from spoke_grpc.tiers import QuotaTier


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
class Principal:
    """The authenticated caller."""

    user_id: uuid.UUID
    email: str
    is_admin: bool
    token_id: uuid.UUID


@dataclass(frozen=True)
class OrgContext:
    """The organization a call targets and the caller's standing in it.

    ``role`` is ``None`` when the caller is not a member (a platform admin, or a
    public read).
    """

    id: uuid.UUID
    name: str
    status: OrgStatus
    tier: QuotaTier
    owner_id: uuid.UUID
    role: Role | None

    @property
    def suspended(self) -> bool:
        return self.status is OrgStatus.SUSPENDED


@dataclass(frozen=True)
class CallContext:
    """What the interceptors learned about a call, for the servicer to use."""

    policy: Policy
    principal: Principal | None = None
    org: OrgContext | None = None

    def require_principal(self) -> Principal:
        if self.principal is None:  # the auth interceptor guarantees this for non-anonymous calls
            raise RuntimeError(f"{self.policy.method} reached its servicer without a principal")
        return self.principal

    def require_org(self) -> OrgContext:
        if self.org is None:
            raise RuntimeError(f"{self.policy.method} reached its servicer without an org")
        return self.org
