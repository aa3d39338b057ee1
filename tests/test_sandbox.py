"""The sandbox around the system's protoc and its plugins (issue 15, item 3).

An uploaded file decides where some generators write (Go's go_package, PHP's namespace):
outputs are read from zips whose entry names must stay inside, protoc runs as a process
group that is killed whole, under an address space limit, and under bubblewrap (no network,
a read-only system) when this machine can run it.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb

from spoke_grpc import generators
from spoke_grpc.compile_worker import (
    GENERATION_FAILED,
    MAX_ADDRESS_SPACE,
    PluginRun,
    ProtocJob,
    run_protoc,
    run_sandboxed,
    safe_entry,
)
from tests.conftest import Users
from tests.harness import ServerThread, failure
from tests.servicers.test_modules import create_module, create_org, push

PROTOC = shutil.which("protoc")
BWRAP = generators.detect(generators.search_path()).bwrap


def test_entry_names_that_are_absolute_or_climb_are_refused() -> None:
    for name in ["a.py", "acme/v1/a_pb2.py", "Acme/V1/A.php", "x..y/a.go", "..a/b"]:
        assert safe_entry(name), name
    for name in ["", "/etc/passwd", "../a", "a/../../b", "a/..", "..\\..\\Evil\\E.php"]:
        assert not safe_entry(name), name
    for name in ["\\evil", "C:\\evil", "c:evil", "a/\0b"]:
        assert not safe_entry(name), name


@pytest.mark.parametrize(
    ("language", "option"),
    [
        ("go", 'go_package = "../../x;x"'),
        ("go", 'go_package = "../../../../../../../../tmp/{escape};x"'),
        (
            "php",
            'php_namespace = "..\\\\..\\\\..\\\\..\\\\..\\\\..\\\\..\\\\..\\\\tmp\\\\{escape}"',
        ),
    ],
)
def test_an_option_naming_a_path_outside_the_output_fails_the_build_and_writes_nothing(
    users: Users, server: ServerThread, language: str, option: str
) -> None:
    if not server.server.compiler.toolchain.available(language):
        pytest.skip(f"the server cannot generate {language} (make generators)")
    escape = f"spoke-escape-{uuid.uuid4().hex[:12]}"
    owner = users.create("owner")
    create_org(owner, "acme")
    create_module(owner, "acme", "evil")
    proto = (
        f'syntax = "proto3";\npackage evil.v1;\noption {option.format(escape=escape)};\n'
        "message E { string a = 1; }\n"
    )
    push(owner, "acme", "evil", "1.0.0", {"evil/v1/e.proto": proto})
    request = pb.CompileVersionRequest(
        org="acme", module="evil", version="1.0.0", languages=[language]
    )
    error = failure(lambda: owner.modules.CompileVersion(request))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    (violation,) = error.detail(error_details_pb2.PreconditionFailure).violations
    assert violation.type == "VERSION_DOES_NOT_COMPILE"
    assert "outside its output directory (absolute, or climbing with '..')" in (
        violation.description
    )
    assert not (Path("/tmp") / escape).exists()
    assert not Path("/x").exists()
    # The same version still compiles for a language whose paths it does not decide.
    request = pb.CompileVersionRequest(
        org="acme", module="evil", version="1.0.0", languages=["python"]
    )
    assert owner.modules.CompileVersion(request).files


PLUGIN = """#!/bin/sh
# Starts a child that would outlive it, then waits for it: only a group kill stops both.
sleep {marker} &
wait
"""


def live_processes(marker: str) -> list[int]:
    """The processes whose command line holds ``marker`` and that have not exited."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def exits_within(pid: int, seconds: float) -> bool:
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        return bool(poller.poll(int(seconds * 1000)))
    finally:
        os.close(descriptor)


@pytest.mark.skipif(PROTOC is None, reason="protoc is not installed (Debian: protobuf-compiler)")
@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_a_plugin_and_its_children_are_killed_when_the_time_runs_out(
    tmp_path: Path, sandbox: str
) -> None:
    if sandbox == "bwrap" and BWRAP is None:
        pytest.skip("bubblewrap is not installed or cannot create namespaces here")
    marker = f"1000.{uuid.uuid4().int % 10**9}"  # sleep's argument: seconds
    plugin = tmp_path / "plugins" / "protoc-gen-slow"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN.format(marker=marker))
    plugin.chmod(0o755)
    job = ProtocJob(
        files=(("slow.proto", 'syntax = "proto3";\npackage slow;\nmessage S {}\n'),),
        inputs=("slow.proto",),
        time_limit_seconds=1.5,
        descriptor_set=True,
        source_info=True,
        protoc=PROTOC,
        plugins=(PluginRun("slow", str(plugin)),),
        bwrap=BWRAP if sandbox == "bwrap" else None,
        read_only=(str(plugin.parent),),
    )
    outcome = run_protoc(job)
    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    # Killed with the group: any process still there is already dying, not left running.
    assert all(exits_within(pid, 5) for pid in live_processes(marker))
    assert live_processes(marker) == []


def test_the_address_space_is_limited(tmp_path: Path) -> None:
    """3 GiB of zeros is only address space (untouched pages): refused past the limit."""
    program = f"bytearray({MAX_ADDRESS_SPACE + 2**30})"
    code = run_sandboxed([sys.executable, "-c", program], tmp_path, tmp_path / "err.txt", 30)
    assert code == 1
    assert "MemoryError" in (tmp_path / "err.txt").read_text()


SNOOP = """cat /proc/net/dev > net.txt
if touch /usr/spoke-probe 2>/dev/null; then echo writable; else echo read-only; fi > usr.txt
ls / > root.txt
"""


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed or cannot run here")
def test_under_bubblewrap_there_is_no_network_and_only_the_work_directory_is_writable(
    tmp_path: Path,
) -> None:
    code = run_sandboxed(["/bin/sh", "-c", SNOOP], tmp_path, tmp_path / "err.txt", 30, BWRAP)
    assert code == 0, (tmp_path / "err.txt").read_text()
    interfaces = [
        line.split(":")[0].strip() for line in (tmp_path / "net.txt").read_text().splitlines()[2:]
    ]
    assert interfaces == ["lo"]
    assert (tmp_path / "usr.txt").read_text().strip() == "read-only"
    shown = set((tmp_path / "root.txt").read_text().split())
    assert shown.isdisjoint({"home", "root", "work", "var", "srv", "opt"})
    assert "usr" in shown


@pytest.mark.skipif(PROTOC is None, reason="protoc is not installed (Debian: protobuf-compiler)")
def test_a_failing_plugin_is_reported_as_generation_failing_with_its_message(
    tmp_path: Path,
) -> None:
    plugin = tmp_path / "protoc-gen-broken"
    plugin.write_text("#!/bin/sh\necho 'cannot generate this' >&2\nexit 3\n")
    plugin.chmod(0o755)
    job = ProtocJob(
        files=(("ok.proto", 'syntax = "proto3";\npackage ok;\nmessage O {}\n'),),
        inputs=("ok.proto",),
        time_limit_seconds=20,
        descriptor_set=True,
        source_info=True,
        protoc=PROTOC,
        plugins=(PluginRun("broken", str(plugin)),),
        bwrap=BWRAP,
        read_only=(str(tmp_path),),
    )
    outcome = run_protoc(job)
    assert (outcome.exit_code, outcome.timed_out) == (1, False)
    assert outcome.stderr.startswith(GENERATION_FAILED)
    assert "cannot generate this" in outcome.stderr
