"""Who is calling and where, in one statement: the token's user, the organization named by
the request and the caller's role in it.

Writes read these rows ``FOR KEY SHARE`` inside their transaction: a suspension, a role
change, a removal or a deletion (which take stronger locks) then waits for the write, or
the write sees it. Reads take no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from psycopg import AsyncConnection, sql

from spoke_grpc.tiers import LIMIT_COLUMNS, QuotaLimits
from spoke_grpc.types import Organization, OrgContext, OrgRef, Principal, Role, User


@dataclass(frozen=True)
class Resolved:
    principal: Principal | None
    org: OrgContext | None


_USER = ("id", "email", "display_name", "is_admin", "created_at")
_ORG = (
    "id",
    "name",
    "display_name",
    "description",
    "owner_id",
    "quota_tier",
    "status",
    "settings",
    "created_at",
    "updated_at",
)


@cache
def _query(org_by: str | None, lock: bool, public: bool) -> sql.Composed:
    """The statement for one shape of call; composed once, so the server can prepare it."""
    lock_clause = sql.SQL(" FOR KEY SHARE" if lock else "")
    org_columns = sql.SQL(", ").join(
        sql.SQL("o.{} AS {}").format(sql.Identifier(c), sql.Identifier("o_" + c)) for c in _ORG
    )
    user_columns = sql.SQL(", ").join(
        sql.SQL("u.{} AS {}").format(sql.Identifier(c), sql.Identifier("u_" + c)) for c in _USER
    )
    caller = sql.SQL(
        "LEFT JOIN LATERAL (SELECT {user_columns}, t.id AS token_id"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = %(digest)s AND t.revoked_at IS NULL) AS c ON true"
    ).format(user_columns=user_columns)
    if org_by is None:
        return sql.SQL("SELECT c.* FROM (SELECT 1) AS one {caller}").format(caller=caller)
    public_check = (
        sql.SQL(
            "m.role IS NULL AND EXISTS"
            " (SELECT 1 FROM modules p WHERE p.org_id = o.o_id AND p.is_public)"
        )
        if public
        else sql.SQL("false")
    )
    return sql.SQL(
        "SELECT c.*, o.*, m.role, {public_check} AS has_public_modules, {limit_columns}"
        " FROM (SELECT 1) AS one {caller}"
        " LEFT JOIN LATERAL (SELECT {org_columns} FROM organizations o"
        " WHERE o.{org_by} = %(org)s{lock}) AS o ON true"
        " LEFT JOIN org_quotas q ON q.org_id = o.o_id"
        " LEFT JOIN LATERAL (SELECT m.role FROM organization_members m"
        " WHERE m.org_id = o.o_id AND m.user_id = c.u_id{lock}) AS m ON true"
    ).format(
        public_check=public_check,
        caller=caller,
        org_columns=org_columns,
        limit_columns=sql.SQL(", ").join(
            sql.SQL("q.{}").format(sql.Identifier(c)) for c in LIMIT_COLUMNS
        ),
        org_by=sql.Identifier(org_by),
        lock=lock_clause,
    )


async def resolve(
    conn: AsyncConnection,
    *,
    token_digest: bytes | None,
    org: OrgRef | None,
    lock: bool,
    public: bool,
) -> Resolved:
    """The caller (None for no or an unknown token) and the org (None when it does not exist)."""
    org_by = None if org is None else ("id" if org.id is not None else "name")
    params: dict[str, Any] = {"digest": token_digest}
    if org is not None:
        params["org"] = org.id if org.id is not None else org.name
    cur = await conn.execute(_query(org_by, lock, public), params)
    columns = [d.name for d in cur.description or ()]
    row = await cur.fetchone()
    values = dict(zip(columns, row or (), strict=True))
    principal = None
    if values.get("u_id") is not None:
        user = User(**{c: values["u_" + c] for c in _USER})
        principal = Principal(user=user, token_id=values["token_id"])
    context = None
    if values.get("o_id") is not None:
        organization = Organization(**{c: values["o_" + c] for c in _ORG})
        is_owner = principal is not None and organization.owner_id == principal.user_id
        role = Role.ADMIN if is_owner else (Role(values["role"]) if values["role"] else None)
        context = OrgContext(
            org=organization,
            role=role,
            is_owner=is_owner,
            has_public_modules=bool(values["has_public_modules"]),
            limits=QuotaLimits(**{c: values[c] for c in LIMIT_COLUMNS}),
        )
    return Resolved(principal=principal, org=context)
