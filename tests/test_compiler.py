"""The proto compiler on its own: protoc in a bounded worker pool, errors as field violations,
dependency layout conflicts, descriptors, and the time limit."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from spoke_grpc import compile_worker
from spoke_grpc.compile_queue import SERVER
from spoke_grpc.compiler import (
    Compiler,
    CompileResult,
    DependencyFiles,
    SourceFile,
    TimeLimitReached,
)
from spoke_grpc.errors import FieldViolation

GOOD = 'syntax = "proto3";\npackage good;\nmessage Good {}\n'


@pytest.fixture(scope="module")
def compiler() -> Iterator[Compiler]:
    compiler = Compiler(2)
    compiler.start()
    yield compiler
    asyncio.run(compiler.stop())


def compile_files(
    compiler: Compiler,
    files: dict[str, str],
    dependencies: dict[str, dict[str, str]] | None = None,
    *,
    descriptor_set: bool = False,
) -> CompileResult:
    sources = [SourceFile(path, content) for path, content in files.items()]
    deps = [
        DependencyFiles(label, tuple(SourceFile(p, c) for p, c in dep_files.items()))
        for label, dep_files in (dependencies or {}).items()
    ]
    return asyncio.run(compiler.compile(sources, deps, descriptor_set=descriptor_set))


def test_good_files_compile_into_a_descriptor_set_with_imports(compiler: Compiler) -> None:
    files = {
        "app/app.proto": 'syntax = "proto3";\npackage app;\nimport "dep/dep.proto";\n'
        'import "google/protobuf/timestamp.proto";\n'
        "message App { dep.Dep dep = 1; google.protobuf.Timestamp at = 2; }\n"
    }
    dependencies = {
        "acme/dep@1.0.0": {"dep/dep.proto": 'syntax = "proto3";\npackage dep;\nmessage Dep {}\n'}
    }
    result = compile_files(compiler, files, dependencies, descriptor_set=True)
    assert result.violations == ()
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(result.descriptor_set)
    assert sorted(f.name for f in descriptors.file) == [
        "app/app.proto",
        "dep/dep.proto",
        "google/protobuf/timestamp.proto",
    ]


def test_unused_imports_are_warnings_not_errors(compiler: Compiler) -> None:
    files = {"a.proto": 'syntax = "proto3";\nimport "google/protobuf/empty.proto";\nmessage A {}\n'}
    assert compile_files(compiler, files).violations == ()


def test_conflicting_dependency_paths_name_both_providers(compiler: Compiler) -> None:
    dependencies = {
        "acme/one@1.0.0": {"shared/x.proto": GOOD},
        "globex/two@2.0.0": {"shared/x.proto": GOOD, "two.proto": GOOD},
    }
    result = compile_files(compiler, {"mine.proto": GOOD, "two.proto": GOOD}, dependencies)
    assert result.violations == (
        FieldViolation(
            "dependencies",
            "'shared/x.proto' is provided by both acme/one@1.0.0 and globex/two@2.0.0;"
            " depend on only one of them",
        ),
        FieldViolation(
            "files[1].path",
            "'two.proto' is also a file of dependency globex/two@2.0.0;"
            " rename it or drop the dependency",
        ),
    )


def test_errors_map_to_files_with_line_and_column(compiler: Compiler) -> None:
    files = {
        "fine.proto": GOOD,
        "bad.proto": 'syntax = "proto3";\nmessage Bad {\n  int32 = 1;\n}\n',
        "missing.proto": 'syntax = "proto3";\nimport "nowhere/x.proto";\n',
    }
    violations = compile_files(compiler, files).violations
    assert [v.field for v in violations] == ["files[1].content", "files[2].content"]
    assert violations[0].description == "bad.proto:3:9: Expected field name."
    assert violations[1].description == (
        'missing.proto:2:1: import "nowhere/x.proto" not found: no file of this version,'
        " of its dependencies or of the well-known types has that path"
    )


def _blocked_protoc(time_limit: int) -> tuple[bool, int]:
    """In a fresh process: protoc reading a FIFO that never delivers, under ``time_limit``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.mkfifo(root / "stuck.proto")
        args = ["protoc", "--proto_path=.", "--descriptor_set_out=/dev/null", "stuck.proto"]
        status = compile_worker._fork_protoc(root, root / "stderr.txt", args, time_limit)
        return os.WIFSIGNALED(status), os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def test_a_compile_that_runs_too_long_is_killed() -> None:
    # A spawned process, so that the fork happens outside the test process's threads.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        killed, signal_number = pool.submit(_blocked_protoc, 1).result(timeout=30)
    assert killed and signal_number == signal.SIGALRM


def test_a_timed_out_compile_is_reported_as_such() -> None:
    job = compile_worker.ProtocJob(
        files=(("a.proto", GOOD),), inputs=("a.proto",), time_limit_seconds=0
    )
    outcome = compile_worker.run_protoc(job)
    assert outcome.exit_code is None and outcome.timed_out


def test_compile_needs_a_started_compiler() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(Compiler(1).check([SourceFile("a.proto", GOOD)], []))


def test_the_build_key_holds_the_versions_of_the_generators_a_build_uses(tmp_path: Path) -> None:
    """An upgraded plugin is a cache miss for its languages, and for them only."""
    empty = tmp_path / "empty"
    empty.mkdir()
    fake = tmp_path / "fake"
    fake.mkdir()
    plugin = fake / "protoc-gen-go"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    bare, other = (
        Compiler(1, generators_path=[str(empty)]),
        Compiler(1, generators_path=[str(fake)]),
    )
    assert bare.toolchain.missing("go") == ["protoc", "protoc-gen-go", "protoc-gen-go-grpc"]
    assert other.toolchain.missing("go") == ["protoc", "protoc-gen-go-grpc"]
    assert bare.build_key("d", ["e"], ["python"]) == other.build_key("d", ["e"], ["python"])
    assert bare.build_key("d", ["e"], ["go"]) != other.build_key("d", ["e"], ["go"])
    plugin.write_text("#!/bin/sh\n# another build\n")
    again = Compiler(1, generators_path=[str(fake), str(empty)])
    assert again.build_key("d", ["e"], ["go"]) != other.build_key("d", ["e"], ["go"])


def _die_once(marker: str, other: str) -> str:
    """In a worker: the first time, once ``other`` has started too, kill this worker process
    (as a crash would); on the retry, answer."""
    if os.path.exists(marker):
        return "answered"
    Path(marker).touch()
    while not os.path.exists(other):  # both jobs are running: the break hits both
        time.sleep(0.001)
    os._exit(1)


def _wait_to_be_killed(marker: str) -> str:
    """In a worker: the first time, block until the broken pool's workers are terminated;
    on the retry, answer."""
    if os.path.exists(marker):
        return "answered"
    Path(marker).touch()
    signal.pause()
    return "never"


def test_a_broken_pool_is_replaced_once_not_by_every_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs run when one kills its worker: both see the pool broken; one new pool
    replaces it, and both jobs are retried on it."""
    starts: list[int] = []
    original = Compiler.start

    def counting_start(self: Compiler) -> None:
        starts.append(1)
        original(self)

    monkeypatch.setattr(Compiler, "start", counting_start)
    compiler = Compiler(2)
    compiler.start()
    killer, blocked = str(tmp_path / "killer"), str(tmp_path / "blocked")

    async def both() -> list[str]:
        return list(
            await asyncio.gather(
                compiler.offload(_die_once, killer, blocked),
                compiler.offload(_wait_to_be_killed, blocked),
            )
        )

    try:
        assert asyncio.run(both()) == ["answered", "answered"]
        assert len(starts) == 2  # the first pool, and one replacement
        assert compiler.in_flight == 0
    finally:
        asyncio.run(compiler.stop())


def _spin() -> None:
    while True:
        pass


def test_work_offloaded_under_the_time_limit_is_stopped_and_the_worker_stays() -> None:
    """What CheckCompatibility's comparison runs under: the compiles' time limit."""
    compiler = Compiler(1, time_limit_seconds=0.2)
    compiler.start()

    async def run() -> int:
        with pytest.raises(TimeLimitReached):
            await compiler.offload_limited(SERVER, _spin)
        return await compiler.offload_limited(SERVER, abs, -3)  # the same worker, again

    try:
        assert asyncio.run(run()) == 3
        assert (compiler.pool_replacements, compiler.in_flight) == (0, 0)
    finally:
        asyncio.run(compiler.stop())


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped has died)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_compile_workers_die_with_their_server_process() -> None:
    """Killed by SIGKILL, a server leaves no compile worker behind: an orphan would hold the
    server's pipes open, and a supervisor reading them would wait forever."""
    script = (
        "import multiprocessing, time\n"
        "from spoke_grpc.compiler import Compiler\n"
        "Compiler(2).start()\n"
        "print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None
        workers = [int(pid) for pid in server.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        server.kill()
        server.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "compile workers outlived their server"
        time.sleep(0.05)  # polling the kernel's record of the processes, not a guess
