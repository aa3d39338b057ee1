"""Versions: immutable snapshots of a module's files, and the dependency edges between them.

A version's dependencies point at versions of any organization (its own, or public modules
of others), so ``version_dependencies`` has no foreign key to them: the edge keeps the names
it was pushed with, and a dependency deleted later (``force``) shows as ``deleted``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from psycopg import AsyncConnection, sql
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.store import returned_row
from spoke_grpc.store.visibility import Reader, readable, sees_private

_VERSION_KEY = re.compile(r"^v|\+.*$")


def version_key(version: str) -> str:
    """What makes a version unique in its module: no leading ``v``, no build metadata
    (the stored ``module_versions.version_key`` column computes the same)."""
    return _VERSION_KEY.sub("", version)


@dataclass(frozen=True)
class Version:
    id: uuid.UUID
    org_id: uuid.UUID
    module_id: uuid.UUID
    version: str
    size_bytes: int
    digest: str
    source_repository: str
    source_commit_sha: str
    source_branch: str
    created_by: uuid.UUID | None
    created_at: dt.datetime


@dataclass(frozen=True)
class File:
    version_id: uuid.UUID
    path: str
    content: str
    size_bytes: int


@dataclass(frozen=True)
class Edge:
    """A direct dependency as pushed; ``deleted`` when its target is gone. ``shown`` when
    the reader may learn of it: its target's module is readable (``visibility``), or it
    was deleted and the reader sees the dependent's organization's private modules (who
    pushed it knew the name; nobody else learns it)."""

    version_id: uuid.UUID
    position: int
    dep_org_id: uuid.UUID
    dep_module_id: uuid.UUID
    dep_version_id: uuid.UUID
    dep_org_name: str
    dep_module_name: str
    dep_version: str
    deleted: bool
    shown: bool = True

    @property
    def label(self) -> str:
        return f"{self.dep_org_name}/{self.dep_module_name}@{self.dep_version}"


@dataclass(frozen=True)
class Requested:
    """One requested dependency: ids where the request gave ids, names otherwise."""

    org_id: uuid.UUID | None
    org_name: str | None
    module_id: uuid.UUID | None
    module_name: str | None
    version: str


@dataclass(frozen=True)
class Resolved:
    """A requested dependency found, readable by the pusher and usable by the dependent's
    organization (its own module, or a public one)."""

    position: int
    org_id: uuid.UUID
    org_name: str
    module_id: uuid.UUID
    module_name: str
    version_id: uuid.UUID
    version: str
    is_public: bool = True

    @property
    def label(self) -> str:
        return f"{self.org_name}/{self.module_name}@{self.version}"


@dataclass(frozen=True)
class Reached:
    """A version in a dependency closure as far as the reader may read it.

    ``present`` is False when it was deleted (``digest`` then None); ``readable`` False
    when its module is private to the reader (the closure stops there: nothing past it is
    reached); ``named`` when the reader may learn its ``label``: a readable version, or a
    deleted one that a version of an organization the reader sees privately recorded.
    """

    org_id: uuid.UUID
    version_id: uuid.UUID
    label: str
    present: bool
    readable: bool
    named: bool
    public: bool
    size_bytes: int
    digest: str | None = None


_COLUMNS = sql.SQL(
    "v.id, v.org_id, v.module_id, v.version, v.size_bytes, v.digest, v.source_repository,"
    " v.source_commit_sha, v.source_branch, v.created_by, v.created_at"
)


async def exists(conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID, key: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM module_versions WHERE org_id = %s AND module_id = %s AND version_key = %s",
        [org_id, module_id, key],
    )
    return await cur.fetchone() is not None


async def get_version(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    module_id: uuid.UUID,
    *,
    version_id: uuid.UUID | None = None,
    key: str | None = None,
) -> Version | None:
    """The version by id or by ``version_key``."""
    column, value = ("id", version_id) if version_id is not None else ("version_key", key)
    query = sql.SQL(
        "SELECT {} FROM module_versions v WHERE v.org_id = %s AND v.module_id = %s AND v.{} = %s"
    ).format(_COLUMNS, sql.Identifier(column))
    async with conn.cursor(row_factory=class_row(Version)) as cur:
        await cur.execute(query, [org_id, module_id, value])
        return await cur.fetchone()


async def list_versions(
    conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID, page: PageRequest
) -> list[Version]:
    """The module's versions, newest first."""
    conditions: list[sql.Composable] = [sql.SQL("v.org_id = %s AND v.module_id = %s")]
    params: list[object] = [org_id, module_id]
    if page.after:
        conditions.append(sql.SQL("(v.created_at, v.id) < (%s, %s)"))
        params += page.after
    query = sql.SQL(
        "SELECT {} FROM module_versions v WHERE {} ORDER BY v.created_at DESC, v.id DESC LIMIT %s"
    ).format(_COLUMNS, sql.SQL(" AND ").join(conditions))
    async with conn.cursor(row_factory=class_row(Version)) as cur:
        await cur.execute(query, [*params, page.fetch])
        return await cur.fetchall()


async def files_of(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    version_ids: Sequence[uuid.UUID],
    *,
    contents: bool,
) -> dict[uuid.UUID, list[File]]:
    """Each version's files by path (bytewise); contents empty unless ``contents``."""
    query = sql.SQL(
        "SELECT version_id, path, {} AS content, size_bytes FROM version_files"
        ' WHERE org_id = %s AND version_id = ANY(%s) ORDER BY version_id, path COLLATE "C"'
    ).format(sql.SQL("content") if contents else sql.SQL("''"))
    found: dict[uuid.UUID, list[File]] = defaultdict(list)
    async with conn.cursor(row_factory=class_row(File)) as cur:
        await cur.execute(query, [org_id, list(version_ids)])
        for row in await cur.fetchall():
            found[row.version_id].append(row)
    return found


async def edges_of(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    version_ids: Sequence[uuid.UUID],
    *,
    reader: Reader,
) -> dict[uuid.UUID, list[Edge]]:
    """Each version's direct dependencies, in the order they were pushed, each ``shown``
    or not to ``reader``."""
    query = sql.SQL(
        "SELECT d.version_id, d.position, d.dep_org_id, d.dep_module_id, d.dep_version_id,"
        " d.dep_org_name, d.dep_module_name, d.dep_version, t.id IS NULL AS deleted,"
        " CASE WHEN t.id IS NULL THEN {recorder} ELSE {readable} END AS shown"
        " FROM version_dependencies d"
        " LEFT JOIN module_versions t ON t.org_id = d.dep_org_id AND t.id = d.dep_version_id"
        " LEFT JOIN modules m ON m.org_id = t.org_id AND m.id = t.module_id"
        " WHERE d.org_id = %s AND d.version_id = ANY(%s)"
        " ORDER BY d.version_id, d.position"
    ).format(
        recorder=sees_private(reader, sql.Identifier("d", "org_id")),
        readable=readable(reader),
    )
    found: dict[uuid.UUID, list[Edge]] = defaultdict(list)
    async with conn.cursor(row_factory=class_row(Edge)) as cur:
        await cur.execute(query, [org_id, list(version_ids)])
        for row in await cur.fetchall():
            found[row.version_id].append(row)
    return found


async def resolve(
    conn: AsyncConnection,
    requested: Sequence[Requested],
    *,
    org_id: uuid.UUID,
    reader: Reader,
    lock: bool = False,
) -> list[Resolved]:
    """The requested versions that exist, that ``reader`` (the pusher) may read and that
    ``org_id`` may depend on (its own modules', and public modules' of other
    organizations), by position in ``requested``.

    With ``lock``, the modules are locked FOR SHARE until the push commits: deleting one of
    them, or making it private, waits for the push, then sees its edge (and a push that
    comes second waits, then sees the module gone or private). A push resolves without the
    lock before it compiles and with it after, so that it never holds other organizations'
    rows while protoc runs.
    """
    if not requested:
        return []
    query = sql.SQL("""
        SELECT r.position, o.id AS org_id, o.name AS org_name, m.id AS module_id,
               m.name AS module_name, v.id AS version_id, v.version, m.is_public
        FROM unnest(%(org_ids)s::uuid[], %(org_names)s::text[], %(module_ids)s::uuid[],
                    %(module_names)s::text[], %(keys)s::text[])
             WITH ORDINALITY AS r(org_id, org_name, module_id, module_name, key, position)
        JOIN organizations o ON (o.id = r.org_id OR o.name = r.org_name)
        JOIN modules m ON m.org_id = o.id AND (m.id = r.module_id OR m.name = r.module_name)
        JOIN module_versions v
             ON v.org_id = m.org_id AND v.module_id = m.id AND v.version_key = r.key
        WHERE (m.org_id = %(org)s OR m.is_public) AND {readable}
        ORDER BY r.position
        {lock}
    """).format(readable=readable(reader), lock=sql.SQL("FOR SHARE OF m" if lock else ""))
    params = {
        "org_ids": [r.org_id for r in requested],
        "org_names": [r.org_name for r in requested],
        "module_ids": [r.module_id for r in requested],
        "module_names": [r.module_name for r in requested],
        "keys": [version_key(r.version) for r in requested],
        "org": org_id,
    }
    async with conn.cursor(row_factory=class_row(Resolved)) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    # WITH ORDINALITY counts from 1.
    return [replace(row, position=row.position - 1) for row in rows]


async def closure(
    conn: AsyncConnection, roots: Sequence[Resolved], *, recorder: uuid.UUID, reader: Reader
) -> list[Reached]:
    """Every version ``roots`` (the direct dependencies of a version of the organization
    ``recorder``) depend on, transitively, the roots included, as far as ``reader`` may
    read: an unreadable version is reached (flagged) but not walked past, so nothing of
    what lies behind it, not even its name, comes back. One row per version."""
    query = sql.SQL("""
        WITH RECURSIVE reached(org_id, version_id, label, recorder) AS (
            SELECT r.org_id, r.version_id, r.label COLLATE "C", %s::uuid
            FROM unnest(%s::uuid[], %s::uuid[], %s::text[]) AS r(org_id, version_id, label)
            UNION
            SELECT d.dep_org_id, d.dep_version_id,
                   d.dep_org_name || '/' || d.dep_module_name || '@' || d.dep_version, d.org_id
            FROM reached r
            JOIN version_dependencies d ON d.org_id = r.org_id AND d.version_id = r.version_id
            JOIN module_versions rv ON rv.org_id = r.org_id AND rv.id = r.version_id
            JOIN modules m ON m.org_id = rv.org_id AND m.id = rv.module_id
            WHERE {walk}
        )
        SELECT r.org_id, r.version_id, min(r.label) AS label, bool_or(v.id IS NOT NULL) AS present,
               bool_or(v.id IS NOT NULL AND {readable}) AS readable,
               bool_or(CASE WHEN v.id IS NULL THEN {recorded} ELSE {readable} END) AS named,
               bool_or(coalesce(m.is_public, false)) AS public,
               coalesce(max(v.size_bytes), 0) AS size_bytes, max(v.digest) AS digest
        FROM reached r
        LEFT JOIN module_versions v ON v.org_id = r.org_id AND v.id = r.version_id
        LEFT JOIN modules m ON m.org_id = v.org_id AND m.id = v.module_id
        GROUP BY r.org_id, r.version_id
        ORDER BY label
    """).format(
        walk=readable(reader),
        readable=readable(reader),
        recorded=sees_private(reader, sql.Identifier("r", "recorder")),
    )
    params = [
        recorder,
        [r.org_id for r in roots],
        [r.version_id for r in roots],
        [r.label for r in roots],
    ]
    async with conn.cursor(row_factory=class_row(Reached)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


@dataclass(frozen=True)
class GraphEdge:
    """A direct dependency in a version's closure, with what its target is now: ``present``
    (False once deleted), ``is_public`` and ``readable`` (``visibility.readable``); ``shown``
    as ``Edge.shown``."""

    org_id: uuid.UUID
    version_id: uuid.UUID
    position: int
    dep_org_id: uuid.UUID
    dep_version_id: uuid.UUID
    dep_org_name: str
    dep_module_name: str
    dep_version: str
    present: bool
    is_public: bool
    readable: bool
    shown: bool

    @property
    def label(self) -> str:
        return f"{self.dep_org_name}/{self.dep_module_name}@{self.dep_version}"


async def graph_edges(
    conn: AsyncConnection, org_id: uuid.UUID, version_id: uuid.UUID, *, reader: Reader
) -> list[GraphEdge]:
    """Every direct dependency of the version's closure as far as ``reader`` may read (the
    walk stops at a version it may not read; edges out of deleted versions are gone with
    them), by dependent and position."""
    query = sql.SQL("""
        WITH RECURSIVE reached(org_id, version_id) AS (
            SELECT %(org)s::uuid, %(version)s::uuid
            UNION
            SELECT d.dep_org_id, d.dep_version_id
            FROM reached r
            JOIN version_dependencies d ON d.org_id = r.org_id AND d.version_id = r.version_id
            JOIN module_versions t ON t.org_id = d.dep_org_id AND t.id = d.dep_version_id
            JOIN modules m ON m.org_id = t.org_id AND m.id = t.module_id
            WHERE {readable}
        )
        SELECT d.org_id, d.version_id, d.position, d.dep_org_id, d.dep_version_id,
               d.dep_org_name, d.dep_module_name, d.dep_version,
               v.id IS NOT NULL AS present, coalesce(m.is_public, false) AS is_public,
               v.id IS NOT NULL AND {readable} AS readable,
               CASE WHEN v.id IS NULL THEN {recorder} ELSE {readable} END AS shown
        FROM reached r
        JOIN version_dependencies d ON d.org_id = r.org_id AND d.version_id = r.version_id
        LEFT JOIN module_versions v ON v.org_id = d.dep_org_id AND v.id = d.dep_version_id
        LEFT JOIN modules m ON m.org_id = v.org_id AND m.id = v.module_id
        ORDER BY d.org_id, d.version_id, d.position
    """).format(
        readable=readable(reader), recorder=sees_private(reader, sql.Identifier("d", "org_id"))
    )
    params = {"org": org_id, "version": version_id}
    async with conn.cursor(row_factory=class_row(GraphEdge)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def version_strings(
    conn: AsyncConnection, org_id: uuid.UUID, module_id: uuid.UUID
) -> list[tuple[uuid.UUID, str]]:
    """Every version of the module, as ``(id, version)``, in no particular order."""
    cur = await conn.execute(
        "SELECT id, version FROM module_versions WHERE org_id = %s AND module_id = %s",
        [org_id, module_id],
    )
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def closure_files(
    conn: AsyncConnection, versions: Sequence[Reached]
) -> dict[uuid.UUID, list[File]]:
    """The files (with contents) of versions of any organizations."""
    found: dict[uuid.UUID, list[File]] = defaultdict(list)
    async with conn.cursor(row_factory=class_row(File)) as cur:
        await cur.execute(
            "SELECT f.version_id, f.path, f.content, f.size_bytes FROM version_files f"
            " JOIN unnest(%s::uuid[], %s::uuid[]) AS c(org_id, version_id)"
            " ON f.org_id = c.org_id AND f.version_id = c.version_id",
            [[v.org_id for v in versions], [v.version_id for v in versions]],
        )
        for row in await cur.fetchall():
            found[row.version_id].append(row)
    return found


@dataclass(frozen=True)
class NewFile:
    path: str
    content: str
    size_bytes: int


async def insert_version(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    module_id: uuid.UUID,
    module_name: str,
    version: str,
    files: Sequence[NewFile],
    dependencies: Sequence[Resolved],
    digest: str,
    source: tuple[str, str, str],
    created_by: uuid.UUID,
) -> Version:
    """Inserts the version, its files and its edges; ALREADY_EXISTS when the module has it."""
    query = sql.SQL(
        "INSERT INTO module_versions AS v (org_id, module_id, version, size_bytes, digest,"
        " source_repository, source_commit_sha, source_branch, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
    ).format(_COLUMNS)
    size = sum(f.size_bytes for f in files)
    try:
        async with conn.cursor(row_factory=class_row(Version)) as cur:
            await cur.execute(
                query, [org_id, module_id, version, size, digest, *source, created_by]
            )
            row = returned_row(await cur.fetchone())
    except UniqueViolation:
        raise AlreadyExists("version", f"{module_name}@{version}") from None
    await conn.execute(
        "INSERT INTO version_files (org_id, version_id, path, content, size_bytes)"
        " SELECT %s, %s, f.path, f.content, f.size_bytes"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS f(path, content, size_bytes)",
        [
            org_id,
            row.id,
            [f.path for f in files],
            [f.content for f in files],
            [f.size_bytes for f in files],
        ],
    )
    if dependencies:
        await conn.execute(
            "INSERT INTO version_dependencies (org_id, version_id, position, dep_org_id,"
            " dep_module_id, dep_version_id, dep_org_name, dep_module_name, dep_version)"
            " SELECT %s, %s, d.* FROM unnest(%s::int[], %s::uuid[], %s::uuid[], %s::uuid[],"
            " %s::text[], %s::text[], %s::text[]) AS d",
            [
                org_id,
                row.id,
                list(range(len(dependencies))),
                [d.org_id for d in dependencies],
                [d.module_id for d in dependencies],
                [d.version_id for d in dependencies],
                [d.org_name for d in dependencies],
                [d.module_name for d in dependencies],
                [d.version for d in dependencies],
            ],
        )
    return row
