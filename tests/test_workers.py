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


def test_workers_need_a_fixed_free_port(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "SPOKE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [SPOKE, "serve", "--workers", "2", "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("spoke-grpc: error: --workers needs")
