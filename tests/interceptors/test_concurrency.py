"""Overload (issue 11, item 4): past SPOKE_MAX_CONCURRENT_CALLS a call is refused at once
with RESOURCE_EXHAUSTED and RetryInfo, takes no database connection, and changes nothing;
the calls admitted complete; health is never refused."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spoke.v1 import module_pb2, organization_pb2, user_pb2

from spoke_grpc.config import ConfigError, Settings
from tests.harness import Client, failure_of
from tests.operating import Dedicated, dedicated_server
from tests.overlap import waiting_on_locks
from tests.servicers.test_modules import create_org

CAP = 4


@pytest.fixture
def capped(pg_admin_url: str, template_url: str, tmp_path: Path) -> Iterator[Dedicated]:
    # Usage flushes would take pool connections of their own: none during the test.
    settings = Settings(max_concurrent_calls=CAP, usage_flush_interval_seconds=600)
    with dedicated_server(pg_admin_url, template_url, tmp_path, settings) as dedicated:
        yield dedicated


def timed(call: Callable[[], Any]) -> tuple[float, grpc.StatusCode, Any]:
    """(seconds, status code, response or error) of one call."""
    started = time.perf_counter()
    try:
        response = call()
    except grpc.RpcError as exc:
        return time.perf_counter() - started, exc.code(), exc  # type: ignore[attr-defined]
    return time.perf_counter() - started, grpc.StatusCode.OK, response


def create_module(client: Client, org: str, name: str) -> Callable[[], Any]:
    return lambda: client.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name=name))


def module_names(db: psycopg.Connection[Any], org: str) -> set[str]:
    rows = db.execute("SELECT name FROM modules WHERE org_id = %s", [org]).fetchall()
    return {name for (name,) in rows}


def test_calls_over_the_cap_are_refused_fast_and_nothing_is_lost(capped: Dedicated) -> None:
    admin = capped.admin
    org = create_org(admin, "loaded", unlimited=True)
    pool = capped.server.server.pool
    health = health_pb2_grpc.HealthStub(admin.channel)
    with (
        psycopg.connect(capped.database_url, autocommit=True) as db,
        psycopg.connect(capped.database_url) as holder,
        ThreadPoolExecutor(max_workers=40) as clients,
    ):
        # Hold CAP writes in flight: they wait for the org row this transaction locks.
        holder.execute("SELECT 1 FROM organizations WHERE id = %s FOR UPDATE", [org])
        held = [clients.submit(timed, create_module(admin, org, f"held-{i}")) for i in range(CAP)]
        deadline = time.monotonic() + 10
        while waiting_on_locks(db) < CAP:
            assert time.monotonic() < deadline, "the held calls never reached the lock"
            time.sleep(0.01)

        checkouts = pool.get_stats().get("requests_num", 0)
        extra = [create_module(admin, org, f"extra-{i}") for i in range(30)]
        extra += [lambda: admin.users.GetCurrentUser(user_pb2.GetCurrentUserRequest())] * 10
        refused = list(clients.map(timed, extra))
        assert pool.get_stats().get("requests_num", 0) == checkouts  # no connection taken
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert not any(call.done() for call in held)

        holder.rollback()  # the held calls go on
        admitted = [call.result(timeout=30) for call in held]

        names = module_names(db, org)

    assert [code for _, code, _ in admitted] == [grpc.StatusCode.OK] * CAP
    assert {code for _, code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    slowest = max(seconds for seconds, _, _ in refused)
    assert slowest < 0.5, f"a refusal took {slowest:.3f}s"
    names_held = {f"held-{i}" for i in range(CAP)}
    assert names == names_held  # every admitted write is there, no refused one is

    exc = refused[0][2]
    error = failure_of(exc)
    assert error.error_info.reason == "TOO_MANY_CONCURRENT_CALLS"
    assert error.error_info.metadata["limit"] == str(CAP)
    assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds >= 1


def test_a_burst_past_the_cap_keeps_admitted_calls_fast_and_loses_no_write(
    capped: Dedicated,
) -> None:
    admin = capped.admin
    org = create_org(admin, "bursty", unlimited=True)
    read = organization_pb2.GetOrganizationRequest(org=org)
    baseline = [timed(lambda: admin.orgs.GetOrganization(read))[0] for _ in range(20)]

    threads, per_thread = 8, 15
    barrier = threading.Barrier(threads)

    def client(t: int) -> list[tuple[float, grpc.StatusCode, str]]:
        barrier.wait()
        results = []
        for i in range(per_thread):
            name = f"load-{t}-{i}"
            seconds, code, _ = timed(create_module(admin, org, name))
            results.append((seconds, code, name))
            results.append((*timed(lambda: admin.orgs.GetOrganization(read))[:2], ""))
        return results

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [r for batch in pool.map(client, range(threads)) for r in batch]

    codes = {code for _, code, _ in results}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    admitted = [seconds for seconds, code, _ in results if code is grpc.StatusCode.OK]
    refused = [seconds for seconds, code, _ in results if code is not grpc.StatusCode.OK]
    created = {name for _, code, name in results if name and code is grpc.StatusCode.OK}
    with psycopg.connect(capped.database_url, autocommit=True) as db:
        assert module_names(db, org) == created  # nothing lost, nothing extra
    p50, p99 = statistics.median(admitted), statistics.quantiles(admitted, n=100)[98]
    print(
        f"\nbaseline p50 {statistics.median(baseline) * 1000:.1f} ms;"
        f" under load: {len(admitted)} admitted (p50 {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms), {len(refused)} refused"
        + (f" (max {max(refused) * 1000:.1f} ms)" if refused else "")
    )
    assert p99 < 2.0
    assert not refused or max(refused) < 0.5


def test_the_cap_is_a_whole_number_and_zero_turns_it_off() -> None:
    assert Settings.from_env({"SPOKE_MAX_CONCURRENT_CALLS": "0"}).max_concurrent_calls == 0
    assert Settings.from_env({}).max_concurrent_calls == 100
    with pytest.raises(ConfigError, match="SPOKE_MAX_CONCURRENT_CALLS"):
        Settings.from_env({"SPOKE_MAX_CONCURRENT_CALLS": "-1"})
