"""What runs inside a compile worker process: protoc on files written to a temporary directory.

Kept to the standard library and ``grpc_tools`` (no grpc, no database): the compiler's pool
starts its workers with ``spawn``, and each worker forks a child per compile. The child runs
grpcio-tools' protoc in-process under an interval timer, so a compile that runs too long is
killed cleanly (protoc cannot be interrupted from Python) and a protoc crash takes only the
child down; the worker stays healthy and removes the directory whatever happened. Every
compile has a directory of its own (inputs under ``src/``, generated code under ``out/``),
so concurrent compiles never see each other's files.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

# grpcio-tools ships the well-known types (google/protobuf/*.proto) next to its protoc.
WELL_KNOWN_TYPES = str(resources.files("grpc_tools") / "_proto")
_MAX_OUTPUT_BYTES = 512 * 2**20
_MAX_STDERR_BYTES = 64 * 1024
# protoc runs per compile, at most: each round after a failure sets the failed files aside.
_MAX_ROUNDS = 5


@dataclass(frozen=True)
class ProtocJob:
    """Files to lay out (path → text), the paths to compile, and the time limit.

    ``descriptor_set``: return the ``FileDescriptorSet`` of the inputs and their imports
    (with ``source_info``: with their comments and locations too); ``generators``: protoc
    generators to run (``python`` for ``--python_out``, …), each into a directory of its own.
    """

    files: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    time_limit_seconds: float
    descriptor_set: bool = False
    source_info: bool = False
    generators: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProtocOutcome:
    """How protoc ended: ``exit_code`` (None when it was killed), its stderr, its output.

    ``generated`` holds ``(generator, path, content)`` for each file a generator wrote, by
    generator and path.
    """

    exit_code: int | None
    timed_out: bool
    stderr: str
    descriptor_set: bytes = b""
    generated: tuple[tuple[str, str, str], ...] = ()


def run_protoc(job: ProtocJob) -> ProtocOutcome:
    """Runs one compile in forked children; called in a pool worker.

    protoc stops at the first input file with errors, so after a failure the files it
    named are set aside and the others compiled again (a few rounds, within the one time
    limit): one push reports the errors of several files.
    """
    with tempfile.TemporaryDirectory(prefix="spoke-compile-") as tmp:
        root = Path(tmp) / "src"
        for path, content in job.files:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        output = Path(tmp) / "descriptors.pb"
        errors = Path(tmp) / "stderr.txt"
        generated = Path(tmp) / "out"
        for generator in job.generators:
            (generated / generator).mkdir(parents=True)
        deadline = time.monotonic() + job.time_limit_seconds
        inputs = list(job.inputs)
        reports: list[str] = []
        first_failure: int | None = None
        for _ in range(_MAX_ROUNDS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            args = [
                "protoc",
                "--proto_path=.",
                f"--proto_path={WELL_KNOWN_TYPES}",
                f"--descriptor_set_out={output}",
                "--include_imports",
                *(["--include_source_info"] if job.source_info else []),
                *(f"--{g}_out={generated / g}" for g in job.generators),
                *inputs,
            ]
            status = _fork_protoc(root, errors, args, remaining)
            report = errors.read_bytes()[:_MAX_STDERR_BYTES].decode("utf-8", "replace")
            reports.append(report)
            if os.WIFSIGNALED(status):
                if first_failure is not None:
                    break  # report what the earlier rounds found
                signal_number = os.WTERMSIG(status)
                return ProtocOutcome(
                    exit_code=None,
                    timed_out=signal_number in (signal.SIGALRM, signal.SIGXCPU, signal.SIGKILL),
                    stderr=report,
                )
            code = os.WEXITSTATUS(status)
            if code == 0:
                if first_failure is None:
                    descriptors = output.read_bytes() if job.descriptor_set else b""
                    return ProtocOutcome(
                        exit_code=0,
                        timed_out=False,
                        stderr=report,
                        descriptor_set=descriptors,
                        generated=_generated(generated, job.generators),
                    )
                break
            first_failure = code if first_failure is None else first_failure
            lines = report.splitlines()
            failed = {p for p in inputs if any(line.startswith(f"{p}:") for line in lines)}
            if not failed or failed == set(inputs):
                break
            inputs = [p for p in inputs if p not in failed]
        if first_failure is None:  # the time ran out before protoc could finish once
            return ProtocOutcome(exit_code=None, timed_out=True, stderr="")
        return ProtocOutcome(exit_code=first_failure, timed_out=False, stderr="".join(reports))


def _generated(root: Path, generators: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """What each generator wrote under ``root/<generator>/``, by generator and path."""
    found: list[tuple[str, str, str]] = []
    for generator in generators:
        base = root / generator
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            relative = path.relative_to(base).as_posix()
            found.append((generator, relative, path.read_text(encoding="utf-8")))
    return tuple(found)


def _fork_protoc(root: Path, errors: Path, args: list[str], time_limit: float) -> int:
    """Runs protoc in a forked child; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(root, errors, args, time_limit)
    _, status = os.waitpid(pid, 0)
    return status


def _child(root: Path, errors: Path, args: list[str], time_limit: float) -> None:
    code = 70  # EX_SOFTWARE, should anything below raise
    try:
        fd = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(root)
        # The timer (SIGALRM) bounds wall time; the CPU limit backs it up; the file limit
        # bounds output.
        cpu = math.ceil(time_limit) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_OUTPUT_BYTES, _MAX_OUTPUT_BYTES))
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        code = protoc.main(args)
    finally:
        os._exit(code)
