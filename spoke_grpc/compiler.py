"""Compiles proto files with grpcio-tools' protoc, off the event loop.

``Compiler`` owns a bounded pool of worker processes (``SPOKE_COMPILE_WORKERS``), started
and stopped with the server. A compile lays out a version's files and its dependencies'
files in a temporary directory of its own, adds the well-known types, and runs protoc there
under a time limit (``spoke_grpc.compile_worker``).

Every job is admitted for a ``Requester`` (an organization, a deadline) by the
``CompileQueue`` (``spoke_grpc.compile_queue``), which refuses what would pass the server's
bounds, the organization's share or the caller's deadline (``CompilerBusy``,
RESOURCE_EXHAUSTED with RetryInfo: a waiting call holds a database connection, so a bounded
queue keeps a burst of compiles from taking the whole connection pool), and decides whose
turn comes when a worker frees. A worker that dies breaks the pool for every job on it;
the first job to notice starts a new pool, and each retries once on it. Builds are
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
import functools
import hashlib
import logging
import multiprocessing
import os
import re
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ParamSpec, TypeVar

import grpc

from spoke_grpc import generators
from spoke_grpc.compile_queue import SERVER, CompileQueue, Requester, Ticket
from spoke_grpc.compile_worker import (
    GENERATION_FAILED,
    WELL_KNOWN_TYPES,
    PluginRun,
    ProtocJob,
    ProtocOutcome,
    die_with_parent,
    run_protoc,
)
from spoke_grpc.errors import FieldViolation, SpokeError
from spoke_grpc.generators import LANGUAGES, Toolchain

log = logging.getLogger(__name__)

# Seconds one compile may run before it is killed (SPOKE_COMPILE_TIME_LIMIT).
TIME_LIMIT_SECONDS = 20.0
# Builds kept in memory: at most this many, of at most this many bytes together.
CACHE_ENTRIES = 256
CACHE_BYTES = 128 * 2**20

# Bump when what a build produces changes for the same inputs (flags, layout). The
# languages' generators and their options are in spoke_grpc.generators; the versions of the
# programs a build uses are part of its key.
_BUILD_FORMAT = "spoke-build-2"

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
    """What a build compiles: the version's files (the inputs) and its dependencies'.
    ``label`` (``org/module@version``) names the version (Go import paths derive from it)."""

    files: Sequence[SourceFile]
    dependencies: Sequence[DependencyFiles]
    label: str = "local/local@0.0.0"


@dataclass(frozen=True)
class BuildResult:
    """A build, or why there is none: ``violations`` (protoc's errors) or ``timed_out``.

    ``cached`` is True when no protoc ran for this call (the cache, or a concurrent build of
    the same key, answered)."""

    build: Build | None
    cached: bool
    violations: tuple[FieldViolation, ...] = ()
    timed_out: bool = False


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


def build_key(
    digest: str,
    dependency_digests: Iterable[str],
    languages: Iterable[str],
    programs: Iterable[str] = (),
) -> str:
    """The cache key of a build: SHA-256 over the version's digest, its dependencies'
    digests (transitively, as a set), the languages, the compiler version and the versions
    of the generator ``programs`` the languages use (``Compiler.build_key`` adds them)."""
    hasher = hashlib.sha256()
    parts = [compiler_version(), digest, *sorted(set(dependency_digests)), "", *sorted(languages)]
    parts += ["", *sorted(programs)]
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


class TimeLimitReached(Exception):
    """Raised in a worker when work offloaded under a time limit runs past it."""


def _time_limited(seconds: float, function: Callable[..., R], *args: object) -> R:
    """Runs ``function(*args)`` in a worker process, interrupted after ``seconds`` (its
    main thread runs the job, so the alarm's handler raises inside the function)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeLimitReached(f"stopped after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return function(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# What a build shared by concurrent callers came to: its result, what it raised, or None
# when the call that started it gave up before it ran (a joiner then builds it itself).
_Shared = BuildResult | BaseException | None


class Compiler:
    """A bounded pool of protoc workers; ``start`` before use, ``stop`` at shutdown.

    Who runs when is the ``CompileQueue``'s (admission, each organization's share,
    deadlines); every job is admitted for a ``Requester``. ``protoc_runs`` counts the jobs
    sent to the workers (a cached build sends none); ``pool_replacements`` the pools
    started again because a worker died.
    """

    def __init__(
        self,
        workers: int,
        *,
        queue: int | None = None,
        org_workers: int | None = None,
        org_queue: int | None = None,
        time_limit_seconds: float = TIME_LIMIT_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
        generators_path: Sequence[str] | None = None,
        sandbox: str = "auto",
    ) -> None:
        self.workers = workers
        self._search_path = tuple(generators_path or generators.search_path())
        self._sandbox = sandbox
        self.queue = CompileQueue(
            workers,
            2 * workers if queue is None else queue,
            org_workers=org_workers,
            org_queue=org_queue,
        )
        self.capacity = self.queue.capacity
        self.time_limit_seconds = time_limit_seconds
        self._executor: ProcessPoolExecutor | None = None
        self.cache = BuildCache(cache_entries, cache_bytes)
        self._pending: dict[str, asyncio.Future[_Shared]] = {}
        self.protoc_runs = 0
        self.pool_replacements = 0

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not yet done: running, waiting for a worker, or loading."""
        return self.queue.in_flight

    @property
    def running(self) -> int:
        return self.queue.running

    @property
    def queued(self) -> int:
        """Jobs admitted and not running: loading their sources or waiting for a worker."""
        return self.queue.in_flight - self.queue.running

    @property
    def refused(self) -> int:
        return self.queue.refused

    @property
    def toolchain(self) -> Toolchain:
        """The generator programs this server has (looked up once per search path)."""
        return _detect(self._search_path, self._sandbox)

    def build_key(
        self,
        digest: str,
        dependency_digests: Iterable[str],
        languages: Sequence[str],
        labels: Iterable[str] = (),
    ) -> str:
        """``build_key`` with the versions of the programs ``languages`` use, and, when
        their output names the versions (Go's import paths), the ``labels``
        (``org/module@version``) of the version and its dependencies: digests say what the
        files are, not whose."""
        programs = self.toolchain.versions(languages)
        if generators.names_versions(languages):
            programs = [*programs, "", *sorted(set(labels))]
        return build_key(digest, dependency_digests, languages, programs)

    def start(self) -> None:
        self.toolchain  # noqa: B018 - looks the programs up now, not on the first compile
        # spawn, not fork: the server process runs grpc threads, which do not survive a fork.
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )
        # Every worker spawned now (one per job submitted while none is idle), not on demand
        # later: the first compiles do not wait for a process to start, and the pool's
        # manager thread watches every worker from the next job on (on demand, CPython 3.11
        # may wait without the newest worker's sentinel, and never see it die).
        for _ in range(self.workers):
            executor.submit(int)
        self._executor = executor

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def check(
        self,
        files: Sequence[SourceFile],
        dependencies: Sequence[DependencyFiles],
        *,
        requester: Requester = SERVER,
    ) -> list[FieldViolation]:
        """Why ``files`` do not compile with ``dependencies``; empty when they do."""
        return list((await self.compile(files, dependencies, requester=requester)).violations)

    async def compile(
        self,
        files: Sequence[SourceFile],
        dependencies: Sequence[DependencyFiles],
        *,
        requester: Requester = SERVER,
        descriptor_set: bool = False,
        refuse: bool = False,
    ) -> CompileResult:
        """Compiles ``files`` (the inputs) against ``dependencies`` and the well-known types.

        With ``descriptor_set``, a successful result carries the serialized
        ``FileDescriptorSet`` of the inputs and everything they import. With ``refuse``,
        raises ``CompilerBusy`` when the queue has no room for ``requester``; otherwise
        waits.
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
        ticket = self.queue.admit(requester, refuse=refuse)
        await self.queue.turn(ticket)
        outcome = await self._protoc(ticket, job)
        if outcome.exit_code == 0:
            return CompileResult((), outcome.descriptor_set)
        return CompileResult(tuple(self._violations(outcome, files, providers, set(tree))))

    async def build(
        self,
        key: str,
        load: Callable[[], Awaitable[BuildSources]],
        languages: Sequence[str],
        *,
        requester: Requester = SERVER,
        wait: bool = False,
    ) -> BuildResult:
        """The build of ``key``: from the cache, from a concurrent build of the same key, or
        compiled from the sources ``load`` returns (called only then, on the caller's task,
        after the job was admitted).

        Refused with ``CompilerBusy`` when the queue has no room for ``requester``, unless
        ``wait``.
        """
        while True:
            found = self._shared(key)
            if found is None:
                return await self._start(key, load, languages, requester, wait)
            result = await found
            if result is not None:
                return result
            # The call it joined gave up before its build ran: build it for this one.

    async def offload(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs CPU-bound ``function`` (module-level, pure) in the worker pool, as the
        server's own work, waiting its turn, so that the event loop stays free."""
        ticket = self.queue.admit(SERVER, refuse=False)
        await self.queue.turn(ticket)
        return await self._run(ticket, functools.partial(function, *args, **kwargs))

    async def offload_limited(
        self, requester: Requester, function: Callable[..., R], *args: object
    ) -> R:
        """Runs ``function(*args)`` (module-level, pure, Python) in the worker pool for
        ``requester``, waiting its turn, under the compiles' time limit: past it, raises
        ``TimeLimitReached``."""
        ticket = self.queue.admit(requester, refuse=False)
        await self.queue.turn(ticket)
        work = functools.partial(_time_limited, self.time_limit_seconds, function, *args)
        return await self._run(ticket, work)

    async def _start(
        self,
        key: str,
        load: Callable[[], Awaitable[BuildSources]],
        languages: Sequence[str],
        requester: Requester,
        wait: bool,
    ) -> BuildResult:
        ticket = self.queue.admit(requester, refuse=not wait)
        shared: asyncio.Future[_Shared] = asyncio.get_running_loop().create_future()
        self._pending[key] = shared  # callers of the same key from now on join this one
        try:
            sources = await load()
            await self.queue.turn(ticket)
        except BaseException:
            ticket.release()
            self._settle(key, shared, None)
            raise
        task = asyncio.get_running_loop().create_task(
            self._produce(ticket, key, sources, languages)
        )
        task.add_done_callback(lambda done: self._settle(key, shared, _outcome(done)))
        # Shielded: a caller that gives up does not stop the build, which others may share.
        return await asyncio.shield(task)

    def _shared(self, key: str) -> Awaitable[BuildResult | None] | None:
        build = self.cache.get(key)
        if build is not None:
            return _ready(BuildResult(build, cached=True))
        pending = self._pending.get(key)
        if pending is not None:
            return _joined(pending)
        return None

    def _settle(self, key: str, shared: asyncio.Future[_Shared], outcome: _Shared) -> None:
        if self._pending.get(key) is shared:
            del self._pending[key]
        if not shared.done():
            shared.set_result(outcome)
        if isinstance(outcome, BaseException):
            log.debug("build %s failed: %r", key[:12], outcome)

    async def _produce(
        self, ticket: Ticket, key: str, sources: BuildSources, languages: Sequence[str]
    ) -> BuildResult:
        tree, providers, violations = _layout(sources.files, sources.dependencies)
        if violations:
            ticket.release()
            return BuildResult(None, cached=False, violations=tuple(violations))
        job = self._job(sources, tree, languages)
        outcome = await self._protoc(ticket, job)
        if outcome.exit_code != 0:
            problems = self._violations(outcome, sources.files, providers, set(tree))
            return BuildResult(
                None, cached=False, violations=tuple(problems), timed_out=outcome.timed_out
            )
        languages_of: dict[str, list[str]] = {}
        for language in languages:
            for generator in LANGUAGES[language].generators:
                languages_of.setdefault(generator.out, []).append(language)
        files = sorted(
            (
                GeneratedFile(language, path, text)
                for out, path, text in outcome.generated
                for language in languages_of[out]
            ),
            key=lambda f: (f.language, f.path.encode()),
        )
        build = Build(outcome.descriptor_set, job.inputs, tuple(files))
        self.cache.put(key, build)
        return BuildResult(build, cached=False)

    def _job(
        self, sources: BuildSources, tree: dict[str, str], languages: Sequence[str]
    ) -> ProtocJob:
        """The protoc job of a build: grpcio-tools' generators in-process, the others by the
        system's protoc and plugins (each generator once), sandboxed."""
        toolchain = self.toolchain
        used = [g for language in languages for g in LANGUAGES[language].generators]
        bundled = tuple(dict.fromkeys(g.out for g in used if g.bundled))
        runs: dict[str, PluginRun] = {}
        for generator in used:
            if generator.bundled or generator.out in runs:
                continue
            runs[generator.out] = PluginRun(
                out=generator.out,
                plugin=toolchain.program(generator.program).path if generator.plugin else None,
                options=generator.options,
                go_import_paths=generator.go_import_paths,
            )
        plugin_paths = [r.plugin for r in runs.values() if r.plugin is not None]
        origins = {f.path: d.label for d in sources.dependencies for f in d.files}
        origins.update((f.path, sources.label) for f in sources.files)
        return ProtocJob(
            files=tuple(tree.items()),
            # Sorted, so that the descriptor set's order depends on the files alone.
            inputs=tuple(sorted((f.path for f in sources.files), key=str.encode)),
            time_limit_seconds=self.time_limit_seconds,
            descriptor_set=True,
            source_info=True,
            generators=bundled,
            protoc=toolchain.program(generators.PROTOC).path if runs else None,
            plugins=tuple(runs.values()),
            origins=tuple(sorted(origins.items())) if runs else (),
            bwrap=toolchain.bwrap,
            read_only=generators.visible_directories(plugin_paths),
        )

    async def _protoc(self, ticket: Ticket, job: ProtocJob) -> ProtocOutcome:
        self.protoc_runs += 1
        return await self._run(ticket, functools.partial(run_protoc, job))

    async def _run(self, ticket: Ticket, work: Callable[[], R]) -> R:
        """Runs ``work`` in a worker for ``ticket``, whose turn came. The ticket is released
        when the worker is done with the job, not before, even if the caller stops
        waiting."""
        task = asyncio.get_running_loop().create_task(self._execute(ticket, work))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _execute(self, ticket: Ticket, work: Callable[[], R]) -> R:
        try:
            for attempt in (1, 2):
                executor = self._executor
                if executor is None:
                    raise RuntimeError("the compiler is not started")
                started = time.monotonic()
                try:
                    result = await asyncio.wrap_future(executor.submit(work))
                except BrokenProcessPool:
                    # A worker died (it never should: protoc runs in a child of the worker).
                    log.warning("compile worker pool broken (attempt %d)", attempt)
                    self._replace(executor)
                    continue
                self.queue.record_run(time.monotonic() - started)
                return result
            raise RuntimeError("the compile worker pool keeps breaking")
        finally:
            ticket.release()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Starts a new pool in place of ``broken``, unless another job saw it broken first
        and did so already: every job running on a pool sees it break at once."""
        if self._executor is not broken:
            return
        log.warning("starting a new compile worker pool")
        self.pool_replacements += 1
        self.start()
        broken.shutdown(wait=False, cancel_futures=True)

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
            if detail.startswith(GENERATION_FAILED):  # the plugins', not the files' parse
                return [FieldViolation("files", detail)]
            return [FieldViolation("files", f"the files do not compile: {detail}")]
        return [violation for *_, violation in sorted(found, key=lambda item: item[:3])]


async def _ready(result: BuildResult) -> BuildResult | None:
    return result


async def _joined(shared: asyncio.Future[_Shared]) -> BuildResult | None:
    """A concurrent build's result, as this caller's (no protoc ran for it); None when the
    call that started it gave up before it ran."""
    outcome = await asyncio.shield(shared)
    if outcome is None or (isinstance(outcome, BuildResult) and outcome.build is None):
        return outcome
    if isinstance(outcome, BaseException):
        raise outcome
    return BuildResult(outcome.build, cached=True)


def _outcome(task: asyncio.Task[BuildResult]) -> _Shared:
    if task.cancelled():
        return None
    return task.exception() or task.result()


def _retrieve(task: asyncio.Task[object]) -> None:
    """Marks a finished job's exception as seen: its caller may have stopped waiting."""
    if not task.cancelled():
        task.exception()


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
def _detect(search_path: tuple[str, ...], sandbox: str) -> Toolchain:
    return generators.detect(search_path, sandbox=sandbox)


@functools.cache
def _wkt() -> frozenset[str]:
    """The well-known types' paths (``google/protobuf/timestamp.proto``, …)."""
    root = Path(WELL_KNOWN_TYPES)
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
