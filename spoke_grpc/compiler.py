"""Compiles proto files with grpcio-tools' protoc, off the event loop.

``Compiler`` owns a bounded pool of worker processes (``SPOKE_COMPILE_WORKERS``), started
and stopped with the server. A compile lays out a version's files and its dependencies'
files in a temporary directory of its own, adds the well-known types, and runs protoc there
under a time limit (``spoke_grpc.compile_worker``).

Two kinds of work share the pool. A push's check (``check``, ``compile``) waits for its
turn. A build (``build``: descriptors with source info and generated code, what
CompileVersion and CheckCompatibility use) is admitted only while fewer than ``workers +
queue`` jobs are running or waiting, and is refused at once otherwise (``CompilerBusy``,
RESOURCE_EXHAUSTED with RetryInfo): a waiting call holds a database connection, so a bounded
queue keeps a burst of compiles from taking the whole connection pool. Builds are
deterministic, so their results are kept in a ``BuildCache`` (LRU, bounded by entries and
bytes) under a key of everything that decides them (``build_key``): a repeated build runs
no protoc, and concurrent builds of one key share one protoc run.

What goes wrong in a push's check comes back as field violations the caller can act on:

- protoc's errors in file ``i``: ``files[i].content``, described ``path:line:column: message``;
- an import that nothing provides: the same, naming the missing file;
- a path two dependencies provide: ``dependencies``, naming both; a path of the version that
  a dependency provides too: ``files[i].path``, naming the dependency;
- too slow a compile, or a crash: ``files``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import multiprocessing
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ParamSpec, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2

from spoke_grpc.compile_worker import WELL_KNOWN_TYPES, ProtocJob, ProtocOutcome, run_protoc
from spoke_grpc.errors import FieldViolation, SpokeError

log = logging.getLogger(__name__)

# Seconds one compile may run before it is killed (SPOKE_COMPILE_TIME_LIMIT).
TIME_LIMIT_SECONDS = 20.0
# Builds kept in memory: at most this many, of at most this many bytes together.
CACHE_ENTRIES = 256
CACHE_BYTES = 128 * 2**20
# Seconds a caller refused for a busy pool is told to wait.
BUSY_RETRY_SECONDS = 1

# What each language generates: protoc generators (``--<name>_out``). grpcio-tools' protoc
# has the Python generators built in (messages, type stubs, and the gRPC plugin); every other
# generator (cpp, java, csharp, objc, php, ruby, kotlin, rust, upb, …) needs a plugin
# program it does not ship.
LANGUAGES: dict[str, tuple[str, ...]] = {"python": ("python", "pyi", "grpc_python")}
# Bump when what a build produces changes for the same inputs (flags, layout).
_BUILD_FORMAT = "spoke-build-1"

P = ParamSpec("P")
R = TypeVar("R")

_LOCATED = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+):(?P<column>\d+): (?P<message>.+)$")
_MISSING_IMPORT = re.compile(r'^Import "(?P<path>[^"]+)" was not found or had errors\.$')


@dataclass(frozen=True)
class SourceFile:
    path: str
    content: str


@dataclass(frozen=True)
class DependencyFiles:
    """The files of one dependency version; ``label`` (``org/module@version``) names it."""

    label: str
    files: tuple[SourceFile, ...]


@dataclass(frozen=True)
class CompileResult:
    """Violations (empty when the files compile) and, when asked for, the descriptors."""

    violations: tuple[FieldViolation, ...]
    descriptor_set: bytes = b""


@dataclass(frozen=True)
class GeneratedFile:
    language: str
    path: str
    content: str


@dataclass(frozen=True)
class Build:
    """A version compiled: its ``FileDescriptorSet`` (its files, the ``inputs``, and every
    import, with source info) and the files generated for each language, by language and
    path."""

    descriptor_set: bytes
    inputs: tuple[str, ...]
    files: tuple[GeneratedFile, ...] = ()

    @property
    def size_bytes(self) -> int:
        generated = sum(len(f.path) + len(f.content.encode()) for f in self.files)
        return len(self.descriptor_set) + generated + sum(len(p) for p in self.inputs)


@dataclass(frozen=True)
class BuildSources:
    """What a build compiles: the version's files (the inputs) and its dependencies'."""

    files: Sequence[SourceFile]
    dependencies: Sequence[DependencyFiles]


@dataclass(frozen=True)
class BuildResult:
    """A build, or why there is none: ``violations`` (protoc's errors) or ``timed_out``.

    ``cached`` is True when no protoc ran for this call (the cache, or a concurrent build of
    the same key, answered)."""

    build: Build | None
    cached: bool
    violations: tuple[FieldViolation, ...] = ()
    timed_out: bool = False


def _pack(message: error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class CompilerBusy(SpokeError):
    """Every compile worker is busy and the queue is full: retry after the RetryInfo delay."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "COMPILER_BUSY"

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"the compiler is busy: {capacity} compiles are running or queued, the most this"
            f" server takes; retry in {BUSY_RETRY_SECONDS}s",
            metadata={"capacity": str(capacity)},
        )

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=BUSY_RETRY_SECONDS)
        )
        return [_pack(retry)]


class CompileTimeLimitExceeded(SpokeError):
    """A compile ran past the server's time limit and was killed; retrying will not help."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "COMPILE_TIME_LIMIT_EXCEEDED"

    def __init__(self, what: str, limit_seconds: float) -> None:
        super().__init__(
            f"compiling {what} took longer than the server's {limit_seconds:g}s limit and was"
            " stopped; ask for fewer languages, or split the module's files",
            metadata={"limit_seconds": f"{limit_seconds:g}"},
        )


@functools.cache
def compiler_version() -> str:
    """What, besides the inputs, decides a build's bytes: protoc (grpcio-tools' version) and
    how this server drives it."""
    return f"{_BUILD_FORMAT}; grpcio-tools {metadata.version('grpcio-tools')}"


def build_key(digest: str, dependency_digests: Iterable[str], languages: Iterable[str]) -> str:
    """The cache key of a build: SHA-256 over the version's digest, its dependencies'
    digests (transitively, as a set), the languages and the compiler version."""
    hasher = hashlib.sha256()
    parts = [compiler_version(), digest, *sorted(set(dependency_digests)), "", *sorted(languages)]
    for part in parts:
        data = part.encode()
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


class BuildCache:
    """Builds by key, least recently used first out, within ``max_entries`` and
    ``max_bytes``; a build larger than a quarter of ``max_bytes`` is not kept, so one huge
    result cannot empty the cache."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self._entries: OrderedDict[str, Build] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Build | None:
        build = self._entries.get(key)
        if build is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return build

    def put(self, key: str, build: Build) -> None:
        size = build.size_bytes
        if self.max_entries <= 0 or size > self.max_bytes // 4:
            return
        self._forget(key)
        self._entries[key] = build
        self._sizes[key] = size
        self.size_bytes += size
        while len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes:
            self._forget(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _forget(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self.size_bytes -= self._sizes.pop(key)


class Compiler:
    """A bounded pool of protoc workers; ``start`` before use, ``stop`` at shutdown.

    ``protoc_runs`` counts the jobs sent to the workers (a cached build sends none).
    """

    def __init__(
        self,
        workers: int,
        *,
        queue: int | None = None,
        time_limit_seconds: float = TIME_LIMIT_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.workers = workers
        self.capacity = workers + (2 * workers if queue is None else queue)
        self.time_limit_seconds = time_limit_seconds
        self._executor: ProcessPoolExecutor | None = None
        self.cache = BuildCache(cache_entries, cache_bytes)
        self._pending: dict[str, asyncio.Task[BuildResult]] = {}
        self.in_flight = 0
        self.protoc_runs = 0

    def start(self) -> None:
        # spawn, not fork: the server process runs grpc threads, which do not survive a fork.
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
        )

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def check(
        self, files: Sequence[SourceFile], dependencies: Sequence[DependencyFiles]
    ) -> list[FieldViolation]:
        """Why ``files`` do not compile with ``dependencies``; empty when they do."""
        return list((await self.compile(files, dependencies)).violations)

    async def compile(
        self,
        files: Sequence[SourceFile],
        dependencies: Sequence[DependencyFiles],
        *,
        descriptor_set: bool = False,
        refuse: bool = False,
    ) -> CompileResult:
        """Compiles ``files`` (the inputs) against ``dependencies`` and the well-known types.

        With ``descriptor_set``, a successful result carries the serialized
        ``FileDescriptorSet`` of the inputs and everything they import. With ``refuse``,
        raises ``CompilerBusy`` when the pool and its queue are full; otherwise waits.
        """
        tree, providers, violations = _layout(files, dependencies)
        if violations:
            return CompileResult(tuple(violations))
        job = ProtocJob(
            files=tuple(tree.items()),
            inputs=tuple(f.path for f in files),
            time_limit_seconds=self.time_limit_seconds,
            descriptor_set=descriptor_set,
        )
        self._take_slot(refuse=refuse)
        outcome = await self._protoc(job)
        if outcome.exit_code == 0:
            return CompileResult((), outcome.descriptor_set)
        return CompileResult(tuple(self._violations(outcome, files, providers, set(tree))))

    async def build(
        self,
        key: str,
        load: Callable[[], Awaitable[BuildSources]],
        languages: Sequence[str],
        *,
        wait: bool = False,
    ) -> BuildResult:
        """The build of ``key``: from the cache, from a concurrent build of the same key, or
        compiled from the sources ``load`` returns (called only then, on the caller's task).

        Refused with ``CompilerBusy`` when the pool and its queue are full, unless ``wait``.
        """
        found = self._shared(key)
        if found is not None:
            return await found
        self._take_slot(refuse=not wait)  # held until the worker is done with the job
        try:
            sources = await load()
        except BaseException:
            self._release_slot()
            raise
        found = self._shared(key)  # another call may have built it while this one loaded
        if found is not None:
            self._release_slot()
            return await found
        task = asyncio.get_running_loop().create_task(self._produce(key, sources, languages))
        self._pending[key] = task
        task.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: a caller that gives up does not stop the build, which others may share.
        return await asyncio.shield(task)

    async def offload(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs CPU-bound ``function`` (module-level, pure) in the worker pool, waiting its
        turn, so that the event loop stays free."""
        self._take_slot()
        return await self._run(functools.partial(function, *args, **kwargs))

    def _take_slot(self, *, refuse: bool = False) -> None:
        if refuse and self.in_flight >= self.capacity:
            raise CompilerBusy(self.capacity)
        self.in_flight += 1

    def _release_slot(self) -> None:
        self.in_flight -= 1

    def _shared(self, key: str) -> Awaitable[BuildResult] | None:
        build = self.cache.get(key)
        if build is not None:
            return _ready(BuildResult(build, cached=True))
        pending = self._pending.get(key)
        if pending is not None:
            return _joined(pending)
        return None

    def _settled(self, key: str, task: asyncio.Task[BuildResult]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("build %s failed: %r", key[:12], task.exception())

    async def _produce(
        self, key: str, sources: BuildSources, languages: Sequence[str]
    ) -> BuildResult:
        tree, providers, violations = _layout(sources.files, sources.dependencies)
        if violations:
            self._release_slot()
            return BuildResult(None, cached=False, violations=tuple(violations))
        generators = tuple(g for language in languages for g in LANGUAGES[language])
        language_of = {g: language for language in languages for g in LANGUAGES[language]}
        job = ProtocJob(
            files=tuple(tree.items()),
            # Sorted, so that the descriptor set's order depends on the files alone.
            inputs=tuple(sorted((f.path for f in sources.files), key=str.encode)),
            time_limit_seconds=self.time_limit_seconds,
            descriptor_set=True,
            source_info=True,
            generators=generators,
        )
        outcome = await self._protoc(job)
        if outcome.exit_code != 0:
            problems = self._violations(outcome, sources.files, providers, set(tree))
            return BuildResult(
                None, cached=False, violations=tuple(problems), timed_out=outcome.timed_out
            )
        files = sorted(
            (GeneratedFile(language_of[g], path, text) for g, path, text in outcome.generated),
            key=lambda f: (f.language, f.path.encode()),
        )
        build = Build(outcome.descriptor_set, job.inputs, tuple(files))
        self.cache.put(key, build)
        return BuildResult(build, cached=False)

    async def _protoc(self, job: ProtocJob) -> ProtocOutcome:
        self.protoc_runs += 1
        return await self._run(functools.partial(run_protoc, job))

    async def _run(self, work: Callable[[], R]) -> R:
        """Runs ``work`` in a worker. The caller holds a slot; it is released when the worker
        is done with the job, not before, even if the caller stops waiting."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self._executor is None:
                self._release_slot()
                raise RuntimeError("the compiler is not started")
            try:
                future = self._executor.submit(work)
            except BaseException:
                self._release_slot()
                raise
            future.add_done_callback(lambda _: _call_soon(loop, self._release_slot))
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                # A worker died (it never should: protoc runs in a child of the worker).
                log.warning("compile worker pool broken; starting a new one (attempt %d)", attempt)
                broken = self._executor
                self.start()
                broken.shutdown(wait=False, cancel_futures=True)
                self._take_slot()
        self._release_slot()
        raise RuntimeError("the compile worker pool keeps breaking")

    def _violations(
        self,
        outcome: ProtocOutcome,
        files: Sequence[SourceFile],
        providers: dict[str, str],
        available: set[str],
    ) -> list[FieldViolation]:
        if outcome.exit_code is None:
            if outcome.timed_out:
                limit = f"{self.time_limit_seconds:g}s"
                reason = f"compiling took longer than the {limit} limit"
            else:
                reason = "the compiler crashed on these files"
            return [FieldViolation("files", f"{reason}; simplify or split the files")]
        index = {f.path: i for i, f in enumerate(files)}
        found: list[tuple[int, int, int, FieldViolation]] = []
        for line in outcome.stderr.splitlines():
            match = _LOCATED.match(line.strip())
            if match is None or match["message"].startswith("warning:"):
                continue  # "x.proto: File not found." (named by its import) and log noise
            path, message = match["path"], match["message"]
            where = f"{path}:{match['line']}:{match['column']}"
            missing = _MISSING_IMPORT.match(message)
            if missing and missing["path"] not in available and missing["path"] not in _wkt():
                message = (
                    f'import "{missing["path"]}" not found: no file of this version, of its'
                    " dependencies or of the well-known types has that path"
                )
            position = (int(match["line"]), int(match["column"]))
            if path in index:
                violation = FieldViolation(f"files[{index[path]}].content", f"{where}: {message}")
                found.append((index[path], *position, violation))
            else:
                label = providers.get(path, "a dependency")
                violation = FieldViolation("dependencies", f"{label}: {where}: {message}")
                found.append((len(files), *position, violation))
        if not found:
            lines = [s.strip() for s in outcome.stderr.splitlines() if s.strip()]
            detail = lines[-1] if lines else f"protoc exited with status {outcome.exit_code}"
            return [FieldViolation("files", f"the files do not compile: {detail}")]
        return [violation for *_, violation in sorted(found, key=lambda item: item[:3])]


async def _ready(result: BuildResult) -> BuildResult:
    return result


async def _joined(task: asyncio.Task[BuildResult]) -> BuildResult:
    """A concurrent build's result, as this caller's: no protoc ran for it."""
    result = await asyncio.shield(task)
    if result.build is None:
        return result
    return BuildResult(result.build, cached=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Runs ``callback`` on ``loop`` (from the executor's thread); a closed loop needs none."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _layout(
    files: Sequence[SourceFile], dependencies: Sequence[DependencyFiles]
) -> tuple[dict[str, str], dict[str, str], list[FieldViolation]]:
    """The directory tree to compile in (path → content), who provides each dependency
    path (path → label), and what cannot be laid out: a path provided twice, or a path that
    another one needs as a directory (``x.proto`` and ``x.proto/y.proto``)."""
    tree: dict[str, str] = {}
    providers: dict[str, str] = {}
    violations: list[FieldViolation] = []
    reported: set[str] = set()
    for dependency in dependencies:
        for file in dependency.files:
            first = providers.setdefault(file.path, dependency.label)
            if first == dependency.label:
                tree[file.path] = file.content
            elif file.path not in reported:
                reported.add(file.path)
                violations.append(
                    FieldViolation(
                        "dependencies",
                        f"{file.path!r} is provided by both {first} and {dependency.label};"
                        " depend on only one of them",
                    )
                )
    # Each directory the dependencies' files need, with the first file that needs it.
    directories: dict[str, tuple[str, str]] = {}
    for path, label in providers.items():
        for directory in _parents(path):
            directories.setdefault(directory, (path, label))
    for path, label in providers.items():
        if path in directories:
            under, other = directories[path]
            violations.append(
                FieldViolation(
                    "dependencies",
                    f"{path!r} of {label} is a directory of {under!r} of {other};"
                    " depend on only one of them",
                )
            )
    for i, file in enumerate(files):
        problem = None
        if file.path in providers:
            problem = (
                f"{file.path!r} is also a file of dependency {providers[file.path]};"
                " rename it or drop the dependency"
            )
        elif file.path in directories:
            under, label = directories[file.path]
            problem = (
                f"{file.path!r} is a directory of {under!r}, a file of dependency {label};"
                " rename it or drop the dependency"
            )
        else:
            needed = next((d for d in _parents(file.path) if d in providers), None)
            if needed is not None:
                problem = (
                    f"{file.path!r} needs a directory {needed!r}, which is a file of"
                    f" dependency {providers[needed]}; rename it or drop the dependency"
                )
        if problem is not None:
            violations.append(FieldViolation(f"files[{i}].path", problem))
        tree[file.path] = file.content
    return tree, providers, violations


def _parents(path: str) -> Iterator[str]:
    """The directories ``path`` lies in, outermost first (``a``, ``a/b`` for ``a/b/c``)."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


@functools.cache
def _wkt() -> frozenset[str]:
    """The well-known types' paths (``google/protobuf/timestamp.proto``, …)."""
    root = Path(WELL_KNOWN_TYPES)
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
