"""Graceful shutdown of a real ``spoke-grpc serve`` process (SPEC section 2).

SIGTERM/SIGINT: health goes NOT_SERVING, new calls are refused, in-flight calls finish
within the grace period, and the process exits with code 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spoke.v1 import organization_pb2, user_pb2

from tests.conftest import free_port
from tests.harness import Client

SPOKE_GRPC = Path(sys.executable).parent / "spoke-grpc"
TOKEN_RE = re.compile(r"^spoke_[A-Za-z0-9_-]{43}$")
GRACE_SECONDS = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Reconnect quickly while the subprocess is still starting up.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclass
class Served:
    """A ``spoke-grpc serve`` subprocess with its output captured in files."""

    proc: subprocess.Popen[bytes]
    address: str
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit={self.proc.poll()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def serve_env(data_dir: Path, port: int, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPOKE_") and k not in {"DATABASE_URL", "DEFAULT_QUOTA_TIER"}
    }
    env.update(
        {
            "SPOKE_LISTEN": f"127.0.0.1:{port}",
            "SPOKE_SHUTDOWN_GRACE": str(GRACE_SECONDS),
            "SPOKE_HEALTH_INTERVAL": "0.2",
            "SPOKE_DATA_DIR": str(data_dir),
            "SPOKE_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def serving(tmp_path: Path, data_dir: Path, extra_env: Mapping[str, str]) -> Iterator[Served]:
    """Starts ``spoke-grpc serve``; kills it (and anything it left running) afterwards."""
    port = free_port()
    out, err = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(SPOKE_GRPC), "serve"],
            cwd=tmp_path,
            env=serve_env(data_dir, port, extra_env),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield Served(proc, f"127.0.0.1:{port}", out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        _stop_leftover_postgres(data_dir / "pgdata")


def _stop_leftover_postgres(pgdata: Path) -> None:
    """An embedded PostgreSQL normally stops with the server; make sure it did."""
    pid_file = pgdata / "postmaster.pid"
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_file.exists():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGQUIT)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """SPOKE_DATA_DIR for the embedded PostgreSQL: not under pytest's tmp_path, which is
    private to root (the embedded server runs as its own user) and pruned by concurrent
    pytest runs."""
    path = Path(tempfile.mkdtemp(prefix="spoke-test-serve-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_serving(served: Served, channel: grpc.Channel, timeout: float = 60) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"spoke-grpc serve exited early\n{served.describe()}")
        try:
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            time.sleep(0.1)
            continue
        if response.status == SERVING:
            return
        time.sleep(0.1)
    pytest.fail(f"not SERVING within {timeout}s\n{served.describe()}")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_waiters(db: psycopg.Connection[Any]) -> int:
    """Backends of the server that wait for a row lock in the test database."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'spoke-grpc' AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


def status_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(
    admin: Client, database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    with (
        serving(tmp_path, tmp_path / "data", {"DATABASE_URL": database_url}) as served,
        grpc.insecure_channel(served.address, options=CHANNEL_OPTIONS) as channel,
    ):
        wait_serving(served, channel)
        client = Client(channel, admin.token)
        org = client.orgs.CreateOrganization(
            organization_pb2.CreateOrganizationRequest(name="drain-org", display_name="Before")
        ).organization
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING

        with psycopg.connect(database_url) as locker:
            locker.execute("SELECT id FROM organizations WHERE id = %s FOR UPDATE", [org.id])
            in_flight = client.orgs.UpdateOrganization.future(
                organization_pb2.UpdateOrganizationRequest(
                    org=org.id,
                    organization=organization_pb2.Organization(display_name="After SIGTERM"),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                )
            )
            wait_for(lambda: lock_waiters(db) == 1, 10, "UpdateOrganization to block on the lock")
            assert not in_flight.done()

            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Health turns NOT_SERVING for watchers; the watch is then given up.
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            # New calls are refused, on the existing channel and on a new connection.
            me = user_pb2.GetCurrentUserRequest()
            assert (
                status_of(lambda: client.users.GetCurrentUser(me, timeout=5))
                == grpc.StatusCode.UNAVAILABLE
            )
            with grpc.insecure_channel(served.address) as fresh:
                check = health_pb2_grpc.HealthStub(fresh).Check
                assert (
                    status_of(lambda: check(health_pb2.HealthCheckRequest(), timeout=5))
                    == grpc.StatusCode.UNAVAILABLE
                )
            # The in-flight call is still waiting, not cancelled, and the server waits for it.
            assert not in_flight.done()
            assert served.proc.poll() is None
            locker.commit()

        updated = in_flight.result(timeout=GRACE_SECONDS).organization
        assert updated.display_name == "After SIGTERM"
        assert served.proc.wait(timeout=GRACE_SECONDS) == 0, served.describe()
        assert time.monotonic() - signalled < GRACE_SECONDS
    row = db.execute("SELECT display_name FROM organizations WHERE id = %s", [org.id]).fetchone()
    assert row == ("After SIGTERM",)
    audited = db.execute(
        "SELECT outcome FROM audit_events WHERE org_id = %s AND method LIKE %s",
        [org.id, "%/UpdateOrganization"],
    ).fetchall()
    assert audited == [("OK",)]
    assert "Traceback" not in served.stderr


def test_embedded_first_start_writes_bootstrap_token_file_and_stops_on_sigint(
    tmp_path: Path, data_dir: Path
) -> None:
    with (
        serving(tmp_path, data_dir, {}) as served,
        grpc.insecure_channel(served.address, options=CHANNEL_OPTIONS) as channel,
    ):
        wait_serving(served, channel, timeout=90)
        token_file = data_dir / "bootstrap-token"
        token = token_file.read_text().strip()
        assert TOKEN_RE.fullmatch(token)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert str(token_file) in served.stdout
        assert token not in served.stdout + served.stderr

        me = Client(channel, token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
        assert me.is_admin

        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(timeout=GRACE_SECONDS) == 0, served.describe()
    assert "Traceback" not in served.stderr
