"""What runs inside a compile worker process: protoc on files written to a temporary directory.

Kept to the standard library and ``grpc_tools`` (no grpc, no database): the compiler's pool
starts its workers with ``spawn``, and each worker forks a child per compile. The child runs
grpcio-tools' protoc in-process under an alarm, so a compile that runs too long is killed
cleanly (protoc cannot be interrupted from Python) and a protoc crash takes only the child
down; the worker stays healthy and removes the directory whatever happened.
"""

from __future__ import annotations

import os
import resource
import signal
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

# grpcio-tools ships the well-known types (google/protobuf/*.proto) next to its protoc.
WELL_KNOWN_TYPES = str(resources.files("grpc_tools") / "_proto")
_MAX_OUTPUT_BYTES = 512 * 2**20
_MAX_STDERR_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProtocJob:
    """Files to lay out (path → text), the paths to compile, and the time limit."""

    files: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    time_limit_seconds: int
    descriptor_set: bool = False


@dataclass(frozen=True)
class ProtocOutcome:
    """How protoc ended: ``exit_code`` (None when it was killed), its stderr, its output."""

    exit_code: int | None
    timed_out: bool
    stderr: str
    descriptor_set: bytes = b""


def run_protoc(job: ProtocJob) -> ProtocOutcome:
    """Runs one compile in a forked child; called in a pool worker."""
    with tempfile.TemporaryDirectory(prefix="spoke-compile-") as tmp:
        root = Path(tmp) / "src"
        for path, content in job.files:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        output = Path(tmp) / "descriptors.pb"
        errors = Path(tmp) / "stderr.txt"
        args = [
            "protoc",
            "--proto_path=.",
            f"--proto_path={WELL_KNOWN_TYPES}",
            f"--descriptor_set_out={output}",
            "--include_imports",
            *job.inputs,
        ]
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(root, errors, args, job.time_limit_seconds)
        _, status = os.waitpid(pid, 0)
        stderr = errors.read_bytes()[:_MAX_STDERR_BYTES].decode("utf-8", "replace")
        if os.WIFSIGNALED(status):
            timed_out = os.WTERMSIG(status) in (signal.SIGALRM, signal.SIGXCPU, signal.SIGKILL)
            return ProtocOutcome(exit_code=None, timed_out=timed_out, stderr=stderr)
        code = os.WEXITSTATUS(status)
        descriptors = output.read_bytes() if job.descriptor_set and code == 0 else b""
        return ProtocOutcome(
            exit_code=code, timed_out=False, stderr=stderr, descriptor_set=descriptors
        )


def _child(root: Path, errors: Path, args: list[str], time_limit: int) -> None:
    code = 70  # EX_SOFTWARE, should anything below raise
    try:
        fd = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(root)
        # The alarm bounds wall time; the CPU limit backs it up; the file limit bounds output.
        resource.setrlimit(resource.RLIMIT_CPU, (time_limit + 1, time_limit + 2))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_OUTPUT_BYTES, _MAX_OUTPUT_BYTES))
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(time_limit)
        code = protoc.main(args)
    finally:
        os._exit(code)
