"""The service through pgbouncer in transaction-pooling mode (issue 11, item 5).

Two real ``spoke-grpc serve`` processes run with ``DATABASE_URL`` on a real pgbouncer
(Debian's 1.18: no prepared statements across transactions, no libpq ``options``) and
``SPOKE_DIRECT_DATABASE_URL`` on the database itself, configured the way the README tells
operators to: ``SPOKE_PREPARE_THRESHOLD=none``, ``SPOKE_STARTUP_OPTIONS=false``, the
statement timeout set on the database. The database's own time zone is set to one with a
half-hour offset, so only the service's own ``SET timezone`` keeps usage hours valid.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from spoke.v1 import member_pb2, organization_pb2, quota_pb2, user_pb2
from spoke.v1 import module_pb2 as pb

from tests import harness, pgbouncer
from tests.harness import Client, all_pages, failure
from tests.pgbouncer import Pgbouncer
from tests.servicers.test_modules import SIMPLE, code_of, proto
from tests.test_cli import assert_one_line_error, serve_expecting_failure
from tests.test_shutdown import (
    CHANNEL_OPTIONS,
    NOT_SERVING,
    SERVING,
    serving,
    wait_serving,
)

pytestmark = pytest.mark.skipif(
    pgbouncer.binary() is None,
    reason="pgbouncer is not installed (.ci/run installs Debian's pgbouncer when run as root)",
)

STATEMENT_TIMEOUT = "30"
MODULE_LIMIT = 10  # the default tier's


@pytest.fixture
def database(fresh_url: str) -> str:
    """An empty database whose own defaults are what a careless server might have."""
    name = sql.Identifier(harness.database_name(fresh_url))
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        # Half-hour offset: a session left in it would break the usage hours' CHECK.
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Kolkata'").format(name))
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET statement_timeout = {}").format(
                name, sql.Literal(f"{STATEMENT_TIMEOUT}s")
            )
        )
    return fresh_url


@pytest.fixture
def bouncer(database: str) -> Iterator[Pgbouncer]:
    with pgbouncer.running(database) as running:
        yield running


def pooled_env(bouncer: Pgbouncer, direct_url: str, token_file: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": bouncer.url,
        "SPOKE_DIRECT_DATABASE_URL": direct_url,
        "SPOKE_PREPARE_THRESHOLD": "none",
        "SPOKE_STARTUP_OPTIONS": "false",
        "SPOKE_STATEMENT_TIMEOUT": STATEMENT_TIMEOUT,
        "SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file),
        "SPOKE_POOL_MIN_SIZE": "2",
        "SPOKE_POOL_MAX_SIZE": "8",
        "SPOKE_COMPILE_WORKERS": "1",
        "SPOKE_USAGE_FLUSH_INTERVAL": "0.2",
    }


def test_two_servers_through_pgbouncer_in_transaction_mode(
    bouncer: Pgbouncer, database: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "bootstrap-token"
    env = pooled_env(bouncer, database, token_file)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serving(tmp_path / "a", tmp_path / "a", env) as one,
        serving(tmp_path / "b", tmp_path / "b", env) as two,
        grpc.insecure_channel(one.address, options=CHANNEL_OPTIONS) as ch1,
        grpc.insecure_channel(two.address, options=CHANNEL_OPTIONS) as ch2,
    ):
        # Both started at once: migrations (direct, under yoyo's lock) and the bootstrap
        # admin (direct, under an advisory transaction lock) happened exactly once.
        wait_serving(one, ch1)
        wait_serving(two, ch2)
        token = token_file.read_text().strip()
        admin1, admin2 = Client(ch1, token), Client(ch2, token)

        dev = admin1.users.CreateUser(user_pb2.CreateUserRequest(email="dev@example.com"))
        org = admin1.orgs.CreateOrganization(
            organization_pb2.CreateOrganizationRequest(name="bouncer-org")
        ).organization.id
        admin2.members.AddMember(
            member_pb2.AddMemberRequest(org=org, user=dev.user.id, role=member_pb2.ROLE_DEVELOPER)
        )
        dev1, dev2 = Client(ch1, dev.token), Client(ch2, dev.token)
        dev1.modules.CreateModule(pb.CreateModuleRequest(org=org, name="core"))
        pushed = dev2.modules.CreateVersion(version_request(org, "v1.0.0")).version
        assert [f.path for f in pushed.files] == list(SIMPLE)

        # Concurrent writes from both processes: the module quota and the version's
        # uniqueness are decided in transactions that pgbouncer must keep whole.
        creates = [
            (dev1 if i % 2 else dev2, pb.CreateModuleRequest(org=org, name=f"m-{i:02d}"))
            for i in range(20)
        ]
        pushes = [(dev1 if i % 2 else dev2, version_request(org, "v1.1.0")) for i in range(4)]
        with ThreadPoolExecutor(max_workers=24) as executor:
            created = [
                executor.submit(code_of, lambda c=c, r=r: c.modules.CreateModule(r))
                for c, r in creates
            ]
            versions = [
                executor.submit(code_of, lambda c=c, r=r: c.modules.CreateVersion(r))
                for c, r in pushes
            ]
            created_codes = [f.result() for f in created]
            version_codes = [f.result() for f in versions]
        assert created_codes.count("OK") == MODULE_LIMIT - 1, created_codes
        assert created_codes.count("RESOURCE_EXHAUSTED") == 20 - (MODULE_LIMIT - 1)
        assert sorted(version_codes) == ["ALREADY_EXISTS"] * 3 + ["OK"], version_codes

        # Pages alternate between the processes (page tokens are valid on every replica).
        clients = [dev1, dev2]

        def page(token: str) -> Any:
            client = clients.pop(0)
            clients.append(client)
            request = pb.ListModulesRequest(org=org, page_size=3, page_token=token)
            return client.modules.ListModules(request)

        pages = all_pages(page, "modules")
        names = sorted(m.name for p in pages for m in p)
        assert len(pages) == 4
        assert len(names) == MODULE_LIMIT == len(set(names))
        assert "core" in names

        # The usage flush (hour rows CHECKed to be whole UTC hours) worked through
        # pgbouncer: the sessions run in UTC although the database's default is not.
        usage = wait_for_usage(dev1, org)
        assert usage.modules == MODULE_LIMIT
        assert usage.versions == 2

        # What went through pgbouncer: the request pools, on a few shared server
        # connections; the health probes, the mailer and LISTEN connect directly.
        apps = {c["application_name"] for c in bouncer.clients()}
        assert "spoke-grpc" in apps, apps
        assert not apps & {"spoke-grpc-health", "spoke-grpc-mailer", "spoke-grpc-cache"}
        assert len(bouncer.servers()) <= pgbouncer.SERVER_CONNECTIONS

        for served in (one, two):
            served.proc.send_signal(signal.SIGTERM)
        for served in (one, two):
            assert served.proc.wait(timeout=20) == 0, served.describe()
            problems = [
                line
                for line in served.stderr.splitlines()
                if " ERROR " in line or " WARNING " in line or "Traceback" in line
            ]
            assert not problems, served.describe()

    with psycopg.connect(database) as conn:
        assert count(conn, "SELECT count(*) FROM users WHERE is_admin") == 1
        assert count(conn, "SELECT count(*) FROM modules") == MODULE_LIMIT
        assert count(conn, "SELECT count(*) FROM module_versions") == 2
        assert count(conn, "SELECT count(*) FROM organization_members") == 2
        hourly = count(conn, "SELECT coalesce(sum(requests), 0) FROM org_api_requests_hourly")
        assert hourly >= 20 + 4 + 4  # the developer's calls, refused ones included
    log = bouncer.log_text()
    assert "unsupported startup parameter" not in log
    assert "prepared statement" not in log


def test_health_stays_not_serving_while_pgbouncer_is_down_though_the_database_is_up(
    bouncer: Pgbouncer, database: str, tmp_path: Path
) -> None:
    """The probe connects directly, past pgbouncer; when pgbouncer is the part that is down,
    health must not flip back to SERVING while every call through the pool fails."""
    token_file = tmp_path / "bootstrap-token"
    env = pooled_env(bouncer, database, token_file) | {"SPOKE_POOL_TIMEOUT": "1"}
    with (
        serving(tmp_path, tmp_path, env) as served,
        grpc.insecure_channel(served.address, options=CHANNEL_OPTIONS) as channel,
    ):
        wait_serving(served, channel)
        admin = Client(channel, token_file.read_text().strip())
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

        def list_orgs() -> str:  # a read that needs the database, not only the caches
            return code_of(
                lambda: admin.orgs.ListOrganizations(organization_pb2.ListOrganizationsRequest())
            )

        assert list_orgs() == "OK"
        bouncer.stop()
        codes = {list_orgs() for _ in range(3)}
        assert codes == {"UNAVAILABLE"}, codes
        deadline = time.monotonic() + 5
        while status() != NOT_SERVING:
            assert time.monotonic() < deadline, "health never left SERVING"
            time.sleep(0.05)
        # 15 probe intervals: the probe's direct connection answers all along, yet
        # health stays out of rotation, and calls fail as unavailable, not as bugs.
        seen = set()
        until = time.monotonic() + 3
        while time.monotonic() < until:
            seen.add(status())
            time.sleep(0.1)
        assert seen == {NOT_SERVING}
        # The pool's broken connections are gone by now: a call waits for a new one that
        # cannot be opened. That is an outage (the pool had room to grow), not overload.
        error = failure(
            lambda: admin.orgs.ListOrganizations(organization_pb2.ListOrganizationsRequest())
        )
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.message == "the database is unavailable; retry with backoff"

        bouncer.start()
        deadline = time.monotonic() + 30
        while status() != SERVING:
            assert time.monotonic() < deadline, "health never came back"
            time.sleep(0.1)
        assert list_orgs() == "OK"
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=20) == 0, served.describe()
    assert "Traceback" not in served.stderr


def test_libpq_options_through_pgbouncer_are_one_clear_error(
    bouncer: Pgbouncer, database: str, tmp_path: Path
) -> None:
    """With the defaults, pgbouncer refuses the connection; the error says what to set."""
    env = {"SPOKE_DIRECT_DATABASE_URL": database, "SPOKE_PREPARE_THRESHOLD": "none"}
    result = serve_expecting_failure(tmp_path, bouncer.url, env)
    assert_one_line_error(result, "unsupported startup parameter", "SPOKE_STARTUP_OPTIONS=false")
    assert pgbouncer.PASSWORD not in result.stderr


def version_request(org: str, version: str) -> pb.CreateVersionRequest:
    files = dict(SIMPLE)
    if version != "v1.0.0":
        files["acme/core/v1/more.proto"] = proto("acme.core.v1", "message More {}")
    return pb.CreateVersionRequest(
        org=org,
        module="core",
        version=version,
        files=[pb.ProtoFile(path=path, content=content) for path, content in files.items()],
    )


def wait_for_usage(client: Client, org: str) -> quota_pb2.Usage:
    deadline = time.monotonic() + 10
    while True:
        usage: quota_pb2.Usage = client.quotas.GetUsage(quota_pb2.GetUsageRequest(org=org)).usage
        if usage.api_requests_this_hour > 0 or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
