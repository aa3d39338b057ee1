"""A taken address is a clear error at start: servers share a port only when asked to."""

from __future__ import annotations

import asyncio

import pytest

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
