from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spoke.v1 import organization_pb2, user_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from tests import harness
from tests.harness import Client, ServerThread, failure
from tests.proxy import DatabaseProxy

ME = user_pb2.GetCurrentUserRequest()


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_unexpected_failure_is_internal_with_a_reference_and_no_sql(
    admin: Client, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: the audit table vanishes under the server's feet.
    db.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
    try:
        error = failure(
            lambda: admin.orgs.CreateOrganization(
                organization_pb2.CreateOrganizationRequest(name="doomed-by-bug")
            )
        )
    finally:
        db.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.error_info.reason == "INTERNAL"
    assert "reference" in error.message
    for leaked in ("audit_events", "INSERT", "Traceback", "psycopg"):
        assert leaked not in error.message
    # The half-done create was rolled back with the failure.
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)
    reference = error.message.split("reference ")[1].split(")")[0]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.fixture
def proxied(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> Iterator[tuple[DatabaseProxy, Client, ServerThread]]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    proxy = DatabaseProxy(url)
    settings = Settings(
        health_check_interval_seconds=0.2, pool_timeout_seconds=1.0, pool_min_size=1
    )
    server = ServerThread(settings, proxy.url)
    try:
        token_file = server.run(ensure_bootstrap_admin(server.server.pool, tmp_path / "token"))
        assert token_file is not None
        with grpc.insecure_channel(server.address) as channel:
            yield proxy, Client(channel, token_file.read_text().strip()), server
    finally:
        server.stop()
        proxy.close()
        harness.drop_database(pg_admin_url, url)


def test_one_failed_probe_is_not_an_outage_and_two_in_a_row_are(
    pg_admin_url: str, template_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe is stepped by hand (its own loop waits an hour between probes)."""
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    proxy = DatabaseProxy(url)
    server = ServerThread(Settings(health_check_interval_seconds=3600), proxy.url)
    try:
        health = server.server.health
        with grpc.insecure_channel(server.address) as channel:
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            proxy.cut()
            server.run(health.check_once())  # one failure: a slow answer, perhaps
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            with caplog.at_level(logging.WARNING, logger="spoke_grpc.health"):
                server.run(health.check_once())  # two in a row: out of rotation
            assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            [line] = [r.getMessage() for r in caplog.records if "NOT_SERVING" in r.getMessage()]
            assert line.startswith("health: NOT_SERVING (")  # with the probe's reason
            proxy.restore()
            server.run(health.check_once())
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
        proxy.close()
        harness.drop_database(pg_admin_url, url)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return status


def test_database_outage_is_unavailable_and_recovers_without_restart(
    proxied: tuple[DatabaseProxy, Client, ServerThread],
) -> None:
    proxy, client, _ = proxied
    assert client.users.GetCurrentUser(ME).user.is_admin
    assert health_status(client.channel) == health_pb2.HealthCheckResponse.SERVING

    proxy.cut()
    error = failure(lambda: client.users.GetCurrentUser(ME))
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.error_info.reason == "DATABASE_UNAVAILABLE"
    assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds >= 1
    eventually(lambda: health_status(client.channel) == health_pb2.HealthCheckResponse.NOT_SERVING)
    assert (
        health_status(client.channel, "spoke.v1.OrganizationService")
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )

    proxy.restore()
    eventually(lambda: health_status(client.channel) == health_pb2.HealthCheckResponse.SERVING)

    def works() -> bool:
        try:
            return bool(client.users.GetCurrentUser(ME).user.is_admin)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            return False

    eventually(works)
