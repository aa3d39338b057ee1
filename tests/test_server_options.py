"""Long-lived HTTP/2 connections (issue 11, item 4): closed after SPOKE_MAX_CONNECTION_AGE so
clients rebalance over replicas behind an L4 load balancer, and kept alive by pings while
idle so a load balancer does not reap them."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spoke_grpc.config import Settings
from spoke_grpc.server import server_options
from tests.harness import ServerThread


def test_options_carry_connection_age_and_keepalive() -> None:
    options = dict(server_options(Settings()))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.so_reuseport"] == 0
    assert dict(server_options(Settings(), reuse_port=True))["grpc.so_reuseport"] == 1


def test_zero_leaves_grpc_defaults() -> None:
    settings = Settings(max_connection_age_seconds=0, keepalive_time_seconds=0)
    options = dict(server_options(settings))
    assert "grpc.max_connection_age_ms" not in options
    assert "grpc.keepalive_time_ms" not in options


@pytest.mark.parametrize(
    ("name", "field", "raw", "expected"),
    [
        ("SPOKE_MAX_CONNECTION_AGE", "max_connection_age_seconds", "60", 60.0),
        ("SPOKE_MAX_CONNECTION_AGE_GRACE", "max_connection_age_grace_seconds", "5", 5.0),
        ("SPOKE_KEEPALIVE_TIME", "keepalive_time_seconds", "0", 0.0),
    ],
    ids=lambda v: str(v),
)
def test_settings_are_read(name: str, field: str, raw: str, expected: float) -> None:
    assert getattr(Settings.from_env({name: raw}), field) == expected


def closed_after_ready(states: list[grpc.ChannelConnectivity]) -> bool:
    ready = grpc.ChannelConnectivity.READY
    return ready in states and grpc.ChannelConnectivity.IDLE in states[states.index(ready) :]


def test_an_old_connection_is_closed_and_the_client_reconnects(database_url: str) -> None:
    settings = Settings(max_connection_age_seconds=0.3, max_connection_age_grace_seconds=1)
    server = ServerThread(settings, database_url)
    states: list[grpc.ChannelConnectivity] = []
    try:
        with grpc.insecure_channel(server.address) as channel:
            channel.subscribe(states.append, try_to_connect=True)
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            deadline = time.monotonic() + 5
            while not closed_after_ready(states):
                assert time.monotonic() < deadline, f"the connection was never closed: {states}"
                time.sleep(0.05)
            # The client connects again, transparently.
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            while states.count(grpc.ChannelConnectivity.READY) < 2:  # reported asynchronously
                assert time.monotonic() < deadline, f"no second connection: {states}"
                time.sleep(0.01)
    finally:
        server.stop()
