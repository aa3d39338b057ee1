"""Metrics (issue 11, item 1): scraped over HTTP and read with prometheus_client's own parser.

Calls by method, code and reason, latency histograms and in-flight gauges; the pool, the
usage buffer, the compile pool, the caches and the email outbox read at scrape time; off
when SPOKE_METRICS_LISTEN is unset; several workers in one scrape.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from spoke.v1 import member_pb2, organization_pb2, user_pb2

from spoke_grpc import metrics
from spoke_grpc.config import REPO_ROOT, ConfigError, Settings
from spoke_grpc.metrics import WorkerMetrics
from tests import harness
from tests.conftest import free_port
from tests.harness import ServerThread, failure
from tests.operating import Dedicated, Samples, dedicated_server, scrape, value
from tests.servicers.test_modules import create_module, create_org, proto, push
from tests.test_workers import SPOKE, worker_pids

ME = user_pb2.GetCurrentUserRequest()
CURRENT_USER = "spoke.v1.UserService/GetCurrentUser"
GET_ORG = "spoke.v1.OrganizationService/GetOrganization"


@pytest.fixture
def metered(pg_admin_url: str, template_url: str, tmp_path: Path) -> Iterator[Dedicated]:
    # Email on, towards a port where nothing listens: every send fails and is retried.
    settings = Settings(
        metrics_listen="127.0.0.1:0",
        smtp_url=f"smtp://127.0.0.1:{free_port()}",
        email_interval_seconds=0.05,
        usage_flush_interval_seconds=0.05,
        compile_workers=1,
    )
    with dedicated_server(pg_admin_url, template_url, tmp_path, settings) as dedicated:
        yield dedicated


def port_of(server: ServerThread) -> int:
    served = server.server.metrics
    assert served is not None and isinstance(served.endpoint, metrics.HttpEndpoint)
    return served.endpoint.port


def scrape_until(port: int, check: Callable[[Samples], bool]) -> Samples:
    """Scrapes until ``check`` holds (what background tasks do takes a moment)."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "the scrape never showed what was expected"
        time.sleep(0.05)


def counted(samples: Samples, method: str) -> float:
    """The calls of ``method`` counted, whatever their code and worker."""
    return sum(
        n
        for (name, labels), n in samples.items()
        if name == "spoke_rpc_calls_total" and ("method", method) in labels
    )


def at_least(name: str, minimum: float) -> Callable[[Samples], bool]:
    return lambda samples: samples.get((name, frozenset()), float("-inf")) >= minimum


def test_scrape_shows_calls_latency_pool_usage_compile_caches_and_outbox(
    metered: Dedicated,
) -> None:
    admin, port = metered.admin, port_of(metered.server)
    for _ in range(3):
        admin.users.GetCurrentUser(ME)
    failure(lambda: admin.orgs.GetOrganization(organization_pb2.GetOrganizationRequest(org="nope")))
    org = create_org(admin, "metered")
    create_module(admin, org, "common")
    push(admin, org, "common", "v1.0.0", {"a/v1/a.proto": proto("a.v1", "message A {}")})
    admin.members.CreateInvitation(
        member_pb2.CreateInvitationRequest(
            org=org, email="new@example.com", role=member_pb2.ROLE_VIEWER
        )
    )
    metrics.cache_event("test-cache", "hit")

    samples = scrape_until(port, at_least("spoke_email_failures_total", 1))
    calls = "spoke_rpc_calls_total"
    assert value(samples, calls, method=CURRENT_USER, code="OK", reason="") == 3
    assert value(samples, calls, method=GET_ORG, code="NOT_FOUND", reason="NOT_FOUND") == 1
    histogram = "spoke_rpc_duration_seconds"
    assert value(samples, f"{histogram}_count", method=CURRENT_USER) == 3
    assert value(samples, f"{histogram}_bucket", method=CURRENT_USER, le="+Inf") == 3
    assert 0 < value(samples, f"{histogram}_sum", method=CURRENT_USER) < 10
    assert value(samples, "spoke_rpc_in_flight", method=CURRENT_USER) == 0
    assert value(samples, "spoke_rpc_max_concurrent_calls") == 100

    size = value(samples, "spoke_db_pool_size")
    assert value(samples, "spoke_db_pool_min_size") == 2
    assert size >= 2
    assert 0 <= value(samples, "spoke_db_pool_idle") <= size
    assert value(samples, "spoke_db_pool_waiting") == 0
    assert value(samples, "spoke_db_pool_checkouts_total") >= 8
    assert value(samples, "spoke_db_pool_checkout_wait_seconds_total") >= 0
    assert value(samples, "spoke_db_pool_checkout_timeouts_total") == 0

    assert value(samples, "spoke_usage_failed_flushes_total") == 0
    assert value(samples, "spoke_usage_last_flush_age_seconds") < 5
    assert value(samples, "spoke_usage_unflushed_keys") >= 0

    assert value(samples, "spoke_compile_workers") == 1
    assert value(samples, "spoke_compile_running") == 0
    assert value(samples, "spoke_compile_queued") == 0
    assert value(samples, "spoke_compile_jobs_total") >= 1

    cache = "spoke_cache_events_total"
    assert value(samples, cache, cache="test-cache", event="hit") == 1

    assert value(samples, "spoke_email_sent_total") == 0
    assert value(samples, "spoke_email_outbox_pending") == 1
    assert value(samples, "spoke_email_outbox_oldest_age_seconds") > 0
    assert value(samples, "spoke_email_outbox_query_errors_total") == 0
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)

    # The failed send is recorded on its row; the usage buffer is written through.
    scrape_until(port, at_least("spoke_email_outbox_retrying", 1))
    scrape_until(port, lambda s: value(s, "spoke_usage_unflushed_requests") == 0)


def test_no_metrics_endpoint_when_unset(server: ServerThread) -> None:
    assert server.server.settings.metrics_listen is None
    assert server.server.metrics is None


def test_a_taken_metrics_address_fails_at_start(
    pg_admin_url: str, template_url: str, database_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match="cannot serve metrics on"):
            ServerThread(Settings(metrics_listen=address), database_url)


@pytest.mark.parametrize(
    "address", ["9464", "localhost", ":9464", "host:port", "127.0.0.1:70000"], ids=str
)
def test_metrics_listen_must_be_host_and_port(address: str) -> None:
    with pytest.raises(ConfigError, match="SPOKE_METRICS_LISTEN must be host:port"):
        Settings.from_env({"SPOKE_METRICS_LISTEN": address})


def test_one_scrape_shows_every_worker(
    pg_admin_url: str, template_url: str, database_url: str
) -> None:
    hub = WorkerMetrics("127.0.0.1:0")
    workers = [
        ServerThread(Settings(), database_url, metrics_socket=hub.socket(i)) for i in range(2)
    ]
    try:
        for worker, calls in zip(workers, (2, 1), strict=True):
            with grpc.insecure_channel(worker.address) as channel:
                anonymous = harness.Client(channel)
                for _ in range(calls):
                    failure(partial(anonymous.users.GetCurrentUser, ME))
        # A worker that died leaves its socket behind: it shows as down, the scrape works.
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(str(hub.socket(2)))

        # A failed call is counted a moment after its status reaches the caller.
        samples = scrape_until(hub.port, lambda s: counted(s, CURRENT_USER) == 3)
        calls = "spoke_rpc_calls_total"
        labels = {"method": CURRENT_USER, "code": "UNAUTHENTICATED", "reason": "UNAUTHENTICATED"}
        assert value(samples, calls, worker="0", **labels) == 2
        assert value(samples, calls, worker="1", **labels) == 1
        for worker in ("0", "1"):
            assert value(samples, "spoke_worker_up", worker=worker) == 1
            assert value(samples, "spoke_db_pool_size", worker=worker) >= 2
        assert value(samples, "spoke_worker_up", worker="2") == 0
    finally:
        for worker in workers:
            worker.stop()
        hub.close()
    assert not hub.directory.exists()


def test_serve_with_workers_shows_every_worker_in_one_scrape(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SPOKE_DATA_DIR": str(tmp_path),
        "SPOKE_MIGRATIONS_DIR": str(REPO_ROOT / "migrations"),
        "SPOKE_SHUTDOWN_GRACE": "2",
        "SPOKE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    process = subprocess.Popen(
        [SPOKE, "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "with 2 workers" in [process.stdout.readline() for _ in range(2)][-1]
        calls = 12
        for _ in range(calls):  # a connection each: the kernel spreads them over the workers
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                failure(partial(harness.Client(channel).users.GetCurrentUser, ME))
        # The supervisor says it serves once one worker does; the other may still be starting.
        samples = scrape_until(
            metrics_port,
            lambda s: (
                counted(s, CURRENT_USER) == calls
                and all(s.get(("spoke_worker_up", frozenset({("worker", w)}))) for w in "01")
            ),
        )
        for worker in ("0", "1"):
            assert value(samples, "spoke_worker_up", worker=worker) == 1
            assert value(samples, "spoke_db_pool_size", worker=worker) >= 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.wait(30)
        if process.stdout is not None:
            process.stdout.close()
        harness.drop_database(pg_admin_url, url)
