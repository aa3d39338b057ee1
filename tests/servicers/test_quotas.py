"""QuotaService, the hourly API quota and the usage counters, on real servers and a real clock
that tests can move (``FakeClock``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from spoke.v1 import member_pb2, user_pb2
from spoke.v1 import module_pb2 as mpb
from spoke.v1 import organization_pb2 as opb
from spoke.v1 import quota_pb2 as qpb

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from spoke_grpc.tiers import GIB
from spoke_grpc.types import Role
from spoke_grpc.usage import UsageBuffer
from tests import harness
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure
from tests.interceptors.test_concurrency import waiting_on_locks
from tests.proxy import DatabaseProxy


def limits(client: Client, org: str) -> qpb.Quotas:
    quotas: qpb.Quotas = client.quotas.GetQuotas(qpb.GetQuotasRequest(org=org)).quotas
    return quotas


def update(client: Client, org: str, paths: list[str], **values: Any) -> qpb.Quotas:
    request = qpb.UpdateQuotasRequest(
        org=org, quotas=qpb.Quotas(**values), update_mask=FieldMask(paths=paths)
    )
    quotas: qpb.Quotas = client.quotas.UpdateQuotas(request).quotas
    return quotas


def describe(client: Client, org: str, text: str) -> Any:
    return client.orgs.UpdateOrganization(
        opb.UpdateOrganizationRequest(
            org=org,
            organization=opb.Organization(description=text),
            update_mask=FieldMask(paths=["description"]),
        )
    )


# --- limits -------------------------------------------------------------------------------


def test_new_orgs_get_the_small_tier(users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="tiny"))
    quotas = limits(owner, "tiny")
    assert quotas.tier == opb.QUOTA_TIER_SMALL
    assert (
        quotas.max_modules,
        quotas.max_versions_per_module,
        quotas.max_storage_bytes,
        quotas.max_compile_jobs_per_month,
        quotas.max_api_requests_per_hour,
    ) == (10, 100, 5 * GIB, 5_000, 5_000)


def test_only_platform_admins_change_quotas(admin: Client, users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="capped"))
    error = failure(lambda: update(owner, "capped", ["max_modules"], max_modules=1000))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert limits(owner, "capped").max_modules == 10


def test_tier_resets_limits_and_custom_limits_follow_the_mask(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    org = owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="tiered")).organization
    custom = update(admin, "tiered", ["max_modules", "max_storage_bytes"], max_modules=3)
    assert custom.max_modules == 3
    assert not custom.HasField("max_storage_bytes")  # listed but unset: unlimited
    assert custom.max_versions_per_module == 100  # not listed: untouched
    large = update(admin, "tiered", ["tier"], tier=opb.QUOTA_TIER_LARGE)
    assert (large.tier, large.max_modules, large.max_storage_bytes) == (
        opb.QUOTA_TIER_LARGE,
        200,
        100 * GIB,
    )
    both = update(
        admin, "tiered", ["tier", "max_api_requests_per_hour"], tier=opb.QUOTA_TIER_MEDIUM
    )
    assert (both.tier, both.max_modules, both.HasField("max_api_requests_per_hour")) == (
        opb.QUOTA_TIER_MEDIUM,
        50,
        False,
    )
    unlimited = update(admin, "tiered", ["tier"], tier=opb.QUOTA_TIER_UNLIMITED)
    assert not any(unlimited.HasField(f) for f in ("max_modules", "max_storage_bytes"))
    got = owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="tiered")).organization
    assert got.quota_tier == opb.QUOTA_TIER_UNLIMITED
    assert db.execute(
        "SELECT count(*) FROM audit_events WHERE org_id = %s AND method LIKE %s",
        [org.id, "%UpdateQuotas"],
    ).fetchone() == (4,)


@pytest.mark.parametrize(
    ("paths", "values", "field"),
    [
        pytest.param([], {}, "update_mask", id="empty-mask"),
        pytest.param(["max_everything"], {}, "update_mask", id="unknown-path"),
        pytest.param(["max_modules", "max_modules"], {}, "update_mask", id="repeated"),
        pytest.param(["max_modules"], {"max_modules": -1}, "quotas.max_modules", id="negative"),
        pytest.param(["tier"], {"tier": 0}, "quotas.tier", id="unspecified-tier"),
        pytest.param(["tier"], {"tier": 99}, "quotas.tier", id="unknown-tier"),
    ],
)
def test_bad_quota_updates_are_invalid(
    admin: Client, paths: list[str], values: dict[str, Any], field: str
) -> None:
    admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="strict"))
    error = failure(lambda: update(admin, "strict", paths, **values))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {field}
    assert limits(admin, "strict").max_modules == 10


# --- the hourly API quota -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_writes_stop_at_the_hourly_limit_reads_never_do(
    admin: Client, users: Users, limit: int
) -> None:
    owner = users.create()
    name = f"rate-{limit}"
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name=name))
    update(admin, name, ["max_api_requests_per_hour"], max_api_requests_per_hour=limit)
    # Requests limit - 1 and limit are accepted, limit + 1 is refused.
    for i in range(limit):
        describe(owner, name, f"write {i}")
    error = failure(lambda: describe(owner, name, "one too many"))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == f"api requests per hour quota exceeded: {limit} of {limit} used"
    info = error.error_info
    assert info.reason == "RATE_LIMIT_EXCEEDED"
    assert dict(info.metadata) == {
        "quota": "api_requests_per_hour",
        "limit": str(limit),
        "current": str(limit),
    }
    assert error.detail(error_details_pb2.QuotaFailure).violations[0].subject == (
        f"organizations/{name}"
    )
    retry = error.detail(error_details_pb2.RetryInfo).retry_delay.seconds
    assert 1 <= retry <= 3600
    # Reads go on; the platform admin may still write (to raise the limit).
    assert owner.orgs.GetOrganization(opb.GetOrganizationRequest(org=name)).organization
    update(admin, name, ["max_api_requests_per_hour"], max_api_requests_per_hour=limit + 10)
    describe(owner, name, "after the raise")


def test_responses_carry_rate_limit_metadata(admin: Client, users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="metered"))
    update(admin, "metered", ["max_api_requests_per_hour"], max_api_requests_per_hour=100)
    seen = []
    for _ in range(3):
        _, call = owner.orgs.GetOrganization.with_call(opb.GetOrganizationRequest(org="metered"))
        headers = dict(call.trailing_metadata())
        seen.append(int(headers["x-ratelimit-remaining"]))
        assert headers["x-ratelimit-limit"] == "100"
        assert 1 <= int(headers["x-ratelimit-reset"]) <= 3600
    assert seen[1] == seen[0] - 1 and seen[2] == seen[1] - 1
    update(admin, "metered", ["max_api_requests_per_hour"], max_api_requests_per_hour=0)
    try:
        describe(owner, "metered", "refused")
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        headers = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
        assert headers["x-ratelimit-remaining"] == "0"
    else:
        raise AssertionError("the write over the limit succeeded")


# --- counting and flushing ----------------------------------------------------------------


class FakeClock:
    """A UTC clock the test moves by hand."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self.now

    def set(self, moment: dt.datetime) -> None:
        with self._lock:
            self.now = moment


class Deployment:
    """A server of its own (optionally through a proxy and with a fake clock) and its admin."""

    def __init__(
        self, url: str, token_file: Path, *, flush: float = 3600, clock: FakeClock | None = None
    ) -> None:
        settings = Settings(
            usage_flush_interval_seconds=flush,
            health_check_interval_seconds=0.2,
            pool_timeout_seconds=1,
        )
        options: dict[str, Any] = {"clock": clock} if clock else {}
        self.server = ServerThread(settings, url, **options)
        token = self.server.run(ensure_bootstrap_admin(self.server.server.pool, token_file))
        self.channel = grpc.insecure_channel(self.server.address)
        text = (token or token_file).read_text().strip()
        self.admin = Client(self.channel, text)

    @property
    def usage(self) -> UsageBuffer:
        return self.server.server.usage

    def flush(self) -> bool:
        return self.server.run(self.usage.flush())

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def own_database(pg_admin_url: str, template_url: str) -> Iterator[str]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    yield url
    harness.drop_database(pg_admin_url, url)


def counts(url: str, org_id: str) -> tuple[int, int]:
    """(this org's requests in the hourly rows, in the monthly rows)."""
    with harness.connect(url) as db:
        hourly = db.execute(
            "SELECT coalesce(sum(requests), 0) FROM org_api_requests_hourly WHERE org_id = %s",
            [org_id],
        ).fetchone()
        monthly = db.execute(
            "SELECT coalesce(sum(api_requests), 0) FROM org_usage_periods WHERE org_id = %s",
            [org_id],
        ).fetchone()
    assert hourly is not None and monthly is not None
    return int(hourly[0]), int(monthly[0])


def get(client: Client, org: str) -> Callable[[], Any]:
    return lambda: client.orgs.GetOrganization(opb.GetOrganizationRequest(org=org))


def test_counts_are_exact_after_a_flush_and_after_a_graceful_stop(
    own_database: str, tmp_path: Path
) -> None:
    deployment = Deployment(own_database, tmp_path / "token")
    try:
        org = deployment.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="counted")
        ).organization
        for _ in range(7):
            get(deployment.admin, "counted")()
        assert counts(own_database, org.id) == (0, 0)  # nothing on the request path
        assert deployment.flush()
        assert counts(own_database, org.id) == (7, 7)
        for _ in range(5):
            get(deployment.admin, "counted")()
    finally:
        deployment.stop()  # a graceful stop flushes the rest
    assert counts(own_database, org.id) == (12, 12)


def test_a_flush_that_fails_keeps_its_counts_and_lands_later(
    own_database: str, tmp_path: Path
) -> None:
    proxy = DatabaseProxy(own_database)
    deployment = Deployment(proxy.url, tmp_path / "token")
    try:
        org = deployment.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="patient")
        ).organization
        for _ in range(4):
            get(deployment.admin, "patient")()
        proxy.cut()
        assert not deployment.flush()
        assert deployment.usage.failed_flushes == 1
        assert deployment.usage.pending_keys == 1
        proxy.restore()
        deadline = time.monotonic() + 20
        while not deployment.flush():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert counts(own_database, org.id) == (4, 4)
    finally:
        deployment.stop()
        proxy.close()


def test_counts_of_a_deleted_org_do_not_block_the_flush(own_database: str, tmp_path: Path) -> None:
    deployment = Deployment(own_database, tmp_path / "token")
    try:
        client = deployment.admin
        kept = client.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="kept")
        ).organization
        client.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="doomed"))
        get(client, "kept")()
        get(client, "doomed")()
        client.orgs.DeleteOrganization(opb.DeleteOrganizationRequest(org="doomed"))
        assert deployment.flush()
        assert deployment.usage.pending_keys == 0
        assert counts(own_database, kept.id) == (1, 1)
    finally:
        deployment.stop()


def test_two_processes_count_every_request_once(own_database: str, tmp_path: Path) -> None:
    first = Deployment(own_database, tmp_path / "token")
    second = Deployment(own_database, tmp_path / "token")
    try:
        org = first.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="shared")
        ).organization
        for _ in range(6):
            get(first.admin, "shared")()
            get(second.admin, "shared")()
        assert first.flush() and second.flush()
        assert counts(own_database, org.id) == (12, 12)
        # A process sees the database total as of its last flush plus its unflushed calls.
        org_id = uuid.UUID(org.id)
        assert first.usage.requests_this_hour(org_id) == 6  # flushed before the second
        get(first.admin, "shared")()
        assert first.flush()
        assert first.usage.requests_this_hour(org_id) == 13
        get(first.admin, "shared")()
        assert first.usage.requests_this_hour(org_id) == 14
    finally:
        first.stop()
        second.stop()


def test_hour_and_month_rollover(own_database: str, tmp_path: Path) -> None:
    # Later than the real now: the org's creation month (real time) starts its history.
    clock = FakeClock(dt.datetime(2030, 1, 31, 23, 30, tzinfo=dt.UTC))
    deployment = Deployment(own_database, tmp_path / "token", clock=clock)
    try:
        client = deployment.admin
        client.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="rolling"))
        update(client, "rolling", ["max_api_requests_per_hour"], max_api_requests_per_hour=100)
        for _ in range(3):
            get(client, "rolling")()
        january = client.quotas.GetUsage(qpb.GetUsageRequest(org="rolling")).usage
        # The admin (the org's owner) is charged for UpdateQuotas, 3 gets and this GetUsage.
        assert (january.api_requests_this_hour, january.api_requests) == (5, 5)
        assert january.period_start.ToDatetime(dt.UTC) == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        assert deployment.flush()

        clock.set(dt.datetime(2030, 2, 1, 0, 5, tzinfo=dt.UTC))  # a new hour and a new month
        _, call = client.orgs.GetOrganization.with_call(opb.GetOrganizationRequest(org="rolling"))
        assert dict(call.trailing_metadata())["x-ratelimit-remaining"] == "99"
        february = client.quotas.GetUsage(qpb.GetUsageRequest(org="rolling")).usage
        assert (february.api_requests_this_hour, february.api_requests) == (2, 2)
        assert february.period_end.ToDatetime(dt.UTC) == dt.datetime(2030, 3, 1, tzinfo=dt.UTC)
        assert deployment.flush()
        history = client.quotas.GetUsageHistory(qpb.GetUsageHistoryRequest(org="rolling"))
        starts = [p.period_start.ToDatetime(dt.UTC).month for p in history.periods]
        assert starts[:3] == [2, 1, 12]
        # February is live (this history call included); January as flushed; December empty.
        assert [p.api_requests for p in history.periods[:3]] == [3, 5, 0]
    finally:
        deployment.stop()


@contextlib.contextmanager
def hourly_rows_locked(url: str) -> Iterator[psycopg.Connection[Any]]:
    """Holds a lock that every flush statement waits on (its INSERT into the hourly rows)
    until the block ends; yields an autocommit connection to watch the waiters with."""
    with psycopg.connect(url, autocommit=True) as watcher, psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE org_api_requests_hourly IN EXCLUSIVE MODE")
        try:
            yield watcher
        finally:
            holder.rollback()


def wait_for_a_flush_to_block(watcher: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + 10
    while waiting_on_locks(watcher) < 1:
        assert time.monotonic() < deadline, "no flush reached the lock"
        time.sleep(0.01)


def member_of(deployment: Deployment, org: str, email: str) -> Client:
    created = deployment.admin.users.CreateUser(user_pb2.CreateUserRequest(email=email))
    deployment.admin.members.AddMember(
        member_pb2.AddMemberRequest(org=org, user=created.user.id, role=member_pb2.ROLE_ADMIN)
    )
    return Client(deployment.channel, created.token, created.user.id, email)


def test_a_batch_being_written_stays_counted_for_the_hourly_limit(
    own_database: str, tmp_path: Path
) -> None:
    deployment = Deployment(own_database, tmp_path / "token")
    limit = 8
    try:
        org = deployment.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="bursting")
        ).organization
        org_id = uuid.UUID(org.id)
        update(
            deployment.admin,
            "bursting",
            ["max_api_requests_per_hour"],
            max_api_requests_per_hour=limit,
        )
        member = member_of(deployment, "bursting", "burst@example.com")
        for i in range(3):
            describe(member, "bursting", f"before {i}")
        used = deployment.usage.requests_this_hour(org_id)
        assert 3 <= used < limit
        with hourly_rows_locked(own_database) as watcher:
            flushing = asyncio.run_coroutine_threadsafe(
                deployment.usage.flush(), deployment.server.loop
            )
            wait_for_a_flush_to_block(watcher)
            # The batch is in flight: in neither memory's pending counts nor the database.
            assert counts(own_database, org.id) == (0, 0)
            assert deployment.usage.requests_this_hour(org_id) == used
            accepted = 0
            while True:
                try:
                    describe(member, "bursting", f"burst {accepted}")
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                    break
                accepted += 1
                assert accepted <= limit, "the burst was never refused"
            assert accepted == limit - used
            # GetUsage adds exactly what its read of the database did not see.
            during = member.quotas.GetUsage(qpb.GetUsageRequest(org="bursting")).usage
            assert during.api_requests_this_hour == deployment.usage.requests_this_hour(org_id)
            assert not flushing.done()
        assert flushing.result(timeout=30)
        assert counts(own_database, org.id) == (used, used)
        after = member.quotas.GetUsage(qpb.GetUsageRequest(org="bursting")).usage
        total = deployment.usage.requests_this_hour(org_id)
        # The refused call and both GetUsage calls count too.
        assert after.api_requests_this_hour == total == used + accepted + 3
        assert deployment.flush()
        assert counts(own_database, org.id) == (total, total)
    finally:
        deployment.stop()


def test_a_stop_during_a_flush_waits_for_it_and_loses_nothing(
    own_database: str, tmp_path: Path
) -> None:
    deployment = Deployment(own_database, tmp_path / "token", flush=0.05)
    try:
        org = deployment.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="stopping")
        ).organization
        assert deployment.flush()
        before = counts(own_database, org.id)
        with hourly_rows_locked(own_database) as watcher:
            for _ in range(6):
                get(deployment.admin, "stopping")()
            wait_for_a_flush_to_block(watcher)  # the flush task's own, with some of the 6
            stopping = threading.Thread(target=deployment.stop)
            stopping.start()
            deadline = time.monotonic() + 10
            while deployment.usage.running:  # stop() has taken the flush task down
                assert time.monotonic() < deadline, "stop() never stopped the flush task"
                time.sleep(0.01)
            assert stopping.is_alive()  # waiting for the flush in flight
        stopping.join(30)
        assert not stopping.is_alive()
    finally:
        if deployment.usage.running:
            deployment.stop()
    assert counts(own_database, org.id) == (before[0] + 6, before[1] + 6)


def test_a_batch_whose_commit_reply_was_lost_is_not_counted_twice(
    own_database: str, tmp_path: Path
) -> None:
    deployment = Deployment(own_database, tmp_path / "token")
    try:
        org = deployment.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="unsure")
        ).organization
        org_id = uuid.UUID(org.id)
        for _ in range(5):
            get(deployment.admin, "unsure")()
        lost: list[int] = []

        def lose_the_reply() -> None:
            # Called after the COMMIT went through: the connection drops before the reply.
            deployment.usage.committed = None
            lost.append(1)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        deployment.usage.committed = lose_the_reply
        assert not deployment.flush()
        assert lost == [1]
        assert counts(own_database, org.id) == (5, 5)  # it did commit
        assert deployment.usage.requests_this_hour(org_id) == 5  # counted once meanwhile
        get(deployment.admin, "unsure")()
        assert deployment.usage.requests_this_hour(org_id) == 6
        usage = deployment.admin.quotas.GetUsage(qpb.GetUsageRequest(org="unsure")).usage
        assert (usage.api_requests_this_hour, usage.api_requests) == (7, 7)
        assert deployment.flush()  # the same batch again (adds nothing), then the 2 new calls
        assert counts(own_database, org.id) == (7, 7)
        assert deployment.usage.requests_this_hour(org_id) == 7
        assert deployment.usage.failed_flushes == 1
    finally:
        deployment.stop()
    assert counts(own_database, org.id) == (7, 7)


def test_concurrent_calls_on_two_servers_flushing_all_along_are_counted_exactly(
    own_database: str, tmp_path: Path
) -> None:
    first = Deployment(own_database, tmp_path / "token", flush=0.01)
    second = Deployment(own_database, tmp_path / "token", flush=0.01)
    try:
        org = first.admin.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="tallied")
        ).organization
        calls = [get(d.admin, "tallied") for d in (first, second) for _ in range(60)]
        with ThreadPoolExecutor(max_workers=8) as clients:
            for future in [clients.submit(call) for call in calls]:
                future.result()
    finally:
        first.stop()
        second.stop()
    assert counts(own_database, org.id) == (120, 120)
    with harness.connect(own_database) as db:
        writers = db.execute(
            "SELECT count(*) FROM usage_flush_writers WHERE writer = ANY(%s) AND batch > 1",
            [[first.usage.writer, second.usage.writer]],
        ).fetchone()
    assert writers == (2,)  # each flushed several batches while the calls went on


def test_flushes_prune_the_batch_numbers_of_writers_silent_for_a_week(
    own_database: str, tmp_path: Path
) -> None:
    gone, recent = uuid.uuid4(), uuid.uuid4()
    with harness.connect(own_database) as db:
        db.execute(
            "INSERT INTO usage_flush_writers (writer, batch, written_at) VALUES"
            " (%s, 3, now() - interval '8 days'), (%s, 9, now() - interval '6 days')",
            [gone, recent],
        )
    deployment = Deployment(own_database, tmp_path / "token")
    try:
        deployment.admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="pruning"))
        get(deployment.admin, "pruning")()
        assert deployment.flush()
        writer = deployment.usage.writer
    finally:
        deployment.stop()
    with harness.connect(own_database) as db:
        rows = db.execute("SELECT writer, batch FROM usage_flush_writers").fetchall()
    assert sorted(rows) == sorted([(recent, 9), (writer, 1)])


def test_the_buffer_is_bounded(server: ServerThread) -> None:
    buffer = UsageBuffer(server.server.pool, interval=1, max_keys=3)
    orgs = [uuid.uuid4() for _ in range(5)]
    for org in orgs:
        buffer.count(org)
    assert buffer.pending_keys == 3
    assert buffer.dropped == 2


def test_viewers_see_usage_and_only_charged_calls_count(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    owner, viewer, stranger = users.create(), users.create(), users.create()
    org = owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="watched")).organization
    users.join(org.id, viewer, Role.VIEWER)
    before = viewer.quotas.GetUsage(qpb.GetUsageRequest(org="watched")).usage
    failure(get(stranger, "watched"))  # not a member: refused, not charged
    after = viewer.quotas.GetUsage(qpb.GetUsageRequest(org="watched")).usage
    assert after.api_requests_this_hour == before.api_requests_this_hour + 1


# --- allocation quotas --------------------------------------------------------------------


def create_module(client: Client, org: str, name: str) -> Any:
    return client.modules.CreateModule(mpb.CreateModuleRequest(org=org, name=name))


def push(client: Client, org: str, module: str, version: str, content: str) -> Any:
    return client.modules.CreateVersion(
        mpb.CreateVersionRequest(
            org=org,
            module=module,
            version=version,
            files=[mpb.ProtoFile(path="a.proto", content=content)],
        )
    )


def proto_of(size: int) -> str:
    """A valid proto file of exactly ``size`` bytes."""
    head = 'syntax = "proto3";\n'
    assert size >= len(head) + 3
    return head + "//" + "x" * (size - len(head) - 3) + "\n"


def test_module_quota_at_its_boundary(admin: Client, users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="few"))
    update(admin, "few", ["max_modules"], max_modules=2)
    create_module(owner, "few", "one")
    create_module(owner, "few", "two")  # limit - 1 and limit
    error = failure(lambda: create_module(owner, "few", "three"))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "module quota exceeded: 2 of 2 used"
    assert error.error_info.reason == "RESOURCE_QUOTA_EXCEEDED"
    assert dict(error.error_info.metadata) == {"quota": "module", "limit": "2", "current": "2"}
    assert error.detail(error_details_pb2.QuotaFailure).violations[0].subject == "organizations/few"
    with pytest.raises(AssertionError):
        error.detail(error_details_pb2.RetryInfo)  # not a rate window: no retry time
    owner.modules.DeleteModule(mpb.DeleteModuleRequest(org="few", module="one"))
    create_module(owner, "few", "three")  # room again


def test_the_unlimited_tier_has_no_module_limit(admin: Client, users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="vast"))
    update(admin, "vast", ["tier"], tier=opb.QUOTA_TIER_UNLIMITED)
    for i in range(12):  # more than the small tier's 10
        create_module(owner, "vast", f"mod-{i:02d}")


def test_versions_and_storage_quotas(admin: Client, users: Users) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="stored"))
    create_module(owner, "stored", "schemas")
    update(admin, "stored", ["max_versions_per_module"], max_versions_per_module=2)
    push(owner, "stored", "schemas", "1.0.0", proto_of(60))
    push(owner, "stored", "schemas", "1.0.1", proto_of(60))
    error = failure(lambda: push(owner, "stored", "schemas", "1.0.2", proto_of(60)))
    assert error.message == "versions per module quota exceeded: 2 of 2 used"
    update(admin, "stored", ["max_versions_per_module", "max_storage_bytes"], max_storage_bytes=150)
    error = failure(lambda: push(owner, "stored", "schemas", "1.0.2", proto_of(31)))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "storage bytes quota exceeded: 120 of 150 used"
    push(owner, "stored", "schemas", "1.0.2", proto_of(30))  # exactly the limit
    usage = owner.quotas.GetUsage(qpb.GetUsageRequest(org="stored")).usage
    assert (usage.modules, usage.versions, usage.storage_bytes) == (1, 3, 150)


def concurrent_creates(clients: list[Client], org: str, count: int) -> list[str]:
    def attempt(i: int) -> str:
        try:
            create_module(clients[i % len(clients)], org, f"race-{i:02d}")
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return "OK"

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(attempt, range(count)))


def test_fifty_concurrent_creates_against_a_limit_of_ten(
    admin: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="racers"))
    outcomes = concurrent_creates([owner], "racers", 50)
    assert outcomes.count("OK") == 10
    assert outcomes.count("RESOURCE_EXHAUSTED") == 40
    assert db.execute(
        "SELECT count(*) FROM modules m JOIN organizations o ON o.id = m.org_id"
        " WHERE o.name = 'racers'"
    ).fetchone() == (10,)


def test_fifty_concurrent_creates_across_two_server_processes(
    own_database: str, tmp_path: Path
) -> None:
    first = Deployment(own_database, tmp_path / "token")
    second = Deployment(own_database, tmp_path / "token")
    try:
        first.admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="spread"))
        outcomes = concurrent_creates([first.admin, second.admin], "spread", 50)
        assert (outcomes.count("OK"), outcomes.count("RESOURCE_EXHAUSTED")) == (10, 40)
        listed = first.admin.modules.ListModules(mpb.ListModulesRequest(org="spread")).modules
        assert len(listed) == 10
    finally:
        first.stop()
        second.stop()


def test_gauges_carry_into_new_months(own_database: str, tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2030, 3, 15, 12, 0, tzinfo=dt.UTC))
    deployment = Deployment(own_database, tmp_path / "token", clock=clock)
    try:
        client = deployment.admin
        client.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="steady"))
        create_module(client, "steady", "kept")
        create_module(client, "steady", "also-kept")
        history = client.quotas.GetUsageHistory(
            qpb.GetUsageHistoryRequest(org="steady", page_size=2)
        )
        # March 2030 (live) and February 2030: two modules in each, nothing reset.
        assert [p.modules for p in history.periods] == [2, 2]
        rest = client.quotas.GetUsageHistory(
            qpb.GetUsageHistoryRequest(org="steady", page_token=history.next_page_token)
        )
        months = [p.period_start.ToDatetime(dt.UTC) for p in [*history.periods, *rest.periods]]
        assert months == sorted(months, reverse=True)
        assert len(months) == len(set(months)) >= 24
    finally:
        deployment.stop()
