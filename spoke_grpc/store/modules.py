"""Modules: one organization's named sets of proto files, and the public search across orgs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.store import returned_row
from spoke_grpc.store.visibility import Reader, readable

# Columns an update may set.
UPDATABLE = frozenset({"description", "is_public", "breaking_change_policy"})


@dataclass(frozen=True)
class Module:
    id: uuid.UUID
    org_id: uuid.UUID
    org_name: str
    name: str
    description: str
    is_public: bool
    breaking_change_policy: str
    created_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class ModuleRef:
    """A request's ``module``: an id (UUID-shaped) or a name."""

    id: uuid.UUID | None = None
    name: str | None = None


@dataclass(frozen=True)
class Dependent:
    """A version of another module that depends on one of a module's versions.

    ``visible`` when the caller may read its module (``visibility.readable``); ``total``
    and ``hidden`` count every dependent, not just this page.
    """

    org_name: str
    module_name: str
    version: str
    dependency_version: str
    visible: bool
    total: int
    hidden: int


_COLUMNS = sql.SQL(
    "m.id, m.org_id, o.name AS org_name, m.name, m.description, m.is_public,"
    " m.breaking_change_policy, m.created_by, m.created_at, m.updated_at"
)
_FROM = sql.SQL("modules m JOIN organizations o ON o.id = m.org_id")
# After ``WITH m AS (INSERT/UPDATE … RETURNING *)``: the changed row, with its org's name.
_FROM_CHANGED = sql.SQL("m JOIN organizations o ON o.id = m.org_id")


async def insert_module(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    name: str,
    description: str,
    is_public: bool,
    breaking_change_policy: str,
    created_by: uuid.UUID,
) -> Module:
    query = sql.SQL(
        "WITH m AS (INSERT INTO modules (org_id, name, description, is_public,"
        " breaking_change_policy, created_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING *)"
        " SELECT {} FROM {}"
    ).format(_COLUMNS, _FROM_CHANGED)
    try:
        async with conn.cursor(row_factory=class_row(Module)) as cur:
            await cur.execute(
                query, [org_id, name, description, is_public, breaking_change_policy, created_by]
            )
            row = await cur.fetchone()
    except UniqueViolation:
        raise AlreadyExists("module", name) from None
    return returned_row(row)


async def get_module(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    ref: ModuleRef,
    *,
    reader: Reader,
    lock: bool = False,
) -> Module | None:
    """The module, or None when it does not exist or ``reader`` may not read it.

    ``lock`` takes the row FOR UPDATE: pushes that depend on it (FOR SHARE) wait, or it
    waits for them.
    """
    column, value = ("id", ref.id) if ref.id is not None else ("name", ref.name)
    query = sql.SQL("SELECT {} FROM {} WHERE m.org_id = %s AND m.{} = %s AND {}{}").format(
        _COLUMNS,
        _FROM,
        sql.Identifier(column),
        readable(reader),
        sql.SQL(" FOR UPDATE OF m" if lock else ""),
    )
    async with conn.cursor(row_factory=class_row(Module)) as cur:
        await cur.execute(query, [org_id, value])
        return await cur.fetchone()


async def list_modules(
    conn: AsyncConnection, org_id: uuid.UUID, *, reader: Reader, page: PageRequest
) -> list[Module]:
    """The organization's modules that ``reader`` may read, by name."""
    conditions: list[sql.Composable] = [sql.SQL("m.org_id = %s"), readable(reader)]
    params: list[Any] = [org_id]
    if page.after:
        conditions.append(sql.SQL("m.name > %s"))
        params.append(page.after[0])
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY m.name LIMIT %s").format(
        _COLUMNS, _FROM, sql.SQL(" AND ").join(conditions)
    )
    async with conn.cursor(row_factory=class_row(Module)) as cur:
        await cur.execute(query, [*params, page.fetch])
        return await cur.fetchall()


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_public(conn: AsyncConnection, query: str, page: PageRequest) -> list[Module]:
    """Public modules of every organization whose name or description contains ``query``
    (case-insensitively), by module name, then organization name.

    With pg_trgm a selective match uses the trigram index (modules_public_search_idx); a
    broad one, or any without pg_trgm, walks modules_public_idx in name order (an
    incremental sort puts equal names in org order) until the page is full.
    """
    conditions: list[sql.Composable] = [sql.SQL("m.is_public")]
    params: list[Any] = []
    if query:
        conditions.append(sql.SQL("(m.name ILIKE %s OR m.description ILIKE %s)"))
        pattern = like_pattern(query)
        params += [pattern, pattern]
    if page.after:
        # The first condition lets the index start at the page; the second is exact.
        conditions.append(sql.SQL("m.name >= %s AND (m.name, o.name) > (%s, %s)"))
        params += [page.after[0], *page.after]
    statement = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY m.name, o.name LIMIT %s").format(
        _COLUMNS, _FROM, sql.SQL(" AND ").join(conditions)
    )
    async with conn.cursor(row_factory=class_row(Module)) as cur:
        await cur.execute(statement, [*params, page.fetch])
        return await cur.fetchall()


async def update_module(
    conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID, changes: Mapping[str, Any]
) -> Module | None:
    """Sets exactly the columns in ``changes`` (keys from UPDATABLE)."""
    if not changes.keys() <= UPDATABLE:
        raise ValueError(f"not updatable: {sorted(changes.keys() - UPDATABLE)}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes
    )
    query = sql.SQL(
        "WITH m AS (UPDATE modules SET {}, updated_at = now()"
        " WHERE org_id = %s AND id = %s RETURNING *) SELECT {} FROM {}"
    ).format(assignments, _COLUMNS, _FROM_CHANGED)
    async with conn.cursor(row_factory=class_row(Module)) as cur:
        await cur.execute(query, [*changes.values(), org_id, module_id])
        return await cur.fetchone()


async def delete_module(conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID) -> int:
    """Deletes the module and, through ON DELETE CASCADE, its versions, their files and their
    dependency edges; returns how many versions went with it."""
    cur = await conn.execute(
        "WITH v AS (SELECT count(*) AS n FROM module_versions WHERE org_id = %s"
        " AND module_id = %s), d AS (DELETE FROM modules WHERE org_id = %s AND id = %s)"
        " SELECT n FROM v",
        [org_id, module_id, org_id, module_id],
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def public_dependents(conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID) -> int:
    """How many versions of public modules (of any organization, other than this module)
    depend on one of this module's versions."""
    cur = await conn.execute(
        "SELECT count(*) FROM version_dependencies d"
        " JOIN module_versions v ON v.org_id = d.org_id AND v.id = d.version_id"
        " JOIN modules m ON m.org_id = v.org_id AND m.id = v.module_id"
        " WHERE d.dep_org_id = %s AND d.dep_module_id = %s AND m.is_public"
        " AND NOT (d.org_id = %s AND v.module_id = %s)",
        [org_id, module_id, org_id, module_id],
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class PrivateDependency:
    """A module that versions of a module depend on and that is not public; ``label``
    only when the reader may read it."""

    label: str | None
    versions: int


async def private_dependencies(
    conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID, *, reader: Reader
) -> list[PrivateDependency]:
    """The modules, not public now, that the module's versions depend on directly (deleted
    ones are not counted: they are gone, not private), readable ones first."""
    query = sql.SQL(
        "SELECT CASE WHEN {readable} THEN min(o.name || '/' || m.name) END AS label,"
        " count(DISTINCT d.version_id) AS versions"
        " FROM version_dependencies d"
        " JOIN module_versions v ON v.org_id = d.org_id AND v.id = d.version_id"
        " JOIN modules m ON m.org_id = d.dep_org_id AND m.id = d.dep_module_id"
        " JOIN organizations o ON o.id = m.org_id"
        " WHERE d.org_id = %s AND v.module_id = %s AND NOT m.is_public"
        " GROUP BY m.org_id, m.id, m.is_public ORDER BY 1 NULLS LAST"
    ).format(readable=readable(reader))
    async with conn.cursor(row_factory=class_row(PrivateDependency)) as cur:
        await cur.execute(query, [org_id, module_id])
        return await cur.fetchall()


async def lock_for_push(
    conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID
) -> bool | None:
    """Whether the module is public, read under FOR KEY SHARE (which the version's foreign
    key takes at its insert anyway): an UpdateModule or DeleteModule of it (FOR UPDATE)
    waits for the push to commit, or the push waits for it and reads what it wrote. None
    when the module is gone (deleted while the push compiled)."""
    cur = await conn.execute(
        "SELECT is_public FROM modules WHERE org_id = %s AND id = %s FOR KEY SHARE",
        [org_id, module_id],
    )
    row = await cur.fetchone()
    return None if row is None else bool(row[0])


async def dependents(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    module_id: uuid.UUID,
    *,
    reader: Reader,
    limit: int,
) -> list[Dependent]:
    """Versions of other modules that depend on this module's versions, those ``reader``
    may read first, by org, module and version."""
    query = sql.SQL("""
        WITH found AS (
            SELECT o.name AS org_name, m.name AS module_name, v.version,
                   d.dep_version AS dependency_version, {readable} AS visible
            FROM version_dependencies d
            JOIN module_versions v ON v.org_id = d.org_id AND v.id = d.version_id
            JOIN modules m ON m.org_id = v.org_id AND m.id = v.module_id
            JOIN organizations o ON o.id = d.org_id
            WHERE d.dep_org_id = %(org)s AND d.dep_module_id = %(module)s
              AND NOT (d.org_id = %(org)s AND v.module_id = %(module)s)
        )
        SELECT org_name, module_name, version, dependency_version, visible,
               count(*) OVER () AS total, count(*) FILTER (WHERE NOT visible) OVER () AS hidden
        FROM found
        ORDER BY visible DESC, org_name, module_name, version
        LIMIT %(limit)s
    """).format(readable=readable(reader))
    params = {"org": org_id, "module": module_id, "limit": limit}
    async with conn.cursor(row_factory=class_row(Dependent)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()
