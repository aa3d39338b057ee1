"""Compiling stored versions: CompileVersion, CheckCompatibility, and the breaking-change
check of a push to a module whose policy is BREAKING_CHANGE_POLICY_REJECT.

A stored version is built from its files and its dependencies' files, transitively, through
the compiler's cache. The cache key comes from digests the database already has (the
version's and its closure's), so an answer from the cache reads no file contents.

Each call runs in its unit of work's transaction on one pooled connection, and keeps the
database work small: it reads what it needs, compiles (the transaction holds nothing but the
org row's FOR KEY SHARE meanwhile), then does the bookkeeping last: the org's quota row
lock, the month's count, the job's record and the audit event, so the quota lock is held
only from the count to the commit. A CompileVersion that the cache answers (or a concurrent
build of the same key) is a download, not a compile job: it takes no quota, and runs no
statement beyond its reads. A CheckCompatibility is a job even when both builds are cached:
the comparison runs in a worker, under the compiles' time limit. A call refused because the
compiler is busy counts nothing and records nothing. A compile that ran and failed (time
limit, protoc error, too large a result) is not counted, but its job is recorded, after the
rollback, with its outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from psycopg import AsyncConnection

from spoke_grpc.compile_queue import Requester
from spoke_grpc.compiler import (
    Build,
    BuildResult,
    BuildSources,
    Compiler,
    CompileTimeLimitExceeded,
    DependencyFiles,
    SourceFile,
    TimeLimitReached,
)
from spoke_grpc.database import RollbackHook
from spoke_grpc.domain import compatibility, quotas
from spoke_grpc.domain.compatibility import Violation
from spoke_grpc.errors import (
    MAX_VIOLATIONS,
    FailedPrecondition,
    InvalidArgument,
    PreconditionViolation,
    shorten,
)
from spoke_grpc.generators import LANGUAGES, Toolchain
from spoke_grpc.store import audit, compile_jobs
from spoke_grpc.store import versions as version_store
from spoke_grpc.store.compile_jobs import CompileJob
from spoke_grpc.store.modules import Module
from spoke_grpc.store.versions import Reached, Resolved, Version
from spoke_grpc.store.visibility import Reader
from spoke_grpc.types import OrgContext, Principal

# The most a CompileVersion response may carry (grpc's limit is 16 MiB; this leaves room for
# the message's own framing).
MAX_RESULT_BYTES = 16 * 2**20 - 64 * 2**10
_FILE_OVERHEAD = 16
# Versions of deleted dependencies named in an error.
_NAMED = 5
# A breaking change in an error's details: at most this long a path and a description.
_MAX_SUBJECT = 160
_MAX_DETAIL = 200

OnRollback = Callable[[RollbackHook], None]


class BreakingChanges(FailedPrecondition):
    """A push to a REJECT module breaks compatibility: one PreconditionFailure violation per
    breaking change (type: the rule, subject: the path), the first MAX_VIOLATIONS of them and
    a note of how many more, each shortened, so that the error fits in a client's trailers."""

    def __init__(self, label: str, against: str, violations: Sequence[Violation]) -> None:
        shown = violations[:MAX_VIOLATIONS]
        more = len(violations) - len(shown)
        first = violations[0]
        super().__init__(
            PreconditionViolation(
                type="BREAKING_CHANGE",
                subject=label,
                description=(
                    f"{label} breaks compatibility with {against}, the module's highest"
                    f" version, in {len(violations)} way(s) (first: {first.rule}"
                    f" {shorten(first.path, _MAX_SUBJECT)}), and the module's"
                    " breaking_change_policy is BREAKING_CHANGE_POLICY_REJECT"
                ),
            )
        )
        self.violations = [
            PreconditionViolation(
                type=v.rule,
                subject=shorten(v.path, _MAX_SUBJECT),
                description=shorten(v.message, _MAX_DETAIL),
            )
            for v in shown
        ]
        if more:
            self.violations.append(
                PreconditionViolation(
                    type="BREAKING_CHANGE",
                    subject=label,
                    description=f"and {more} more; CheckCompatibility lists them all",
                )
            )

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        return [packed]


def parse_languages(values: Sequence[str], toolchain: Toolchain) -> tuple[str, ...]:
    """The requested languages, sorted, each once. INVALID_ARGUMENT for an unknown one
    (naming every language), FAILED_PRECONDITION (LANGUAGE_UNAVAILABLE) for one whose
    generator programs this server lacks (naming them)."""
    supported = ", ".join(sorted(LANGUAGES))
    for i, value in enumerate(values):
        if value not in LANGUAGES:
            raise InvalidArgument.field(
                f"languages[{i}]",
                f"{shorten(value, 40)!r} is not a supported language; supported: {supported}",
            )
    for value in sorted(set(values)):
        missing = toolchain.missing(value)
        if missing:
            available = ", ".join(n for n in sorted(LANGUAGES) if toolchain.available(n))
            raise FailedPrecondition(
                PreconditionViolation(
                    type="LANGUAGE_UNAVAILABLE",
                    subject=value,
                    description=(
                        f"this server cannot generate {value}: {', '.join(missing)} not"
                        f" installed (ListLanguages shows what is); available: {available}"
                    ),
                )
            )
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class _Target:
    """A stored version to build: its key, and how to load its sources on a cache miss."""

    module: Module
    version: Version
    key: str
    reached: Sequence[Reached]

    @property
    def label(self) -> str:
        return f"{self.module.org_name}/{self.module.name}@{self.version.version}"


def refuse_unusable(reached: Sequence[Reached], what: str, remedy: str) -> None:
    """FAILED_PRECONDITION when a closure reaches a version the reader may not read
    (DEPENDENCY_NOT_VISIBLE, naming none of it) or one deleted since it was recorded
    (DEPENDENCY_DELETED, named only where the reader may know the name)."""
    hidden = [r for r in reached if r.present and not r.readable]
    if hidden:
        raise FailedPrecondition(
            PreconditionViolation(
                type="DEPENDENCY_NOT_VISIBLE",
                subject=what,
                description=(
                    f"{what}: {len(hidden)} version(s) among its dependencies belong to"
                    f" modules you cannot read (made private since they were pushed); {remedy}"
                ),
            )
        )
    deleted = [r for r in reached if not r.present]
    if deleted:
        named = [r.label for r in deleted if r.named]
        unnamed = len(deleted) - len(named)
        listed = ", ".join(named[:_NAMED])
        if unnamed:
            listed += f"{' and ' if named else ''}{unnamed} version(s) you cannot see"
        raise FailedPrecondition(
            PreconditionViolation(
                type="DEPENDENCY_DELETED",
                subject=what,
                description=(
                    f"{what}: its dependencies need {listed}, deleted since they were pushed"
                    f" (their module was deleted with force); {remedy}"
                ),
            )
        )


async def _target(
    conn: AsyncConnection,
    module: Module,
    version: Version,
    languages: Sequence[str],
    reader: Reader,
    compiler: Compiler,
) -> _Target:
    """What building ``version`` for ``reader`` takes: refused when the closure reaches a
    version the reader may not read, so the key (and so a cache hit) is only ever one of a
    closure the reader may read whole."""
    edges = await version_store.edges_of(conn, version.org_id, [version.id], reader=reader)
    roots = [
        Resolved(
            position=e.position,
            org_id=e.dep_org_id,
            org_name=e.dep_org_name,
            module_id=e.dep_module_id,
            module_name=e.dep_module_name,
            version_id=e.dep_version_id,
            version=e.dep_version,
        )
        for e in edges.get(version.id, [])
    ]
    reached = (
        await version_store.closure(conn, roots, recorder=version.org_id, reader=reader)
        if roots
        else []
    )
    label = f"{module.org_name}/{module.name}@{version.version}"
    refuse_unusable(reached, label, "it can no longer be compiled")
    digests = [r.digest for r in reached if r.digest is not None]
    labels = [label, *(r.label for r in reached)]
    key = compiler.build_key(version.digest, digests, languages, labels)
    return _Target(module, version, key, reached)


async def _sources(conn: AsyncConnection, target: _Target) -> BuildSources:
    version = target.version
    own = await version_store.files_of(conn, version.org_id, [version.id], contents=True)
    files = await version_store.closure_files(conn, target.reached) if target.reached else {}
    return BuildSources(
        files=[SourceFile(f.path, f.content) for f in own.get(version.id, [])],
        dependencies=[
            DependencyFiles(
                r.label,
                tuple(SourceFile(f.path, f.content) for f in files.get(r.version_id, [])),
            )
            for r in target.reached
        ],
        label=target.label,
    )


def _built(result: BuildResult, target: _Target, compiler: Compiler) -> Build:
    """The build, or the error that says why there is none."""
    if result.build is not None:
        return result.build
    if result.timed_out:
        raise CompileTimeLimitExceeded(target.label, compiler.time_limit_seconds)
    first = result.violations[0].description if result.violations else "protoc failed"
    raise FailedPrecondition(
        PreconditionViolation(
            type="VERSION_DOES_NOT_COMPILE",
            subject=target.label,
            description=f"{target.label} does not compile with this server's protoc: {first}",
        )
    )


def _failure_outcome(exc: BaseException) -> str | None:
    """How a compile that ran ended, for its job record; None for refusals before one ran."""
    if isinstance(exc, CompileTimeLimitExceeded):
        return "timed_out"
    if isinstance(exc, FailedPrecondition):
        if exc.violation.type == "VERSION_DOES_NOT_COMPILE":
            return "failed"
        if exc.violation.type == "RESULT_TOO_LARGE":
            return "too_large"
    return None


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


@dataclass(frozen=True)
class Compiled:
    """A build, and the organizations the reader's right to it was decided from (the
    version's own and those of every version of its closure)."""

    build: Build
    orgs: frozenset[uuid.UUID]


async def compile_version(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    version: Version,
    languages: Sequence[str],
    *,
    principal: Principal,
    compiler: Compiler,
    requester: Requester,
    method: str,
    on_rollback: OnRollback,
) -> Compiled:
    """The version's descriptors and generated code: one compile job of the organization
    when protoc ran (a build from the cache is a download, and counts nothing).
    ``languages`` as ``parse_languages`` returned them."""
    wanted = tuple(languages)
    target = await _target(conn, module, version, wanted, Reader.of(principal), compiler)
    job = CompileJob(
        org_id=org.id,
        kind="compile",
        module_id=module.id,
        module_name=module.name,
        version_id=version.id,
        version=version.version,
        languages=wanted,
        outcome="compiled",
        duration_ms=0,
        requested_by=principal.user_id,
    )

    async def load() -> BuildSources:
        # Over quota: refused before a worker is spent (the count below decides).
        await quotas.check_compile_job(conn, org)
        return await _sources(conn, target)

    started = time.monotonic()
    result: BuildResult | None = None
    try:
        result = await compiler.build(target.key, load, wanted, requester=requester)
        build = _built(result, target, compiler)
        size = build.size_bytes + _FILE_OVERHEAD * len(build.files)
        if size > MAX_RESULT_BYTES:
            raise FailedPrecondition(
                PreconditionViolation(
                    type="RESULT_TOO_LARGE",
                    subject=target.label,
                    description=(
                        f"compiling {target.label} for {', '.join(wanted) or 'descriptors'}"
                        f" gives {size} bytes, more than the {MAX_RESULT_BYTES} a response may"
                        " carry; ask for fewer languages, or none (descriptors only)"
                    ),
                )
            )
    except Exception as exc:
        outcome = _failure_outcome(exc)
        if outcome is not None and not (result is not None and result.cached):
            _record_after_rollback(on_rollback, job, outcome, _elapsed_ms(started))
        raise
    decided_by = frozenset({version.org_id, *(r.org_id for r in target.reached)})
    if result.cached:
        return Compiled(build, decided_by)  # a download: no compile job, nothing counted
    await _bookkeeping(
        conn,
        org,
        job,
        "compiled",
        _elapsed_ms(started),
        principal=principal,
        method=method,
        target=f"{_module_target(org, module)}/versions/{version.version}:compile",
    )
    return Compiled(build, decided_by)


async def check_compatibility(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    version: Version,
    against: Version,
    *,
    principal: Principal,
    compiler: Compiler,
    requester: Requester,
    method: str,
    on_rollback: OnRollback,
) -> list[Violation]:
    """How ``version`` breaks clients of ``against`` (empty: compatible). Compiles both (from
    the cache where it can): one compile job of the organization."""
    job = CompileJob(
        org_id=org.id,
        kind="compatibility",
        module_id=module.id,
        module_name=module.name,
        version_id=version.id,
        version=version.version,
        against_version_id=against.id,
        against_version=against.version,
        languages=(),
        outcome="compiled",
        duration_ms=0,
        requested_by=principal.user_id,
    )
    started = time.monotonic()
    cached = True
    builds: list[Build] = []
    try:
        for stored in (against, version):
            target = await _target(conn, module, stored, (), Reader.of(principal), compiler)

            async def load(target: _Target = target) -> BuildSources:
                await quotas.check_compile_job(conn, org)
                return await _sources(conn, target)

            result = await compiler.build(target.key, load, (), requester=requester)
            builds.append(_built(result, target, compiler))
            cached = cached and result.cached
    except Exception as exc:
        outcome = _failure_outcome(exc)
        if outcome is not None:
            _record_after_rollback(on_rollback, job, outcome, _elapsed_ms(started))
        raise
    baseline, candidate = builds
    what = f"the compatibility of {target.label} with {against.version}"
    try:
        violations = await _compare(compiler, requester, baseline, candidate, what)
    except CompileTimeLimitExceeded:
        _record_after_rollback(on_rollback, job, "timed_out", _elapsed_ms(started))
        raise
    await _bookkeeping(
        conn,
        org,
        job,
        "cached" if cached else "compiled",
        _elapsed_ms(started),
        principal=principal,
        method=method,
        target=(
            f"{_module_target(org, module)}/versions/{version.version}"
            f":compatibility:{against.version}"
        ),
    )
    return violations


async def refuse_breaking_changes(
    conn: AsyncConnection,
    org: OrgContext,
    module: Module,
    label: str,
    descriptor_set: bytes,
    *,
    compiler: Compiler,
    requester: Requester,
    reader: Reader,
) -> None:
    """Raises ``BreakingChanges`` when a version being pushed (``descriptor_set``, its own
    compile's) breaks compatibility with the module's highest version by semantic version
    precedence; nothing to compare with for a first version."""
    stored = await version_store.version_strings(conn, org.id, module.id)
    if not stored:
        return
    highest_id, _ = max(stored, key=lambda item: semver_precedence(item[1]))
    highest = await version_store.get_version(conn, org.id, module.id, version_id=highest_id)
    if highest is None:
        return
    target = await _target(conn, module, highest, (), reader, compiler)

    async def load() -> BuildSources:
        return await _sources(conn, target)

    # A push waits for a worker rather than being refused: its own compile already ran.
    built = await compiler.build(target.key, load, (), requester=requester, wait=True)
    baseline = _built(built, target, compiler)
    violations = await _compare(
        compiler, requester, baseline, Build(descriptor_set, ()), f"{label} with {target.label}"
    )
    if violations:
        raise BreakingChanges(label, highest.version, violations)


async def _compare(
    compiler: Compiler, requester: Requester, baseline: Build, candidate: Build, what: str
) -> list[Violation]:
    """Runs the comparison in a worker (large schemas take a while to walk), under the
    compiles' time limit."""
    try:
        return await compiler.offload_limited(
            requester,
            compatibility.breaking_changes,
            baseline.descriptor_set,
            candidate.descriptor_set,
            baseline.inputs,
        )
    except TimeLimitReached:
        raise CompileTimeLimitExceeded(what, compiler.time_limit_seconds) from None


async def _bookkeeping(
    conn: AsyncConnection,
    org: OrgContext,
    job: CompileJob,
    outcome: str,
    duration_ms: int,
    *,
    principal: Principal,
    method: str,
    target: str,
) -> None:
    """Counts the job under the org's quota lock (or refuses it), records it, audits it."""
    await quotas.count_compile_job(conn, org)
    await compile_jobs.record(conn, _finished(job, outcome, duration_ms))
    await audit.record(
        conn,
        audit.AuditEvent(method=method, actor_id=principal.user_id, org_id=org.id, target=target),
    )


def _record_after_rollback(
    on_rollback: OnRollback, job: CompileJob, outcome: str, duration_ms: int
) -> None:
    finished = _finished(job, outcome, duration_ms)

    async def record(conn: AsyncConnection) -> None:
        await compile_jobs.record(conn, finished)

    on_rollback(record)


def _finished(job: CompileJob, outcome: str, duration_ms: int) -> CompileJob:
    return replace(job, outcome=outcome, duration_ms=duration_ms)


def _module_target(org: OrgContext, module: Module) -> str:
    return f"organizations/{org.name}/modules/{module.name}"


def semver_precedence(version: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key in semantic version precedence (semver.org §11): numbers compare
    numerically, a pre-release comes before its release, build metadata is ignored."""
    core, _, prerelease = version.removeprefix("v").partition("+")[0].partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    if not prerelease:
        return (major, minor, patch, ((2, 0),))  # after every pre-release of it
    identifiers: list[tuple[int, int | str]] = []
    for identifier in prerelease.split("."):
        # Numeric identifiers come before alphanumeric ones.
        identifiers.append((0, int(identifier)) if identifier.isdigit() else (1, identifier))
    return (major, minor, patch, tuple(identifiers))
