"""What runs inside a compile worker process: protoc on files written to a temporary directory.

Kept to the standard library, ``grpc_tools`` and protobuf (no grpc, no database): the
compiler's pool starts its workers with ``spawn``, and each worker forks a child per compile.
The child runs grpcio-tools' protoc in-process under an interval timer, so a compile that runs
too long is killed cleanly (protoc cannot be interrupted from Python) and a protoc crash takes
only the child down; the worker stays healthy and removes the directory whatever happened.
Every compile has a directory of its own (inputs under ``src/``, outputs under ``out/``), so
concurrent compiles never see each other's files.

That run gives the descriptors and the Python code. Every other language is generated from
those descriptors (``--descriptor_set_in``) by Debian's protoc and its plugins, programs of
the system run as a sandboxed process tree:

- each generator writes a zip (``--<out>_out=out/<out>.zip``), never the file system, and an
  entry whose name is absolute or climbs (``option go_package = "../../x;x"``, a PHP
  namespace with ``..\\..``) fails the build instead of being read;
- protoc runs in a session and process group of its own, and the whole group (protoc and
  the plugins it started, and theirs) is killed when the time runs out or protoc is done;
- address space, CPU time and file size are limited (``RLIMIT_AS`` 2 GiB);
- under bubblewrap, when the server has it: no network, no shared namespace, a read-only
  view of ``/usr`` (and of the plugins' own directories), and only the compile's directory
  writable.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import resource
import select
import signal
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from spoke_grpc.generators import go_import_path, sandbox_args

# grpcio-tools ships the well-known types (google/protobuf/*.proto) next to its protoc.
WELL_KNOWN_TYPES = str(resources.files("grpc_tools") / "_proto")
_MAX_OUTPUT_BYTES = 512 * 2**20
_MAX_STDERR_BYTES = 64 * 1024
# The address space protoc and each plugin may use.
MAX_ADDRESS_SPACE = 2 * 2**30
# protoc runs per compile, at most: each round after a failure sets the failed files aside.
_MAX_ROUNDS = 5
# The environment of the system's protoc and plugins (nothing of the server's).
_PLUGIN_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class PluginRun:
    """A generator Debian's protoc runs: ``--<out>_out``, from ``plugin`` (a program's
    path; None for one built into protoc), with ``options``; with ``go_import_paths``, an
    ``M<file>=<import path>`` option for each file without a go_package."""

    out: str
    plugin: str | None = None
    options: tuple[str, ...] = ()
    go_import_paths: bool = False


@dataclass(frozen=True)
class ProtocJob:
    """Files to lay out (path → text), the paths to compile, and the time limit.

    ``descriptor_set``: return the ``FileDescriptorSet`` of the inputs and their imports
    (with ``source_info``: with their comments and locations too); ``generators``:
    grpcio-tools' generators to run (``python`` for ``--python_out``, …); ``plugins``: the
    generators ``protoc`` (the system's) runs on those descriptors, then. ``origins`` names
    the version (``org/module@version``) each file comes from; ``bwrap`` is bubblewrap's
    path (None: no sandbox) and ``read_only`` the directories it shows the plugins besides
    the system's.
    """

    files: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    time_limit_seconds: float
    descriptor_set: bool = False
    source_info: bool = False
    generators: tuple[str, ...] = ()
    protoc: str | None = None
    plugins: tuple[PluginRun, ...] = ()
    origins: tuple[tuple[str, str], ...] = ()
    bwrap: str | None = None
    read_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProtocOutcome:
    """How protoc ended: ``exit_code`` (None when it was killed), its stderr, its output.

    ``generated`` holds ``(out, path, content)`` for each file a generator wrote, by
    generator and path.
    """

    exit_code: int | None
    timed_out: bool
    stderr: str
    descriptor_set: bytes = b""
    generated: tuple[tuple[str, str, str], ...] = ()


class UnsafeOutput(Exception):
    """A generator's output names a file outside its output directory."""


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
        generated.mkdir()
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
                *(f"--{g}_out={generated / g}.zip" for g in job.generators),
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
                    return _generate(job, Path(tmp), output, report, deadline)
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


def _generate(
    job: ProtocJob, tmp: Path, descriptors: Path, report: str, deadline: float
) -> ProtocOutcome:
    """After a successful in-process run: the plugins' run, then every generator's output."""
    if job.plugins:
        if job.protoc is None:
            raise RuntimeError("a job with plugins names no protoc")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ProtocOutcome(exit_code=None, timed_out=True, stderr="")
        args = [job.protoc, f"--descriptor_set_in={descriptors}"]
        for run in job.plugins:
            if run.plugin is not None:
                args.append(f"--plugin=protoc-gen-{run.out}={run.plugin}")
            args.append(f"--{run.out}_out={tmp / 'out' / run.out}.zip")
            options = list(run.options)
            if run.go_import_paths:
                options += _go_mappings(descriptors, dict(job.origins))
            args += [f"--{run.out}_opt={option}" for option in options]
        args += job.inputs
        errors = tmp / "plugins.txt"
        code = run_sandboxed(args, tmp, errors, remaining, job.bwrap, job.read_only)
        plugin_report = errors.read_bytes()[:_MAX_STDERR_BYTES].decode("utf-8", "replace")
        if code != 0:
            return ProtocOutcome(
                exit_code=code, timed_out=code is None, stderr=_name_plugins(plugin_report)
            )
    outs = (*job.generators, *(run.out for run in job.plugins))
    try:
        files = _read_outputs(tmp / "out", outs)
    except UnsafeOutput as exc:
        return ProtocOutcome(exit_code=1, timed_out=False, stderr=f"{GENERATION_FAILED}{exc}")
    return ProtocOutcome(
        exit_code=0,
        timed_out=False,
        stderr=report,
        descriptor_set=descriptors.read_bytes() if job.descriptor_set else b"",
        generated=files,
    )


# What a failure of the generators (not of the files' parse) is reported as, to the caller.
GENERATION_FAILED = "code generation failed: "


def _name_plugins(report: str) -> str:
    """The system protoc's report as one line saying that generation, not parsing, failed."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    return GENERATION_FAILED + ("; ".join(lines)[:1000] or "no message")


def _go_mappings(descriptors: Path, origins: dict[str, str]) -> list[str]:
    """``M<file>=<import path>;<name>`` for each file without a go_package."""
    found = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    return [
        f"M{file.name}={go_import_path(origins[file.name], file.name, file.package)}"
        for file in found.file
        if not file.options.go_package and file.name in origins
    ]


def safe_entry(name: str) -> bool:
    """Whether a zip entry's name stays inside the directory it is extracted to."""
    if not name or "\0" in name or name.startswith(("/", "\\")):
        return False
    if len(name) > 1 and name[1] == ":":  # a drive letter
        return False
    return ".." not in name.replace("\\", "/").split("/")


def _read_outputs(root: Path, outs: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """What each generator wrote into ``root/<out>.zip``, by generator and path; raises
    ``UnsafeOutput`` for an entry that would land outside the output directory."""
    found: list[tuple[str, str, str]] = []
    total = 0
    for out in dict.fromkeys(outs):
        archive_path = root / f"{out}.zip"
        if not archive_path.exists():  # nothing generated (no service for a gRPC plugin)
            continue
        with zipfile.ZipFile(archive_path) as archive:
            entries = []
            for info in archive.infolist():
                if not safe_entry(info.filename):
                    raise UnsafeOutput(
                        f"the {out} generator named an output file {info.filename[:200]!r},"
                        " outside its output directory (absolute, or climbing with '..'):"
                        " check the files' options that name paths or packages (go_package,"
                        " php_namespace, …)"
                    )
                if info.is_dir():
                    continue
                total += info.file_size
                if total > _MAX_OUTPUT_BYTES:
                    raise UnsafeOutput(f"the generators wrote more than {_MAX_OUTPUT_BYTES} bytes")
                entries.append(info)
            for info in sorted(entries, key=lambda i: i.filename.encode()):
                text = archive.read(info).decode("utf-8", "replace")
                found.append((out, info.filename, text))
    return tuple(found)


def run_sandboxed(
    args: list[str],
    workdir: Path,
    errors: Path,
    time_limit: float,
    bwrap: str | None = None,
    read_only: tuple[str, ...] = (),
) -> int | None:
    """Runs ``args`` in ``workdir`` (its output into ``errors``) as a process group of its own
    under the resource limits, and bubblewrap when ``bwrap`` is given; kills the whole group
    when it is done or ``time_limit`` seconds have passed. Returns the exit code, or None when
    the time ran out (or a signal ended it)."""
    if bwrap is not None:
        args = [bwrap, *sandbox_args([str(workdir)], read_only), "--chdir", str(workdir), *args]
    environment = {"PATH": _PLUGIN_PATH, "HOME": str(workdir), "LC_ALL": "C.UTF-8"}
    with open(errors, "wb") as sink:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=environment,
            start_new_session=True,  # its own session and process group, led by it
            preexec_fn=functools.partial(_limit, time_limit),
        )
    try:
        exited = _wait_unreaped(process.pid, time_limit)
    finally:
        # The leader is not reaped yet, so its group id is still this group's: kill every
        # process left in it (plugins, and whatever they started) before reaping.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
    if not exited or code < 0:
        return None
    return code


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Waits until process ``pid`` exits, without reaping it; False when ``timeout``
    seconds pass first."""
    try:
        descriptor = os.pidfd_open(pid)
    except OSError:  # before Linux 5.3: wait for it by polling its state, unreaped
        return _poll_unreaped(pid, timeout)
    try:
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        return bool(poller.poll(max(0, math.ceil(timeout * 1000))))
    finally:
        os.close(descriptor)


def _poll_unreaped(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def _limit(time_limit: float) -> None:
    """The resource limits of protoc and its plugins (in the child, before exec)."""
    cpu = math.ceil(time_limit) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_OUTPUT_BYTES, _MAX_OUTPUT_BYTES))
    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))


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
        os.setpgid(0, 0)
        fd = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(root)
        # The timer (SIGALRM) bounds wall time; the CPU limit backs it up; the file and
        # address space limits bound output and memory.
        _limit(time_limit)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        code = protoc.main(args)
    finally:
        os._exit(code)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """A compile worker's initializer: the kernel kills the worker when the server process
    that started it dies, even by SIGKILL, instead of leaving it an orphan that holds the
    server's pipes (a supervisor reading a killed worker's output would wait forever)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # no prctl here (not Linux): the worker ends when its call queue closes
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)
