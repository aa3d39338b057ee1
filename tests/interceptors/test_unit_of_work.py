"""One unit of work per call: one checkout, checks and writes in one transaction, a time
budget, retries of deadlocks, and overload told apart from an outage."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spoke.v1 import organization_pb2 as pb
from spoke.v1 import user_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from spoke_grpc.interceptors import unit_of_work
from tests import harness
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure

ME = user_pb2.GetCurrentUserRequest()


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def lock_waiters(db: psycopg.Connection[Any]) -> int:
    """Server backends of this database waiting for a lock."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND application_name = 'spoke-grpc'"
    ).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def holding(url: str, statement: str, params: list[Any] | None = None) -> Iterator[None]:
    """Runs ``statement`` in a transaction held open for the block, then commits."""
    with psycopg.connect(url) as conn:
        conn.execute(statement, params)
        yield
        conn.commit()


def describe(org: str, text: str) -> pb.UpdateOrganizationRequest:
    return pb.UpdateOrganizationRequest(
        org=org,
        organization=pb.Organization(description=text),
        update_mask=FieldMask(paths=["description"]),
    )


def suspend(org: str) -> pb.UpdateOrganizationRequest:
    return pb.UpdateOrganizationRequest(
        org=org,
        organization=pb.Organization(status=pb.ORGANIZATION_STATUS_SUSPENDED),
        update_mask=FieldMask(paths=["status"]),
    )


def test_at_most_one_pool_checkout_per_call(
    admin: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    admin.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="checkouts"))
    with harness.usage_flush_paused(server):
        at_most_one_checkout(admin, server, db)


def at_most_one_checkout(admin: Client, server: ServerThread, db: psycopg.Connection[Any]) -> None:
    checkouts = functools.partial(harness.checkouts, server)
    get = lambda: admin.orgs.GetOrganization(pb.GetOrganizationRequest(org="checkouts"))  # noqa: E731
    eventually(lambda: server.server.cache.enabled)
    assert checkouts(lambda: admin.orgs.UpdateOrganization(describe("checkouts", "x"))) == 1
    # The update's notification, once heard, empties the org's entries: heard before counting.
    harness.notifications_applied(server, db)
    assert checkouts(get) == 1  # not cached yet: one checkout, one statement
    assert checkouts(get) == 0  # answered from the cache: no connection at all
    assert checkouts(lambda: admin.users.GetCurrentUser(ME)) <= 1
    missing = lambda: admin.orgs.GetOrganization(pb.GetOrganizationRequest(org="nope"))  # noqa: E731
    assert checkouts(lambda: failure(missing)) == 1
    assert checkouts(lambda: failure(missing)) == 0  # remembered missing


def test_sessions_run_in_utc_under_the_server_maximum(server: ServerThread) -> None:
    async def settings() -> tuple[str, str]:
        async with server.server.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('TimeZone'), current_setting('statement_timeout')"
            )
            row = await cur.fetchone()
            assert row is not None
            return row[0], row[1]

    assert server.run(settings()) == ("UTC", "30s")


def test_a_write_and_its_audit_event_commit_in_one_transaction(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="one-txn")).organization
    owner.orgs.UpdateOrganization(describe("one-txn", "same transaction"))
    org_xmin = db.execute("SELECT xmin::text FROM organizations WHERE id = %s", [org.id]).fetchone()
    audit_xmin = db.execute(
        "SELECT xmin::text FROM audit_events WHERE org_id = %s AND method LIKE %s",
        [org.id, "%UpdateOrganization"],
    ).fetchone()
    assert org_xmin == audit_xmin


def test_a_suspension_committed_during_a_write_stops_it(
    admin: Client, users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="racy"))
    # The suspension takes the org row FOR UPDATE, then waits on the audit table.
    with holding(database_url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"):
        suspension = admin.orgs.UpdateOrganization.future(suspend("racy"))
        eventually(lambda: lock_waiters(db) == 1)
        # The owner's write resolves the org with FOR KEY SHARE: it waits for the suspension.
        write = owner.orgs.UpdateOrganization.future(describe("racy", "too late"))
        eventually(lambda: lock_waiters(db) == 2)
    suspension.result()
    error = failure(write.result)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.error_info.metadata["type"] == "ORGANIZATION_SUSPENDED"
    assert db.execute("SELECT description FROM organizations WHERE name = 'racy'").fetchone() == (
        "",
    )


def test_a_write_in_flight_finishes_before_a_suspension(
    admin: Client, users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="first-come"))
    with holding(database_url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"):
        write = owner.orgs.UpdateOrganization.future(describe("first-come", "in time"))
        eventually(lambda: lock_waiters(db) == 1)
        suspension = admin.orgs.UpdateOrganization.future(suspend("first-come"))
        eventually(lambda: lock_waiters(db) == 2)
    assert write.result().organization.description == "in time"
    assert suspension.result().organization.status == pb.ORGANIZATION_STATUS_SUSPENDED
    methods = db.execute(
        "SELECT actor_id::text FROM audit_events WHERE method LIKE %s ORDER BY id",
        ["%UpdateOrganization"],
    ).fetchall()
    assert methods == [(owner.user_id,), (admin.user_id,)]


def deadlocked_suspensions(
    admin: Client, db: psycopg.Connection[Any], database_url: str, org_id: str
) -> tuple[Any, Any]:
    """Two suspensions that deadlock: both take FOR KEY SHARE, then both want FOR UPDATE."""
    with holding(
        database_url, "SELECT 1 FROM organizations WHERE id = %s FOR NO KEY UPDATE", [org_id]
    ):
        first = admin.orgs.UpdateOrganization.future(suspend("deadlock"))
        second = admin.orgs.UpdateOrganization.future(suspend("deadlock"))
        eventually(lambda: lock_waiters(db) == 2)
    return first, second


def test_deadlocked_writes_are_retried_inside_the_server(
    admin: Client,
    users: Users,
    db: psycopg.Connection[Any],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="deadlock")).organization
    caplog.set_level(logging.INFO, logger="spoke_grpc.interceptors.unit_of_work")
    first, second = deadlocked_suspensions(admin, db, database_url, org.id)
    assert first.result().organization.status == pb.ORGANIZATION_STATUS_SUSPENDED
    assert second.result().organization.status == pb.ORGANIZATION_STATUS_SUSPENDED
    assert any("SQLSTATE 40P01); retrying" in r.getMessage() for r in caplog.records)
    outcomes = db.execute(
        "SELECT outcome FROM audit_events WHERE org_id = %s AND method LIKE %s",
        [org.id, "%UpdateOrganization"],
    ).fetchall()
    assert outcomes == [("OK",), ("OK",)]


def test_a_deadlock_that_outlasts_the_retries_is_aborted(
    admin: Client,
    users: Users,
    db: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="deadlock")).organization
    monkeypatch.setattr(unit_of_work, "MAX_ATTEMPTS", 1)
    first, second = deadlocked_suspensions(admin, db, database_url, org.id)
    codes = []
    for call in (first, second):
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError:
            error = failure(call.result)
            codes.append(error.code)
            assert error.error_info.reason == "CONCURRENT_MODIFICATION"
            assert "retry" in error.message
    assert sorted(c.name for c in codes) == ["ABORTED", "OK"]


def test_the_callers_deadline_cancels_the_statement_and_rolls_back(
    users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="hurried"))
    with holding(database_url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"):
        with pytest.raises(grpc.RpcError) as raised:
            owner.orgs.UpdateOrganization(describe("hurried", "never"), timeout=0.5)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The statement was cancelled in PostgreSQL: nothing waits on the lock any more.
        eventually(lambda: lock_waiters(db) == 0, timeout=5)
    assert db.execute(
        "SELECT description FROM organizations WHERE name = 'hurried'"
    ).fetchone() == ("",)
    assert owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="hurried")).organization


@pytest.fixture
def small_server(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> Iterator[tuple[Client, ServerThread, str]]:
    """A server of its own with a pool of two connections and a short time limit."""
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    settings = Settings(
        pool_min_size=2,
        pool_max_size=2,
        pool_timeout_seconds=0.5,
        statement_timeout_seconds=3,
        health_check_interval_seconds=0.1,
    )
    server = ServerThread(settings, url)
    try:
        token_file = server.run(ensure_bootstrap_admin(server.server.pool, tmp_path / "token"))
        assert token_file is not None
        with grpc.insecure_channel(server.address) as channel:
            yield Client(channel, token_file.read_text().strip()), server, url
    finally:
        server.stop()
        harness.drop_database(pg_admin_url, url)


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return status


def test_a_saturated_pool_is_overload_not_an_outage(
    small_server: tuple[Client, ServerThread, str],
) -> None:
    client, _, url = small_server
    client.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="busy"))
    with holding(url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"), harness.connect(url) as db:
        blocked = [
            client.orgs.UpdateOrganization.future(describe("busy", str(i))) for i in range(2)
        ]
        eventually(lambda: lock_waiters(db) == 2)
        error = failure(lambda: client.users.GetCurrentUser(ME))
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.error_info.reason == "SERVER_OVERLOADED"
        assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds >= 1
        time.sleep(0.3)  # several health probes, on their own connection
        assert health(client.channel) == health_pb2.HealthCheckResponse.SERVING
    for call in blocked:
        assert call.result().organization.name == "busy"
    assert client.users.GetCurrentUser(ME).user.is_admin


def test_the_server_maximum_bounds_calls_without_a_deadline(
    small_server: tuple[Client, ServerThread, str],
) -> None:
    client, _, url = small_server
    client.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="slow"))
    with holding(url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"):
        error = failure(lambda: client.orgs.UpdateOrganization(describe("slow", "x"), timeout=30))
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.error_info.reason == "DEADLINE_EXCEEDED"
    assert "rolled back" in error.message
    org = client.orgs.GetOrganization(pb.GetOrganizationRequest(org="slow")).organization
    assert org.description == ""


def test_a_call_the_client_cancels_is_rolled_back(
    users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="cancelled"))
    with holding(database_url, "LOCK TABLE audit_events IN EXCLUSIVE MODE"):
        call = owner.orgs.UpdateOrganization.future(describe("cancelled", "never"))
        eventually(lambda: lock_waiters(db) == 1)
        assert call.cancel()
        eventually(lambda: lock_waiters(db) == 0, timeout=10)
    org = owner.orgs.GetOrganization(pb.GetOrganizationRequest(org="cancelled")).organization
    assert org.description == ""
