"""Anonymous calls are rate limited per client address (issue 14, item 6): x-ratelimit-*
response metadata as members get, RESOURCE_EXHAUSTED with RetryInfo past the limit, other
addresses and callers with a token unaffected, a new window each UTC minute, bounded memory.

The server listens on ``[::]``, so a client reaches it from two addresses: 127.0.0.1 and
::1 (a grpc client cannot choose its source address; both are loopback)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb
from spoke.v1 import user_pb2

from spoke_grpc.anonymous_rate import AnonymousRateLimiter, client_key
from spoke_grpc.config import ConfigError, Settings
from tests.harness import Client, failure_of
from tests.operating import Dedicated, dedicated_server, scrape, value
from tests.servicers.test_modules import create_module, create_org

LIMIT = 3
NOON = dt.datetime(2026, 12, 4, 12, 0, 30, tzinfo=dt.UTC)


class Clock:
    """The server's clock, moved by the test."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Limited:
    dedicated: Dedicated
    clock: Clock


@pytest.fixture
def limited(pg_admin_url: str, template_url: str, tmp_path: Path) -> Iterator[Limited]:
    settings = Settings(
        anonymous_rate_limit=LIMIT, usage_flush_interval_seconds=600, metrics_listen="127.0.0.1:0"
    )
    clock = Clock(NOON)
    with dedicated_server(
        pg_admin_url, template_url, tmp_path, settings, clock=clock, listen="[::]:0"
    ) as dedicated:
        yield Limited(dedicated, clock)


def headers(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or () if k.startswith("x-ratelimit-")}


def search(client: Client) -> dict[str, str]:
    """One anonymous ListPublicModules; its x-ratelimit-* metadata."""
    _, call = client.modules.ListPublicModules.with_call(pb.ListPublicModulesRequest(query="x"))
    return headers(call.trailing_metadata())


def test_anonymous_calls_are_limited_per_address_with_ratelimit_headers(
    limited: Limited,
) -> None:
    admin = limited.dedicated.admin
    create_org(admin, "open")
    create_module(admin, "open", "shared", is_public=True)
    get_module = pb.GetModuleRequest(org="open", module="shared")
    pool = limited.dedicated.server.server.pool
    with grpc.insecure_channel(f"127.0.0.1:{limited.dedicated.server.port}") as v4:
        first = Client(v4)
        seen = [search(first) for _ in range(LIMIT)]
        assert seen == [
            {"x-ratelimit-limit": "3", "x-ratelimit-remaining": str(n), "x-ratelimit-reset": "30"}
            for n in (2, 1, 0)
        ]
        checkouts = pool.get_stats().get("requests_num", 0)
        for refused_call in (
            lambda: search(first),
            lambda: first.modules.GetModule(get_module),  # public reads share the allowance
        ):
            try:
                refused_call()
            except grpc.RpcError as exc:
                error = failure_of(exc)
                trailing = headers(exc.trailing_metadata())  # type: ignore[attr-defined]
            else:
                raise AssertionError("the call over the limit succeeded")
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.error_info.reason == "RATE_LIMIT_EXCEEDED"
            assert error.error_info.metadata["quota"] == "anonymous_requests_per_minute"
            assert error.error_info.metadata["limit"] == "3"
            assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 30
            quota = error.detail(error_details_pb2.QuotaFailure).violations[0]
            assert quota.subject == "clients/127.0.0.1"
            assert "API token" in error.message
            assert trailing == {
                "x-ratelimit-limit": "3",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": "30",
            }
        assert pool.get_stats().get("requests_num", 0) == checkouts  # refused before any work

        # Another address has its own allowance.
        with grpc.insecure_channel(f"[::1]:{limited.dedicated.server.port}") as v6:
            assert search(Client(v6))["x-ratelimit-remaining"] == "2"
            assert Client(v6).modules.GetModule(get_module).module.name == "shared"

        # A caller with a token, from the same address, is not limited (a non-member's public
        # read is charged to nobody: no x-ratelimit-* at all).
        token = admin.users.CreateUser(user_pb2.CreateUserRequest(email="reader@ex.com")).token
        for _ in range(LIMIT + 1):
            _, call = Client(v4, token).modules.GetModule.with_call(get_module)
            assert headers(call.trailing_metadata()) == {}

        # The next minute is a new window.
        limited.clock.now = NOON + dt.timedelta(seconds=30)
        assert search(first) == {
            "x-ratelimit-limit": "3",
            "x-ratelimit-remaining": "2",
            "x-ratelimit-reset": "60",
        }

    served = limited.dedicated.server.server.metrics
    assert served is not None and served.endpoint is not None
    samples = scrape(served.endpoint.port)  # type: ignore[union-attr]
    assert value(samples, "spoke_anonymous_rate_refused_total") == 2
    assert value(samples, "spoke_anonymous_rate_limit") == LIMIT


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        pytest.param("ipv4:203.0.113.7:5555", "203.0.113.7", id="ipv4"),
        pytest.param("ipv6:[2001:db8:1:2::7]:5555", "2001:db8:1:2::/64", id="ipv6"),
        pytest.param("ipv6:%5B2001:db8:1:2:ffff::9%5D:1", "2001:db8:1:2::/64", id="same-64"),
        pytest.param("ipv6:[2001:db8:1:3::7]:5555", "2001:db8:1:3::/64", id="next-64"),
        pytest.param("ipv6:%5B::1%5D:39266", "::/64", id="percent-encoded"),
        pytest.param("ipv6:[::ffff:198.51.100.4]:80", "198.51.100.4", id="v4-mapped"),
        pytest.param("ipv6:[fe80::1%25eth0]:80", "fe80::/64", id="zone"),
        pytest.param("unix:/run/spoke.sock", "unix", id="unix"),
        pytest.param("unix-abstract:spoke", "unix", id="unix-abstract"),
        pytest.param("vsock:3:50051", "vsock:3:50051", id="other-transport"),
    ],
)
def test_client_key_strips_the_port_and_groups_ipv6_by_64(peer: str, key: str) -> None:
    assert client_key(peer) == key


def test_the_limiter_forgets_the_least_recently_seen_address_beyond_its_bound() -> None:
    clock = Clock(NOON)
    limiter = AnonymousRateLimiter(2, clock=clock, max_addresses=2)
    assert [limiter.admit("a").used, limiter.admit("a").used] == [1, 2]
    assert not limiter.admit("a").allowed
    limiter.admit("b")
    limiter.admit("c")  # a is the least recently seen: forgotten
    assert (limiter.tracked, limiter.evicted) == (2, 1)
    assert limiter.admit("a").used == 1  # counted afresh; b is forgotten now
    assert limiter.admit("c").used == 2
    clock.now = NOON + dt.timedelta(minutes=1)
    assert limiter.admit("c").used == 1  # a new window
    assert limiter.tracked == 1


def test_the_anonymous_limit_is_a_setting_and_zero_turns_it_off() -> None:
    assert Settings.from_env({}).anonymous_rate_limit == 60
    assert Settings.from_env({"SPOKE_ANONYMOUS_RATE_LIMIT": "0"}).anonymous_rate_limit == 0
    with pytest.raises(ConfigError, match="SPOKE_ANONYMOUS_RATE_LIMIT"):
        Settings.from_env({"SPOKE_ANONYMOUS_RATE_LIMIT": "lots"})
