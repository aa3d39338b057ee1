"""A taken address is a clear error at start: servers share a port only when asked to."""

from __future__ import annotations

import asyncio
import socket

import pytest

from spoke_grpc import workers
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.server import SpokeServer


def test_a_second_server_on_a_taken_address_fails_at_start(database_url: str) -> None:
    async def scenario() -> str:
        first = SpokeServer(Settings(), database_url)
        port = await first.start("127.0.0.1:0")
        try:
            with pytest.raises(ConfigError) as raised:
                await SpokeServer(Settings(), database_url).start(f"127.0.0.1:{port}")
            return str(raised.value)
        finally:
            await first.stop(0)

    message = asyncio.run(scenario())
    assert message.startswith("cannot listen on 127.0.0.1:")
    assert "in use or not available" in message


def test_workers_of_one_serve_may_share_a_port(database_url: str) -> None:
    async def scenario() -> tuple[int, int]:
        first = SpokeServer(Settings(), database_url, reuse_port=True)
        port = await first.start("127.0.0.1:0")
        second = SpokeServer(Settings(), database_url, reuse_port=True)
        try:
            return port, await second.start(f"127.0.0.1:{port}")
        finally:
            await second.stop(0)
            await first.stop(0)

    port, shared = asyncio.run(scenario())
    assert shared == port


def test_the_start_check_refuses_a_listener_but_not_a_stopped_servers_time_wait() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ConfigError, match="in use"):
            workers.check_free(address)
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server's end closes first: it waits in TIME_WAIT
            client.recv(1)
    workers.check_free(address)  # as grpc's own bind (SO_REUSEADDR) would succeed
    workers.check_free("127.0.0.1:0")  # any free port
