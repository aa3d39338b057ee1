"""Modules and their versions: create, read, update by mask, delete, push.

Visibility (SPEC §3) is one rule, ``spoke_grpc.store.visibility``, that every read below
composes for its ``Reader``: a module it may not read raises exactly the NotFound of a
missing one, and a dependency it may not read is left out, or refused as
DEPENDENCY_NOT_VISIBLE where leaving it out would change the answer (a compile).
Publication: a public module's versions depend only on public modules (a push that breaks
it, or making the module public while it does, is FAILED_PRECONDITION), and a module that
public modules depend on stays public unless an admin forces it private.

A module may be changed by its creator (a developer), an organization admin or owner, or a
platform admin. A pushed version is validated (semantic version, files,
dependencies), compiled together with its dependencies' files, transitively, checked for
breaking changes against the module's highest version when its policy is REJECT
(``spoke_grpc.domain.compilation``), then stored with its digest; every change writes its
audit event in the call's transaction.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import AsyncConnection

from spoke_grpc.compile_queue import Requester
from spoke_grpc.compiler import Compiler, DependencyFiles, SourceFile
from spoke_grpc.domain import compilation, events, quotas, usage_alerts
from spoke_grpc.domain.events import EventType
from spoke_grpc.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
)
from spoke_grpc.store import audit
from spoke_grpc.store import modules as store
from spoke_grpc.store import versions as version_store
from spoke_grpc.store.modules import Module, ModuleRef
from spoke_grpc.store.versions import Edge, File, NewFile, Reached, Requested, Resolved, Version
from spoke_grpc.store.visibility import Reader
from spoke_grpc.types import OrgContext, Principal, Role
from spoke_grpc.validation import MAX_DESCRIPTION, Violations, parse_uuid

MAX_FILES = 200
MAX_FILE_BYTES = 2**20
MAX_VERSION_BYTES = 8 * 2**20
MAX_PATH = 512
MAX_DEPENDENCIES = 50
# What a push may bring in through its dependencies, transitively.
MAX_CLOSURE_VERSIONS = 500
MAX_CLOSURE_BYTES = 64 * 2**20
MAX_VERSION = 128
MAX_MODULE_REF = 64
MAX_QUERY = 200
MAX_REPOSITORY = 500
MAX_BRANCH = 255
# Dependents named in the error that refuses a delete.
NAMED_DEPENDENTS = 5
# What one ListVersions page may spend on file listings (responses are capped at 16 MiB).
LIST_BUDGET_BYTES = 4 * 2**20
_LISTED_FILE_OVERHEAD = 32

_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRERELEASE_PART = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_RE = re.compile(
    rf"v?{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRERELEASE_PART}(?:\.{_PRERELEASE_PART})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{7,64}")
_RESERVED_PREFIX = "google/protobuf/"
_SEMVER_HINT = "must be a semantic version such as v1.2.3, 1.2.3-rc.1 or 1.2.3+build.7"


class BreakingChangePolicy(enum.StrEnum):
    """Stored as these strings; the proto enum is ``BREAKING_CHANGE_POLICY_<NAME>``."""

    ALLOW = "allow"
    REJECT = "reject"


@dataclass(frozen=True)
class NewModule:
    name: str
    description: str = ""
    is_public: bool = False
    breaking_change_policy: BreakingChangePolicy = BreakingChangePolicy.ALLOW


@dataclass(frozen=True)
class ModuleUpdate:
    """New values for exactly the listed fields; a field not present is never touched.
    ``force`` makes a module private although public modules depend on it (admins)."""

    description: str | None = None
    is_public: bool | None = None
    breaking_change_policy: BreakingChangePolicy | None = None
    force: bool = False

    def changes(self) -> dict[str, object]:
        values: dict[str, object | None] = {
            "description": self.description,
            "is_public": self.is_public,
            "breaking_change_policy": (
                self.breaking_change_policy.value if self.breaking_change_policy else None
            ),
        }
        return {column: value for column, value in values.items() if value is not None}


@dataclass(frozen=True)
class DependencyRef:
    org: str
    module: str
    version: str


@dataclass(frozen=True)
class Source:
    repository: str = ""
    commit_sha: str = ""
    branch: str = ""


@dataclass(frozen=True)
class NewVersion:
    version: str
    files: Sequence[SourceFile]
    dependencies: Sequence[DependencyRef] = ()
    source: Source = field(default_factory=Source)


@dataclass(frozen=True)
class VersionView:
    """A version with its module, its files (contents only where asked for) and its edges;
    ``orgs``: the organizations what the reader sees of it was decided from (its own, and
    every dependency's, shown or not), where ``get_version`` made it."""

    module: Module
    version: Version
    files: Sequence[File]
    dependencies: Sequence[Edge]
    orgs: frozenset[uuid.UUID] = frozenset()


# --- Modules ---------------------------------------------------------------------------------


def parse_module_ref(value: str, field_name: str = "module") -> ModuleRef:
    """The request's ``module``: an id or a name. Too long to be either: NOT_FOUND."""
    if not value:
        raise InvalidArgument.field(field_name, "required: the module's id or name")
    if len(value) > MAX_MODULE_REF:
        raise NotFound("module", value[:MAX_MODULE_REF] + "…")
    module_id = parse_uuid(value)
    return ModuleRef(id=module_id) if module_id is not None else ModuleRef(name=value)


async def create_module(
    conn: AsyncConnection, org: OrgContext, new: NewModule, *, principal: Principal, method: str
) -> Module:
    violations = Violations()
    violations.slug("name", new.name, kind="module")
    violations.text("description", new.description, max_length=MAX_DESCRIPTION)
    violations.raise_if_any()
    await quotas.reserve_module(conn, org)
    module = await store.insert_module(
        conn,
        org_id=org.id,
        name=new.name,
        description=new.description,
        is_public=new.is_public,
        breaking_change_policy=new.breaking_change_policy.value,
        created_by=principal.user_id,
    )
    await quotas.record_gauges(conn, org)
    await _audit(conn, method, principal, org, _target(org, module))
    await usage_alerts.check_allocations(conn, org)
    await _emit(conn, org, EventType.MODULE_CREATED, module, principal)
    return module


async def get_module(
    conn: AsyncConnection, org: OrgContext, ref: str, *, reader: Reader, lock: bool = False
) -> Module:
    """The module; NOT_FOUND, with one message, when it is missing or hidden from the reader."""
    parsed = parse_module_ref(ref)
    module = await store.get_module(conn, org.id, parsed, reader=reader, lock=lock)
    if module is None:
        raise NotFound("module", ref)
    return module


async def update_module(
    conn: AsyncConnection,
    org: OrgContext,
    ref: str,
    update: ModuleUpdate,
    *,
    principal: Principal,
    method: str,
) -> Module:
    violations = Violations()
    if update.description is not None:
        violations.text("update.description", update.description, max_length=MAX_DESCRIPTION)
    violations.raise_if_any()
    reader = Reader.of(principal)
    module = await get_module(conn, org, ref, reader=reader, lock=True)
    _check_may_change(org, principal, module, "UpdateModule")
    if update.is_public is True and not module.is_public:
        await _refuse_private_dependencies(conn, org, module, reader)
    if update.is_public is False and module.is_public:
        await _refuse_public_dependents(conn, org, module, principal, force=update.force)
    changes = update.changes()
    row = await store.update_module(conn, org.id, module.id, changes)
    if row is None:
        raise NotFound("module", ref)
    await _audit(
        conn, method, principal, org, f"{_target(org, module)}:{','.join(sorted(changes))}"
    )
    await _emit(conn, org, EventType.MODULE_UPDATED, row, principal, {"changed": sorted(changes)})
    return row


async def delete_module(
    conn: AsyncConnection,
    org: OrgContext,
    ref: str,
    *,
    force: bool,
    principal: Principal,
    method: str,
) -> None:
    """Deletes the module with its versions. Refused while versions of other modules depend
    on its versions, unless an admin forces it (the dependents then show them ``deleted``)."""
    # FOR UPDATE: a push that depends on this module (FOR SHARE) either commits first, and
    # its edge is seen below, or waits and then finds the module gone.
    reader = Reader.of(principal)
    module = await get_module(conn, org, ref, reader=reader, lock=True)
    _check_may_change(org, principal, module, "DeleteModule")
    found = await store.dependents(conn, org.id, module.id, reader=reader, limit=NAMED_DEPENDENTS)
    if found and not force:
        raise FailedPrecondition(
            PreconditionViolation(
                type="MODULE_HAS_DEPENDENTS",
                subject=_target(org, module),
                description=_dependents_text(module, found)
                + "; delete those versions' modules first, or have an admin pass force=true",
            )
        )
    if found and not _is_admin(org, principal):
        raise PermissionDenied(
            f"deleting module {module.name!r} while other modules depend on it (force) needs"
            f" the admin role in organization {org.name!r}"
        )
    versions = await store.delete_module(conn, org.id, module.id)
    await quotas.record_gauges(conn, org)
    note = f" (force, {found[0].total} dependents)" if found else ""
    await _audit(
        conn, method, principal, org, f"{_target(org, module)} ({versions} versions){note}"
    )
    await _emit(conn, org, EventType.MODULE_DELETED, module, principal, {"versions": versions})


async def _refuse_private_dependencies(
    conn: AsyncConnection, org: OrgContext, module: Module, reader: Reader
) -> None:
    """A module becomes public only while every version of it depends on public modules
    alone (deleted dependencies aside): otherwise outsiders could read it and not what it
    needs."""
    found = await store.private_dependencies(conn, org.id, module.id, reader=reader)
    if not found:
        return
    named = [d.label for d in found if d.label is not None]
    versions = sum(d.versions for d in found)
    which = f": {', '.join(named[:NAMED_DEPENDENTS])}" if named else ""
    hidden = len(found) - len(named)
    if hidden:
        which += f"{' and' if named else ':'} {hidden} you cannot read"
    raise FailedPrecondition(
        PreconditionViolation(
            type="DEPENDENCY_NOT_PUBLIC",
            subject=_target(org, module),
            description=(
                f"module {module.name!r} cannot be made public: its versions depend"
                f" ({versions} dependency edge(s)) on {len(found)} module(s) that are not"
                f" public{which}; a public module's versions may depend only on public"
                " modules, so make those public first"
            ),
        )
    )


async def _refuse_public_dependents(
    conn: AsyncConnection, org: OrgContext, module: Module, principal: Principal, *, force: bool
) -> None:
    """A module that versions of public modules depend on stays public, unless an admin
    forces it private: those dependents then compile for outsiders only as far as they
    can read (DEPENDENCY_NOT_VISIBLE). The refusal counts them and names none: they may
    belong to organizations the caller cannot see."""
    count = await store.public_dependents(conn, org.id, module.id)
    if not count:
        return
    if not force:
        raise FailedPrecondition(
            PreconditionViolation(
                type="MODULE_HAS_PUBLIC_DEPENDENTS",
                subject=_target(org, module),
                description=(
                    f"module {module.name!r} cannot be made private: {count} version(s) of"
                    " public modules depend on it, and a public module's versions may depend"
                    " only on public modules; an admin may pass force=true, after which"
                    " outsiders can no longer compile those versions"
                ),
            )
        )
    if not _is_admin(org, principal):
        raise PermissionDenied(
            f"making module {module.name!r} private while public modules depend on it"
            f" (force) needs the admin role in organization {org.name!r}"
        )


def _dependents_text(module: Module, found: Sequence[store.Dependent]) -> str:
    total, hidden = found[0].total, found[0].hidden
    named = [
        f"{d.org_name}/{d.module_name}@{d.version} (on {d.dependency_version})"
        for d in found
        if d.visible
    ]
    unnamed_visible = total - hidden - len(named)
    parts = ", ".join(named)
    if unnamed_visible:
        parts += f" and {unnamed_visible} more"
    if hidden:
        parts += (", " if named else "") + f"{hidden} in organizations you cannot see"
    return f"module {module.name!r} has {total} dependent version(s): {parts}"


def _is_admin(org: OrgContext, principal: Principal) -> bool:
    return principal.is_admin or org.role is Role.ADMIN


def _check_may_change(org: OrgContext, principal: Principal, module: Module, method: str) -> None:
    if _is_admin(org, principal) or module.created_by == principal.user_id:
        return
    role = org.role.value if org.role else "none"
    raise PermissionDenied(
        f"{method} needs the admin role in organization {org.name!r} or to be the module's"
        f" creator; your role is {role}"
    )


# --- Versions --------------------------------------------------------------------------------


def digest(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of ``(path, content)`` pairs in the canonical encoding documented on
    ``Version.digest``: by path bytes, each as length-prefixed path and content bytes."""
    hasher = hashlib.sha256()
    for path, content in sorted((p.encode(), c.encode()) for p, c in files):
        for part in (path, content):
            hasher.update(len(part).to_bytes(8, "big"))
            hasher.update(part)
    return hasher.hexdigest()


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a file path of a version; None when it can."""
    if not path:
        return "required"
    if len(path) > MAX_PATH:
        return f"must be at most {MAX_PATH} characters, got {len(path)}"
    if path.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in path:
        return "must not contain a backslash; separate directories with '/'"
    segments = path.split("/")
    if ".." in segments:
        return "must not contain '..' segments"
    if "" in segments:
        return "must not contain empty segments ('//' or a trailing '/')"
    if "." in segments:
        return "must not contain '.' segments"
    if not path.endswith(".proto"):
        return "must end in .proto"
    if not all(_SEGMENT_RE.fullmatch(segment) for segment in segments):
        return (
            "segments may contain only ASCII letters, digits, '_', '-' and '.', and must start"
            " with a letter, a digit or '_'"
        )
    if path.startswith(_RESERVED_PREFIX):
        return f"{_RESERVED_PREFIX} is reserved for the well-known types the server provides"
    return None


def version_problem(version: str) -> str | None:
    if not version:
        return "required"
    if len(version) > MAX_VERSION:
        return f"must be at most {MAX_VERSION} characters, got {len(version)}"
    if not SEMVER_RE.fullmatch(version):
        return _SEMVER_HINT
    return None


def _check_files(violations: Violations, files: Sequence[SourceFile]) -> None:
    if not files:
        violations.add("files", "required: at least one .proto file")
        return
    if len(files) > MAX_FILES:
        violations.add("files", f"must be at most {MAX_FILES} files, got {len(files)}")
        return
    seen: dict[str, int] = {}
    total = 0
    for i, file in enumerate(files):
        problem = path_problem(file.path)
        if problem:
            violations.add(f"files[{i}].path", problem)
        elif file.path in seen:
            violations.add(f"files[{i}].path", f"duplicates files[{seen[file.path]}].path")
        else:
            seen[file.path] = i
        size = len(file.content.encode())
        total += size
        if not file.content.strip():
            violations.add(f"files[{i}].content", "required: the file's text (it is empty)")
        elif size > MAX_FILE_BYTES:
            violations.add(
                f"files[{i}].content",
                f"must be at most 1 MiB ({MAX_FILE_BYTES} bytes), got {size} bytes",
            )
    for path, i in seen.items():
        parts = path.split("/")
        for end in range(1, len(parts)):
            directory = "/".join(parts[:end])
            if directory in seen:
                violations.add(
                    f"files[{seen[directory]}].path",
                    f"{directory!r} is also a directory of files[{i}].path",
                )
    if total > MAX_VERSION_BYTES:
        violations.add(
            "files",
            f"must total at most 8 MiB ({MAX_VERSION_BYTES} bytes), got {total} bytes",
        )


def _check_dependencies(violations: Violations, dependencies: Sequence[DependencyRef]) -> None:
    if len(dependencies) > MAX_DEPENDENCIES:
        violations.add(
            "dependencies", f"must be at most {MAX_DEPENDENCIES}, got {len(dependencies)}"
        )
        return
    for i, dependency in enumerate(dependencies):
        if not dependency.org:
            violations.add(f"dependencies[{i}].org", "required: the organization's id or name")
        if not dependency.module:
            violations.add(f"dependencies[{i}].module", "required: the module's id or name")
        if problem := version_problem(dependency.version):
            violations.add(f"dependencies[{i}].version", problem)


def _check_source(violations: Violations, source: Source) -> None:
    violations.text(
        "source.repository", source.repository, max_length=MAX_REPOSITORY, multiline=False
    )
    if source.commit_sha and not _COMMIT_RE.fullmatch(source.commit_sha):
        violations.add("source.commit_sha", "must be 7 to 64 hexadecimal digits")
    violations.text("source.branch", source.branch, max_length=MAX_BRANCH, multiline=False)


async def create_version(
    conn: AsyncConnection,
    org: OrgContext,
    module_ref: str,
    new: NewVersion,
    *,
    principal: Principal,
    compiler: Compiler,
    requester: Requester,
    method: str,
) -> VersionView:
    violations = Violations()
    if problem := version_problem(new.version):
        violations.add("version", problem)
    _check_files(violations, new.files)
    _check_dependencies(violations, new.dependencies)
    _check_source(violations, new.source)
    violations.raise_if_any()
    reader = Reader.of(principal)
    module = await get_module(conn, org, module_ref, reader=reader)
    label = f"{module.name}@{new.version}"
    # Cheap early answer for the common duplicate; the UNIQUE constraint decides races.
    key = version_store.version_key(new.version)
    if await version_store.exists(conn, org.id, module.id, key):
        raise AlreadyExists("version", label)
    files = [NewFile(f.path, f.content, len(f.content.encode())) for f in new.files]
    size = sum(f.size_bytes for f in files)
    # Refused before any compile work; checked again under the org's quota lock, held only
    # from there to the commit, so that concurrent pushes cannot pass the limits together.
    await quotas.check_version(conn, org, module.id, size)
    resolved = await _resolve_dependencies(conn, org, module, new.dependencies, reader)
    reached = await _closure(conn, org, resolved, reader, f"{module.org_name}/{label}")
    if module.is_public:
        _refuse_private_closure(module, reached)
    dependency_files = await _dependency_files(conn, reached)
    reject = BreakingChangePolicy(module.breaking_change_policy) is BreakingChangePolicy.REJECT
    # A full compile pool refuses the push at once (RESOURCE_EXHAUSTED, RetryInfo): waiting
    # would hold this call's pool connection for the length of the compiles ahead of it.
    compiled = await compiler.compile(
        new.files, dependency_files, requester=requester, descriptor_set=reject, refuse=True
    )
    if compiled.violations:
        if resolved:  # a dependency deleted while the push read its files: say so instead
            await _recheck_dependencies(
                conn, org, module, new.dependencies, resolved, reader, f"{module.org_name}/{label}"
            )
        raise InvalidArgument(compiled.violations)
    if reject:
        # FOR UPDATE: pushes to a REJECT module are checked one at a time, each against
        # what the ones before it committed; the policy is read again under the lock.
        locked = await _module_still_there(conn, org, module, reader, lock=True)
        if BreakingChangePolicy(locked.breaking_change_policy) is BreakingChangePolicy.REJECT:
            await compilation.refuse_breaking_changes(
                conn,
                org,
                locked,
                f"{module.org_name}/{label}",
                compiled.descriptor_set,
                compiler=compiler,
                requester=requester,
                reader=reader,
            )
    # Decided again under the module's key lock: the module may have been made public
    # since it was read (UpdateModule takes FOR UPDATE, so it waits for this push or this
    # read waits for it and sees its change).
    # Only now, with every compile done, are the dependencies' modules locked (FOR SHARE,
    # until the commit): a push never holds locks on other organizations' rows while protoc
    # runs. Deleting one of them, or making it private, either committed while this push
    # compiled (and is seen here) or waits for the push and then sees its edge.
    if resolved:
        reached = await _recheck_dependencies(
            conn, org, module, new.dependencies, resolved, reader, f"{module.org_name}/{label}"
        )
        if module.is_public:
            _refuse_private_closure(module, reached)
    public = await store.lock_for_push(conn, org.id, module.id)
    if public is None:  # deleted while the push compiled
        raise NotFound("module", module.name)
    if public and not module.is_public:
        _refuse_private_closure(replace(module, is_public=True), reached)
    await quotas.reserve_version(conn, org, module.id, size)
    row = await version_store.insert_version(
        conn,
        org_id=org.id,
        module_id=module.id,
        module_name=module.name,
        version=new.version,
        files=files,
        dependencies=resolved,
        digest=digest((f.path, f.content) for f in new.files),
        source=(new.source.repository, new.source.commit_sha.lower(), new.source.branch),
        created_by=principal.user_id,
    )
    await quotas.record_gauges(conn, org)
    await _audit(conn, method, principal, org, f"{_target(org, module)}/versions/{new.version}")
    await usage_alerts.check_allocations(conn, org, module_id=module.id)
    await _emit(
        conn,
        org,
        EventType.VERSION_CREATED,
        module,
        principal,
        {"version": new.version, "version_id": str(row.id), "digest": row.digest},
    )
    listed = sorted(files, key=lambda f: f.path.encode())
    return VersionView(
        module=module,
        version=row,
        files=[File(row.id, f.path, "", f.size_bytes) for f in listed],
        dependencies=[
            Edge(
                version_id=row.id,
                position=i,
                dep_org_id=d.org_id,
                dep_module_id=d.module_id,
                dep_version_id=d.version_id,
                dep_org_name=d.org_name,
                dep_module_name=d.module_name,
                dep_version=d.version,
                deleted=False,
            )
            for i, d in enumerate(resolved)
        ],
    )


async def _module_still_there(
    conn: AsyncConnection, org: OrgContext, module: Module, reader: Reader, *, lock: bool
) -> Module:
    """The module read again (FOR UPDATE with ``lock``); NOT_FOUND, by its name, when it was
    deleted since it was first read (a push racing a DeleteModule of its module)."""
    row = await store.get_module(conn, org.id, ModuleRef(id=module.id), reader=reader, lock=lock)
    if row is None:
        raise NotFound("module", module.name)
    return row


async def _resolve_dependencies(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    refs: Sequence[DependencyRef],
    reader: Reader,
    *,
    lock: bool = False,
) -> list[Resolved]:
    """The versions ``refs`` name. One that does not exist, belongs to a private module of
    another organization, or that the pusher may not read, is NOT_FOUND with the same
    message. ``lock``: their modules FOR SHARE, until the commit."""
    requested = []
    for ref in refs:
        org_id, module_id = parse_uuid(ref.org), parse_uuid(ref.module)
        requested.append(
            Requested(
                org_id=org_id,
                org_name=None if org_id else ref.org,
                module_id=module_id,
                module_name=None if module_id else ref.module,
                version=ref.version,
            )
        )
    found = await version_store.resolve(conn, requested, org_id=org.id, reader=reader, lock=lock)
    by_position = {r.position: r for r in found}
    for i, ref in enumerate(refs):
        if i not in by_position:
            raise NotFound("dependency", f"{ref.org}/{ref.module}@{ref.version}")
    violations = Violations()
    versions_seen: dict[uuid.UUID, int] = {}
    modules_seen: dict[uuid.UUID, int] = {}
    for r in found:
        where = f"dependencies[{r.position}]"
        if r.module_id == module.id:
            violations.add(where, "a version cannot depend on its own module")
        elif r.version_id in versions_seen:
            violations.add(where, f"repeats dependencies[{versions_seen[r.version_id]}]")
        elif r.module_id in modules_seen:
            violations.add(
                where,
                f"{r.org_name}/{r.module_name} is already a dependency"
                f" (dependencies[{modules_seen[r.module_id]}]); depend on one version of it",
            )
        versions_seen.setdefault(r.version_id, r.position)
        modules_seen.setdefault(r.module_id, r.position)
    violations.raise_if_any()
    return found


async def _recheck_dependencies(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    refs: Sequence[DependencyRef],
    resolved: Sequence[Resolved],
    reader: Reader,
    label: str,
) -> list[Reached]:
    """The dependencies resolved again, their modules locked, after the compile: what was
    deleted or hidden meanwhile is refused as it would have been before it (NOT_FOUND,
    DEPENDENCY_DELETED, DEPENDENCY_NOT_VISIBLE); returns the closure as it is now."""
    again = await _resolve_dependencies(conn, org, module, refs, reader, lock=True)
    if [r.version_id for r in again] != [r.version_id for r in resolved]:
        raise Aborted(
            "a dependency was deleted and pushed again while this push compiled against it;"
            " retry the push"
        )
    return await _closure(conn, org, again, reader, label)


async def _closure(
    conn: AsyncConnection,
    org: OrgContext,
    resolved: Sequence[Resolved],
    reader: Reader,
    label: str,
) -> list[Reached]:
    """Every version ``resolved`` depend on, transitively; refused when the pusher may not
    read all of it, or part of it was deleted."""
    if not resolved:
        return []
    reached = await version_store.closure(conn, resolved, recorder=org.id, reader=reader)
    compilation.refuse_unusable(reached, "this version", "depend on versions that do not need them")
    return reached


def _refuse_private_closure(module: Module, reached: Sequence[Reached]) -> None:
    """A public module's versions depend only on public modules, transitively."""
    private = [r for r in reached if not r.public]
    if private:
        raise FailedPrecondition(
            PreconditionViolation(
                type="DEPENDENCY_NOT_PUBLIC",
                subject=private[0].label,
                description=(
                    f"module {module.name!r} is public, and a public module's versions may"
                    f" depend only on public modules; {private[0].label} is not public (make"
                    f" it public, depend on a public version, or make {module.name!r} private)"
                ),
            )
        )


async def _dependency_files(
    conn: AsyncConnection, reached: Sequence[Reached]
) -> list[DependencyFiles]:
    """The files of every version of the (checked) closure ``reached``, by version."""
    if not reached:
        return []
    size = sum(r.size_bytes for r in reached)
    if len(reached) > MAX_CLOSURE_VERSIONS or size > MAX_CLOSURE_BYTES:
        raise InvalidArgument.field(
            "dependencies",
            f"bring {len(reached)} versions and {size} bytes with their own dependencies; at"
            f" most {MAX_CLOSURE_VERSIONS} versions and {MAX_CLOSURE_BYTES} bytes may be",
        )
    files = await version_store.closure_files(conn, reached)
    return [
        DependencyFiles(
            label=r.label,
            files=tuple(SourceFile(f.path, f.content) for f in files.get(r.version_id, [])),
        )
        for r in reached
    ]


def _check_version_ref(ref: str, field_name: str) -> uuid.UUID | None:
    """The version's id when ``ref`` is one; None when it is a version string."""
    version_id = parse_uuid(ref)
    if version_id is None and (problem := version_problem(ref)):
        if len(ref) > MAX_VERSION:
            raise NotFound("version", ref[:MAX_VERSION] + "…")
        raise InvalidArgument.field(field_name, f"{problem}, or the version's id")
    return version_id


async def _version_row(
    conn: AsyncConnection, org: OrgContext, module: Module, ref: str, version_id: uuid.UUID | None
) -> Version:
    row = await version_store.get_version(
        conn,
        org.id,
        module.id,
        version_id=version_id,
        key=None if version_id else version_store.version_key(ref),
    )
    if row is None:
        raise NotFound("version", f"{module.name}@{ref}")
    return row


async def find_version(
    conn: AsyncConnection,
    org: OrgContext,
    module_ref: str,
    ref: str,
    *,
    reader: Reader,
    against_ref: str | None = None,
) -> tuple[Module, Version, Version | None]:
    """The module, its version ``ref`` (a version string or an id) and, when ``against_ref``
    is given, its version ``against_ref`` too; NOT_FOUND for any that is missing or hidden."""
    version_id = _check_version_ref(ref, "version")
    against_id = None
    if against_ref is not None:
        if not against_ref:
            raise InvalidArgument.field(
                "against_version", "required: the version to compare with, or its id"
            )
        against_id = _check_version_ref(against_ref, "against_version")
    module = await get_module(conn, org, module_ref, reader=reader)
    row = await _version_row(conn, org, module, ref, version_id)
    against = None
    if against_ref is not None:
        against = await _version_row(conn, org, module, against_ref, against_id)
    return module, row, against


async def get_version(
    conn: AsyncConnection,
    org: OrgContext,
    module_ref: str,
    ref: str,
    *,
    reader: Reader,
) -> VersionView:
    """The version with its files' contents and the dependencies the reader may see."""
    module, row, _ = await find_version(conn, org, module_ref, ref, reader=reader)
    files = await version_store.files_of(conn, org.id, [row.id], contents=True)
    found = await version_store.edges_of(conn, org.id, [row.id], reader=reader)
    edges = found.get(row.id, [])
    shown = [e for e in edges if e.shown]
    orgs = frozenset({org.id, *(e.dep_org_id for e in edges)})
    return VersionView(module, row, files.get(row.id, []), shown, orgs)


async def list_versions(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    rows: Sequence[Version],
    *,
    reader: Reader,
) -> list[VersionView]:
    """``rows`` with their file paths and sizes (no contents) and their dependencies, cut
    short (never below one version) where the file listings would pass LIST_BUDGET_BYTES:
    a thousand versions of two hundred long paths would not fit in one response."""
    ids = [row.id for row in rows]
    files = await version_store.files_of(conn, org.id, ids, contents=False)
    edges = await version_store.edges_of(conn, org.id, ids, reader=reader)
    views: list[VersionView] = []
    budget = LIST_BUDGET_BYTES
    for row in rows:
        listed = files.get(row.id, [])
        budget -= sum(len(f.path) + _LISTED_FILE_OVERHEAD for f in listed)
        if views and budget < 0:
            break
        shown = [e for e in edges.get(row.id, []) if e.shown]
        views.append(VersionView(module, row, listed, shown))
    return views


def check_query(query: str) -> None:
    violations = Violations()
    violations.text("query", query, max_length=MAX_QUERY, multiline=False)
    violations.raise_if_any()


async def _emit(
    conn: AsyncConnection,
    org: OrgContext,
    event_type: EventType,
    module: Module,
    principal: Principal,
    extra: Mapping[str, Any] | None = None,
) -> None:
    data: dict[str, Any] = {
        "module": module.name,
        "module_id": str(module.id),
        "is_public": module.is_public,
        "actor_id": str(principal.user_id),
        **(extra or {}),
    }
    await events.emit(conn, org.id, event_type, data, module_id=module.id)


def _target(org: OrgContext, module: Module) -> str:
    return f"organizations/{org.name}/modules/{module.name}"


async def _audit(
    conn: AsyncConnection, method: str, principal: Principal, org: OrgContext, target: str
) -> None:
    await audit.record(
        conn,
        audit.AuditEvent(method=method, actor_id=principal.user_id, org_id=org.id, target=target),
    )
