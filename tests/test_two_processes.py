"""Rules that concurrent calls could break, with the calls split over two real
``spoke-grpc serve`` processes on one database: each process has its own pool, caches and
usage buffer, so only the database's locks and constraints can keep the rules.

Covered here: the last admin, a version's uniqueness, the module quota, the usage counts
and the cap on organizations a user owns.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import member_pb2 as mpb
from spoke.v1 import module_pb2 as pb
from spoke.v1 import organization_pb2 as opb
from spoke.v1 import user_pb2

from tests import harness
from tests.harness import Client
from tests.servicers.test_modules import code_of, proto, retrying_busy
from tests.test_shutdown import CHANNEL_OPTIONS, serving, wait_serving

MODULE_LIMIT = 10  # the default (small) tier's
ORG_CAP = 10  # SPOKE_MAX_ORGS_PER_USER's default


@dataclass(frozen=True)
class Pair:
    """Two serve processes on one database, a channel to each, and the database's URL."""

    url: str
    channels: tuple[grpc.Channel, grpc.Channel]
    token: str

    def clients(self, token: str | None = None) -> tuple[Client, Client]:
        first, second = self.channels
        return Client(first, token or self.token), Client(second, token or self.token)


@pytest.fixture(scope="module")
def pair(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    root = tmp_path_factory.mktemp("two-processes")
    token_file = root / "bootstrap-token"
    env = {
        "DATABASE_URL": url,
        "SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file),
        "SPOKE_POOL_MAX_SIZE": "16",
        "SPOKE_COMPILE_WORKERS": "1",
    }
    try:
        with contextlib.ExitStack() as stack:
            channels = []
            for name in ("a", "b"):
                (root / name).mkdir()
                served = stack.enter_context(serving(root / name, root / name, env))
                channel = stack.enter_context(
                    grpc.insecure_channel(served.address, options=CHANNEL_OPTIONS)
                )
                wait_serving(served, channel)
                channels.append(channel)
            yield Pair(url, (channels[0], channels[1]), token_file.read_text().strip())
    finally:
        harness.drop_database(pg_admin_url, url)


def at_once(calls: list[Callable[[], Any]]) -> list[str]:
    """Runs ``calls`` in threads released together; their status code names, in order."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> str:
        start.wait()
        return code_of(call)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def new_user(admin: Client, email: str) -> str:
    user_id: str = admin.users.CreateUser(user_pb2.CreateUserRequest(email=email)).user.id
    return user_id


def one(db_url: str, query: str, *args: Any) -> Any:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def test_demoting_the_last_two_admins_through_two_processes_leaves_one(pair: Pair) -> None:
    admin, other = pair.clients()
    first, second = new_user(admin, "first@pair.example"), new_user(admin, "second@pair.example")
    for attempt in range(5):
        name = f"split-{attempt}"
        admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name=name))
        for user_id in (first, second):
            admin.members.AddMember(
                mpb.AddMemberRequest(org=name, user=user_id, role=mpb.ROLE_ADMIN)
            )
        # The owner (the platform admin here) steps out of the membership, so the two
        # admins are all there is; only the database's lock can keep one of them.
        with psycopg.connect(pair.url) as conn:
            conn.execute(
                "DELETE FROM organization_members m USING organizations o"
                " WHERE o.id = m.org_id AND o.name = %s AND m.user_id = o.owner_id",
                [name],
            )
        codes = at_once(
            [
                lambda c=client, u=user_id, n=name: c.members.UpdateMemberRole(
                    mpb.UpdateMemberRoleRequest(org=n, user_id=u, role=mpb.ROLE_VIEWER)
                )
                for client, user_id in ((admin, first), (other, second))
            ]
        )
        assert sorted(codes) == ["FAILED_PRECONDITION", "OK"], (attempt, codes)
        admins = one(
            pair.url,
            "SELECT count(*) FROM organization_members m JOIN organizations o ON o.id = m.org_id"
            " WHERE o.name = %s AND m.role = 'admin'",
            name,
        )
        assert admins == 1


def test_one_version_pushed_through_two_processes_at_once_is_stored_once(pair: Pair) -> None:
    admin, other = pair.clients()
    admin.orgs.CreateOrganization(
        opb.CreateOrganizationRequest(name="racing", quota_tier=opb.QUOTA_TIER_UNLIMITED)
    )
    admin.modules.CreateModule(pb.CreateModuleRequest(org="racing", name="core"))

    def push(client: Client, i: int) -> Callable[[], Any]:
        request = pb.CreateVersionRequest(
            org="racing",
            module="core",
            version="1.0.0",
            files=[pb.ProtoFile(path=f"race{i}.proto", content=proto(f"race{i}"))],
        )
        return lambda: retrying_busy(lambda: client.modules.CreateVersion(request))

    codes = at_once([push(admin if i % 2 else other, i) for i in range(6)])
    assert sorted(codes) == ["ALREADY_EXISTS"] * 5 + ["OK"], codes
    stored = one(
        pair.url,
        "SELECT count(*) FROM module_versions v"
        " JOIN modules m ON (m.org_id, m.id) = (v.org_id, v.module_id)"
        " JOIN organizations o ON o.id = m.org_id WHERE o.name = 'racing'",
    )
    assert stored == 1


def test_thirty_creates_through_two_processes_stop_at_the_module_limit(pair: Pair) -> None:
    admin, other = pair.clients()
    admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="crowded"))
    codes = at_once(
        [
            lambda c=(admin if i % 2 else other), i=i: c.modules.CreateModule(
                pb.CreateModuleRequest(org="crowded", name=f"mod-{i:02d}")
            )
            for i in range(30)
        ]
    )
    assert (codes.count("OK"), codes.count("RESOURCE_EXHAUSTED")) == (MODULE_LIMIT, 20), codes
    created = one(
        pair.url,
        "SELECT count(*) FROM modules m JOIN organizations o ON o.id = m.org_id"
        " WHERE o.name = 'crowded'",
    )
    assert created == MODULE_LIMIT


def test_calls_through_two_processes_are_each_counted_once(pair: Pair) -> None:
    admin, other = pair.clients()
    org = admin.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="tallied"))
    org_id = org.organization.id
    read = opb.GetOrganizationRequest(org="tallied")
    codes = at_once(
        [lambda c=(admin if i % 2 else other): c.orgs.GetOrganization(read) for i in range(40)]
    )
    assert codes == ["OK"] * 40
    # Each process flushes on its own (every second): wait until both have written theirs.
    counted = "SELECT coalesce(sum(requests), 0) FROM org_api_requests_hourly WHERE org_id = %s"
    deadline = time.monotonic() + 20
    while one(pair.url, counted, org_id) < 40:
        assert time.monotonic() < deadline, "the counts never reached the database"
        time.sleep(0.05)
    assert one(pair.url, counted, org_id) == 40
    monthly = "SELECT coalesce(sum(api_requests), 0) FROM org_usage_periods WHERE org_id = %s"
    assert one(pair.url, monthly, org_id) == 40
    assert one(pair.url, "SELECT count(*) FROM usage_flush_writers") >= 2  # one per process


def test_thirty_org_creates_by_one_user_through_two_processes_stop_at_the_cap(
    pair: Pair,
) -> None:
    admin, _ = pair.clients()
    token = admin.users.CreateUser(user_pb2.CreateUserRequest(email="founder@pair.example")).token
    first, second = pair.clients(token)
    codes = at_once(
        [
            lambda c=(first if i % 2 else second), i=i: c.orgs.CreateOrganization(
                opb.CreateOrganizationRequest(name=f"founded-{i:02d}")
            )
            for i in range(30)
        ]
    )
    assert (codes.count("OK"), codes.count("RESOURCE_EXHAUSTED")) == (ORG_CAP, 20), codes
    owned = one(
        pair.url,
        "SELECT count(*) FROM organizations o JOIN users u ON u.id = o.owner_id"
        " WHERE u.email = 'founder@pair.example'",
    )
    assert owned == ORG_CAP
