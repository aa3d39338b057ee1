"""Organizations and the membership rows the org context needs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.types import Role


@dataclass(frozen=True)
class OrgRow:
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
class OrgAccessRow:
    """An organization with the caller's role in it (None when not a member)."""

    id: uuid.UUID
    name: str
    status: str
    quota_tier: str
    owner_id: uuid.UUID
    role: str | None


_COLUMNS = (
    "o.id, o.name, o.display_name, o.description, o.owner_id, o.quota_tier, o.status,"
    " o.settings, o.created_at, o.updated_at"
)
# Columns an update may set.
UPDATABLE = frozenset({"display_name", "description", "settings", "quota_tier", "status"})


async def insert_org(
    conn: AsyncConnection,
    *,
    name: str,
    display_name: str,
    description: str,
    owner_id: uuid.UUID,
    quota_tier: str,
    settings: Mapping[str, str],
) -> OrgRow:
    try:
        async with conn.cursor(row_factory=class_row(OrgRow)) as cur:
            await cur.execute(
                "INSERT INTO organizations AS o (name, display_name, description, owner_id,"
                " quota_tier, settings) VALUES (%s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                [name, display_name, description, owner_id, quota_tier, Jsonb(dict(settings))],
            )
            row = await cur.fetchone()
    except UniqueViolation:
        raise AlreadyExists("organization", name) from None
    assert row is not None
    return row


async def insert_member(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    role: Role,
    invited_by: uuid.UUID | None,
) -> None:
    await conn.execute(
        "INSERT INTO organization_members (org_id, user_id, role, invited_by)"
        " VALUES (%s, %s, %s, %s)",
        [org_id, user_id, role.value, invited_by],
    )


async def access_by_id(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID | None
) -> OrgAccessRow | None:
    return await _access(conn, "o.id = %s", org_id, user_id)


async def access_by_name(
    conn: AsyncConnection, name: str, user_id: uuid.UUID | None
) -> OrgAccessRow | None:
    return await _access(conn, "o.name = %s", name, user_id)


async def _access(
    conn: AsyncConnection, where: str, ref: Any, user_id: uuid.UUID | None
) -> OrgAccessRow | None:
    async with conn.cursor(row_factory=class_row(OrgAccessRow)) as cur:
        await cur.execute(
            "SELECT o.id, o.name, o.status, o.quota_tier, o.owner_id, m.role"
            " FROM organizations o LEFT JOIN organization_members m"
            " ON m.org_id = o.id AND m.user_id = %s"
            f" WHERE {where}",
            [user_id, ref],
        )
        return await cur.fetchone()


async def get_org(conn: AsyncConnection, org_id: uuid.UUID, *, lock: bool = False) -> OrgRow | None:
    suffix = " FOR UPDATE" if lock else ""
    async with conn.cursor(row_factory=class_row(OrgRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM organizations o WHERE o.id = %s{suffix}", [org_id]
        )
        return await cur.fetchone()


async def list_orgs(
    conn: AsyncConnection, member_id: uuid.UUID | None, page: PageRequest
) -> list[OrgRow]:
    """Organizations by name: those ``member_id`` belongs to, or all when it is None."""
    conditions: list[str] = []
    params: list[Any] = []
    if member_id is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM organization_members m WHERE m.org_id = o.id AND m.user_id = %s)"
        )
        params.append(member_id)
    if page.after:
        conditions.append("o.name > %s")
        params.append(page.after[0])
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    async with conn.cursor(row_factory=class_row(OrgRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM organizations o {where} ORDER BY o.name LIMIT %s",
            [*params, page.fetch],
        )
        return await cur.fetchall()


async def update_org(
    conn: AsyncConnection, org_id: uuid.UUID, changes: Mapping[str, Any]
) -> OrgRow | None:
    """Sets exactly the columns in ``changes`` (keys from UPDATABLE)."""
    if not changes.keys() <= UPDATABLE:
        raise ValueError(f"not updatable: {sorted(changes.keys() - UPDATABLE)}")
    assignments = ", ".join(f"{column} = %s" for column in changes)
    values = [Jsonb(v) if column == "settings" else v for column, v in changes.items()]
    async with conn.cursor(row_factory=class_row(OrgRow)) as cur:
        await cur.execute(
            f"UPDATE organizations o SET {assignments}, updated_at = now()"
            f" WHERE o.id = %s RETURNING {_COLUMNS}",
            [*values, org_id],
        )
        return await cur.fetchone()


async def count_modules(conn: AsyncConnection, org_id: uuid.UUID) -> int:
    cur = await conn.execute("SELECT count(*) FROM modules WHERE org_id = %s", [org_id])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def delete_org(conn: AsyncConnection, org_id: uuid.UUID) -> bool:
    """Deletes the organization and, through ON DELETE CASCADE, everything it owns."""
    cur = await conn.execute("DELETE FROM organizations WHERE id = %s", [org_id])
    return cur.rowcount == 1
