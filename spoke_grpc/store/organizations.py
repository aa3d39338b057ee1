"""Organizations and their membership rows."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.store import returned_row
from spoke_grpc.types import Organization

_COLUMNS = sql.SQL(
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
) -> Organization:
    try:
        async with conn.cursor(row_factory=class_row(Organization)) as cur:
            await cur.execute(
                sql.SQL(
                    "INSERT INTO organizations AS o (name, display_name, description, owner_id,"
                    " quota_tier, settings) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {}"
                ).format(_COLUMNS),
                [name, display_name, description, owner_id, quota_tier, Jsonb(dict(settings))],
            )
            row = await cur.fetchone()
    except UniqueViolation:
        raise AlreadyExists("organization", name) from None
    return returned_row(row)


async def get_org(
    conn: AsyncConnection, org_id: uuid.UUID, *, lock: bool = False
) -> Organization | None:
    """The organization; ``lock`` takes FOR UPDATE, which waits for in-flight writes to it."""
    query = sql.SQL("SELECT {} FROM organizations o WHERE o.id = %s{}").format(
        _COLUMNS, sql.SQL(" FOR UPDATE" if lock else "")
    )
    async with conn.cursor(row_factory=class_row(Organization)) as cur:
        await cur.execute(query, [org_id])
        return await cur.fetchone()


async def list_orgs(
    conn: AsyncConnection, member_id: uuid.UUID | None, page: PageRequest
) -> list[Organization]:
    """Organizations by name: those ``member_id`` belongs to, or all when it is None."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if member_id is not None:
        conditions.append(
            sql.SQL(
                "EXISTS (SELECT 1 FROM organization_members m"
                " WHERE m.org_id = o.id AND m.user_id = %s)"
            )
        )
        params.append(member_id)
    if page.after:
        conditions.append(sql.SQL("o.name > %s"))
        params.append(page.after[0])
    query = sql.SQL("SELECT {} FROM organizations o WHERE {} ORDER BY o.name LIMIT %s").format(
        _COLUMNS, sql.SQL(" AND ").join(conditions)
    )
    async with conn.cursor(row_factory=class_row(Organization)) as cur:
        await cur.execute(query, [*params, page.fetch])
        return await cur.fetchall()


async def update_org(
    conn: AsyncConnection, org_id: uuid.UUID, changes: Mapping[str, Any]
) -> Organization | None:
    """Sets exactly the columns in ``changes`` (keys from UPDATABLE)."""
    if not changes.keys() <= UPDATABLE:
        raise ValueError(f"not updatable: {sorted(changes.keys() - UPDATABLE)}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes
    )
    values = [Jsonb(v) if column == "settings" else v for column, v in changes.items()]
    query = sql.SQL(
        "UPDATE organizations o SET {}, updated_at = now() WHERE o.id = %s RETURNING {}"
    ).format(assignments, _COLUMNS)
    async with conn.cursor(row_factory=class_row(Organization)) as cur:
        await cur.execute(query, [*values, org_id])
        return await cur.fetchone()


async def count_modules(conn: AsyncConnection, org_id: uuid.UUID) -> int:
    cur = await conn.execute("SELECT count(*) FROM modules WHERE org_id = %s", [org_id])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def count_owned(conn: AsyncConnection, owner_id: uuid.UUID) -> int:
    """The organizations ``owner_id`` owns now (deleted ones are gone: they do not count)."""
    cur = await conn.execute("SELECT count(*) FROM organizations WHERE owner_id = %s", [owner_id])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def delete_org(conn: AsyncConnection, org_id: uuid.UUID) -> bool:
    """Deletes the organization and, through ON DELETE CASCADE, everything it owns."""
    cur = await conn.execute("DELETE FROM organizations WHERE id = %s", [org_id])
    return cur.rowcount == 1
