"""``serve --workers N``: N processes on one port, supervised, drained together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import user_pb2

from spoke_grpc import cpus
from spoke_grpc.config import REPO_ROOT
from tests import harness
from tests.conftest import free_port
from tests.harness import Client

SPOKE = str(Path(sys.executable).parent / "spoke-grpc")


def worker_pids(supervisor: int) -> set[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(supervisor)], capture_output=True, text=True, check=False
    )
    return {int(pid) for pid in found.stdout.split()}


def until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture
def supervised(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SPOKE_DATA_DIR": str(tmp_path),
        "SPOKE_MIGRATIONS_DIR": str(REPO_ROOT / "migrations"),
        "SPOKE_SHUTDOWN_GRACE": "2",
    }
    process = subprocess.Popen(
        [SPOKE, "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[-1].startswith(f"spoke-grpc serving on 127.0.0.1:{port} with 2 workers")
        yield process, f"127.0.0.1:{port}", tmp_path / "bootstrap-token"
    finally:
        if process.poll() is None:
            process.kill()
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        harness.drop_database(pg_admin_url, url)


def test_workers_share_the_port_restart_and_drain_together(
    supervised: tuple[subprocess.Popen[str], str, Path], pg_admin_url: str
) -> None:
    process, address, token_file = supervised
    workers = worker_pids(process.pid)
    assert len(workers) == 2
    with grpc.insecure_channel(address) as channel:
        admin = Client(channel, token_file.read_text().strip())
        me = admin.users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
        assert me.is_admin
        # Each worker has a pool of its own on the database.
        with psycopg.connect(pg_admin_url) as db:
            backends = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'spoke-grpc'"
            ).fetchone()
        assert backends is not None and backends[0] >= 4  # two pools of at least two
        # A worker that dies is started again; the service goes on.
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        until(lambda: len(worker_pids(process.pid) - {victim}) == 2)
        for _ in range(10):
            admin.users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert worker_pids(process.pid) == set()
    assert process.stderr is not None
    log = process.stderr.read()
    assert f"(pid {victim}) exited" in log and "restarting" in log


@pytest.mark.parametrize("count", ["2", "auto"])
def test_workers_need_a_fixed_free_port(database_url: str, tmp_path: Path, count: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "SPOKE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [SPOKE, "serve", "--workers", count, "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("spoke-grpc: error: --workers needs")


# --- --workers auto: the CPUs this process may use -------------------------------------------


def _cgroup_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "affinity", "expected"),
    [
        pytest.param({}, 8, 8, id="no-cgroup-files"),
        pytest.param(
            {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "max 100000\n"},
            8,
            8,
            id="v2-no-quota",
        ),
        pytest.param(
            {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "150000 100000\n"},
            8,
            2,
            id="v2-quota-rounded-up",
        ),
        pytest.param(
            {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "800000 100000\n"},
            3,
            3,
            id="v2-affinity-smaller",
        ),
        pytest.param(
            {
                "proc/self/cgroup": "0::/kubepods/pod1/app\n",
                "sys/fs/cgroup/kubepods/pod1/app/cpu.max": "max 100000\n",
                "sys/fs/cgroup/kubepods/pod1/cpu.max": "100000 100000\n",
                "sys/fs/cgroup/kubepods/cpu.max": "400000 100000\n",
            },
            16,
            1,
            id="v2-parent-quota",
        ),
        pytest.param(
            {
                "proc/self/cgroup": "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            16,
            3,
            id="v1-quota",
        ),
        pytest.param(
            {
                "proc/self/cgroup": "3:cpu,cpuacct:/docker/abc\n",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            4,
            4,
            id="v1-no-quota-container-root",
        ),
        pytest.param(
            {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "20000 100000\n"},
            4,
            1,
            id="at-least-one",
        ),
    ],
)
def test_available_cpus(
    tmp_path: Path, files: dict[str, str], affinity: int, expected: int
) -> None:
    root = _cgroup_files(tmp_path, files)
    assert cpus.available_cpus(root, affinity=affinity) == expected


def test_available_cpus_here_is_within_the_affinity() -> None:
    assert 1 <= cpus.available_cpus() <= len(os.sched_getaffinity(0))


def test_a_bad_worker_count_is_a_clear_error(tmp_path: Path) -> None:
    bad = subprocess.run(
        [SPOKE, "serve", "--workers", "many"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "expected a number of workers or 'auto', got 'many'" in bad.stderr
