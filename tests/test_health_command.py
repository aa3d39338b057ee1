"""``spoke-grpc health``: the probe command of Docker HEALTHCHECK and Kubernetes exec probes
(issue 11, item 7). Exit 0 only when the server answers SERVING; otherwise exit 1 with one
line on stderr saying what it saw."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoke_grpc.config import Settings
from spoke_grpc.health import LIVENESS_SERVICE
from tests.conftest import free_port
from tests.harness import ServerThread
from tests.test_cli import assert_one_line_error, run_cli


def health(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli("health", *args, cwd=cwd, database_url=None, env=env, timeout=30)


def assert_healthy(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_serving_server_is_healthy(server: ServerThread, tmp_path: Path) -> None:
    assert_healthy(health(tmp_path, "--address", server.address))


def test_the_default_address_is_spoke_listen_with_a_wildcard_host_as_loopback(
    server: ServerThread, tmp_path: Path
) -> None:
    env = {"SPOKE_LISTEN": f"0.0.0.0:{server.port}"}
    assert_healthy(health(tmp_path, env=env))


def test_a_named_service(server: ServerThread, tmp_path: Path) -> None:
    service = "spoke.v1.OrganizationService"
    assert_healthy(health(tmp_path, "--address", server.address, "--service", service))
    result = health(tmp_path, "--address", server.address, "--service", "no.such.Service")
    assert_one_line_error(result, "does not know service 'no.such.Service'")


def test_nothing_listening_is_unhealthy(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = health(tmp_path, "--address", address, "--timeout", "2")
    assert_one_line_error(result, address, "did not answer a health check: UNAVAILABLE")


@pytest.fixture
def own_server(settings: Settings, database_url: str) -> Iterator[ServerThread]:
    """A server of this test's own: its health is changed by hand. The monitor's next
    probe is an hour away, so it does not put SERVING back."""
    thread = ServerThread(
        dataclasses.replace(settings, health_check_interval_seconds=3600), database_url
    )
    try:
        yield thread
    finally:
        thread.stop()


def test_not_serving_is_unhealthy_but_alive_until_shutdown(
    own_server: ServerThread, tmp_path: Path
) -> None:
    address = own_server.address
    assert_healthy(health(tmp_path, "--address", address, "--service", LIVENESS_SERVICE))

    # What a call that finds the database unreachable does.
    own_server.run(own_server.server.health.set_serving(False))
    result = health(tmp_path, "--address", address)
    assert_one_line_error(result, f"{address} is NOT_SERVING")
    # Liveness does not follow the database: an outage must not restart every replica.
    assert_healthy(health(tmp_path, "--address", address, "--service", LIVENESS_SERVICE))

    # The start of a graceful stop: nothing is SERVING any more.
    own_server.run(own_server.server.health.shutdown())
    result = health(tmp_path, "--address", address, "--service", LIVENESS_SERVICE)
    assert_one_line_error(result, "is NOT_SERVING")
