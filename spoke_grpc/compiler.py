"""Compiles proto files with grpcio-tools' protoc, off the event loop.

``Compiler`` owns a bounded pool of worker processes (``SPOKE_COMPILE_WORKERS``), started
and stopped with the server. A compile lays out a version's files and its dependencies'
files in a temporary directory of its own, adds the well-known types, and runs protoc there
under a time limit (``spoke_grpc.compile_worker``). What goes wrong comes back as field
violations the caller can act on:

- protoc's errors in file ``i``: ``files[i].content``, described ``path:line:column: message``;
- an import that nothing provides: the same, naming the missing file;
- a path two dependencies provide: ``dependencies``, naming both; a path of the version that
  a dependency provides too: ``files[i].path``, naming the dependency;
- too slow a compile, or a crash: ``files``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from spoke_grpc.compile_worker import WELL_KNOWN_TYPES, ProtocJob, ProtocOutcome, run_protoc
from spoke_grpc.errors import FieldViolation

log = logging.getLogger(__name__)

# Seconds one compile may run before it is killed.
TIME_LIMIT_SECONDS = 20

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


class Compiler:
    """A bounded pool of protoc workers; ``start`` before use, ``stop`` at shutdown."""

    def __init__(self, workers: int, *, time_limit_seconds: int = TIME_LIMIT_SECONDS) -> None:
        self._workers = workers
        self._time_limit = time_limit_seconds
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        # spawn, not fork: the server process runs grpc threads, which do not survive a fork.
        self._executor = ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
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
    ) -> CompileResult:
        """Compiles ``files`` (the inputs) against ``dependencies`` and the well-known types.

        With ``descriptor_set``, a successful result carries the serialized
        ``FileDescriptorSet`` of the inputs and everything they import.
        """
        tree, providers, violations = _layout(files, dependencies)
        if violations:
            return CompileResult(tuple(violations))
        job = ProtocJob(
            files=tuple(tree.items()),
            inputs=tuple(f.path for f in files),
            time_limit_seconds=self._time_limit,
            descriptor_set=descriptor_set,
        )
        outcome = await self._run(job)
        if outcome.exit_code == 0:
            return CompileResult((), outcome.descriptor_set)
        return CompileResult(tuple(self._violations(outcome, files, providers, set(tree))))

    async def _run(self, job: ProtocJob) -> ProtocOutcome:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self._executor is None:
                raise RuntimeError("the compiler is not started")
            try:
                return await loop.run_in_executor(self._executor, run_protoc, job)
            except BrokenProcessPool:
                # A worker died (it never should: protoc runs in a child of the worker).
                log.warning("compile worker pool broken; starting a new one (attempt %d)", attempt)
                broken = self._executor
                self.start()
                broken.shutdown(wait=False, cancel_futures=True)
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
                reason = f"compiling took longer than the {self._time_limit}s limit"
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


def _layout(
    files: Sequence[SourceFile], dependencies: Sequence[DependencyFiles]
) -> tuple[dict[str, str], dict[str, str], list[FieldViolation]]:
    """The directory tree to compile in (path → content), who provides each dependency
    path (path → label), and the paths provided twice."""
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
    for i, file in enumerate(files):
        if file.path in providers:
            violations.append(
                FieldViolation(
                    f"files[{i}].path",
                    f"{file.path!r} is also a file of dependency {providers[file.path]};"
                    " rename it or drop the dependency",
                )
            )
        tree[file.path] = file.content
    return tree, providers, violations


@cache
def _wkt() -> frozenset[str]:
    """The well-known types' paths (``google/protobuf/timestamp.proto``, …)."""
    root = Path(WELL_KNOWN_TYPES)
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
