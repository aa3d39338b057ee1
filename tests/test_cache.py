"""The read path's cache: reads cost no statement, and changes made anywhere are seen by
every process within a second (at once by the process that made them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from spoke.v1 import member_pb2 as mpb
from spoke.v1 import organization_pb2 as opb
from spoke.v1 import user_pb2

from spoke_grpc.cache import AccessCache
from spoke_grpc.config import Settings
from spoke_grpc.store.access import Resolved
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure

ME = user_pb2.GetCurrentUserRequest()


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Waits until ``check()`` holds; returns how long it took. Fails after ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not seen within {seconds}s"
        time.sleep(0.01)
    return time.monotonic() - start


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def other_process(database_url: str) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    """A second server on the same database, as another replica would be."""
    thread = ServerThread(Settings(), database_url)
    channel = grpc.insecure_channel(thread.address)
    within(5, lambda: thread.server.cache.enabled)
    yield thread, channel
    channel.close()
    thread.stop()


def test_reads_hit_the_cache(users: Users, server: ServerThread) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="cached"))
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="cached"))
    hits = cache.hits
    for _ in range(5):
        owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="cached"))
    assert cache.hits == hits + 5


@pytest.mark.parametrize(
    "change",
    ["suspend", "remove-member", "demote", "revoke-token", "sql-suspend", "delete-org"],
)
def test_changes_reach_every_process_within_a_second(
    users: Users,
    admin: Client,
    db: psycopg.Connection[Any],
    other_process: tuple[ServerThread, grpc.Channel],
    change: str,
) -> None:
    owner, member = users.create(), users.create()
    org = owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="spread")).organization
    users.join(org.id, member, Role.ADMIN)
    _, channel = other_process
    remote = Client(channel, member.token)
    read = lambda: remote.orgs.GetOrganization(opb.GetOrganizationRequest(org="spread"))  # noqa: E731
    write = lambda: remote.orgs.UpdateOrganization(  # noqa: E731
        opb.UpdateOrganizationRequest(
            org="spread",
            organization=opb.Organization(description="x"),
            update_mask=FieldMask(paths=["description"]),
        )
    )
    for _ in range(3):
        read()  # now cached in the other process
    suspended = lambda: read().organization.status == opb.ORGANIZATION_STATUS_SUSPENDED  # noqa: E731
    checks: dict[str, Callable[[], bool]] = {
        "suspend": suspended,
        "sql-suspend": suspended,
        "remove-member": lambda: code_of(read) is grpc.StatusCode.NOT_FOUND,
        "demote": lambda: code_of(write) is grpc.StatusCode.PERMISSION_DENIED,
        "revoke-token": lambda: code_of(read) is grpc.StatusCode.UNAUTHENTICATED,
        "delete-org": lambda: code_of(read) is grpc.StatusCode.NOT_FOUND,
    }
    if change == "suspend":
        admin.orgs.UpdateOrganization(
            opb.UpdateOrganizationRequest(
                org="spread",
                organization=opb.Organization(status=opb.ORGANIZATION_STATUS_SUSPENDED),
                update_mask=FieldMask(paths=["status"]),
            )
        )
    elif change == "sql-suspend":  # an operator's SQL is heard too
        db.execute("UPDATE organizations SET status = 'suspended' WHERE id = %s", [org.id])
    elif change == "remove-member":
        owner.members.RemoveMember(mpb.RemoveMemberRequest(org="spread", user_id=member.user_id))
    elif change == "demote":
        owner.members.UpdateMemberRole(
            mpb.UpdateMemberRoleRequest(org="spread", user_id=member.user_id, role=mpb.ROLE_VIEWER)
        )
    elif change == "revoke-token":
        token_id = member.users.ListApiTokens(user_pb2.ListApiTokensRequest()).api_tokens[0].id
        member.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=token_id))
    else:
        owner.orgs.DeleteOrganization(opb.DeleteOrganizationRequest(org="spread"))
    assert within(1.0, checks[change]) < 1.0


def test_this_process_sees_its_own_changes_at_once(users: Users, server: ServerThread) -> None:
    owner, member = users.create(), users.create()
    org = owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="local")).organization
    users.join(org.id, member, Role.VIEWER)
    within(5, lambda: server.server.cache.enabled)
    for _ in range(3):
        member.orgs.GetOrganization(opb.GetOrganizationRequest(org="local"))
    owner.members.RemoveMember(mpb.RemoveMemberRequest(org="local", user_id=member.user_id))
    assert (
        code_of(lambda: member.orgs.GetOrganization(opb.GetOrganizationRequest(org="local")))
        is grpc.StatusCode.NOT_FOUND
    )
    token_id = member.users.ListApiTokens(user_pb2.ListApiTokensRequest()).api_tokens[0].id
    member.users.GetCurrentUser(ME)
    member.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=token_id))
    assert code_of(lambda: member.users.GetCurrentUser(ME)) is grpc.StatusCode.UNAUTHENTICATED


def test_a_lost_listener_turns_the_cache_off_until_it_is_back(
    users: Users, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="silent"))
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="silent"))
    assert len(cache) > 0
    reconnects = server.server.cache_listener.reconnects
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'spoke-grpc-cache' AND datname = current_database()"
    )
    within(5, lambda: server.server.cache_listener.reconnects > reconnects)
    # Reads go on, from the database; the cache comes back with the listener, empty.
    assert owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="silent")).organization
    within(5, lambda: cache.enabled)


def test_the_cache_is_bounded() -> None:
    cache = AccessCache(max_entries=3)
    cache.pinged()
    for i in range(10):
        cache.put((bytes([i]), None, False), Resolved(principal=None, org=None))
    assert len(cache) == 3


def test_unknown_tokens_and_missing_orgs_are_not_remembered(
    users: Users, server: ServerThread
) -> None:
    owner = users.create()
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    size = len(cache)
    for _ in range(3):
        failure(lambda: owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="nowhere")))
        failure(lambda: Client(owner.channel, "spoke_" + "x" * 43).users.GetCurrentUser(ME))
    assert len(cache) == size
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="nowhere"))
    assert owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="nowhere")).organization


def test_cached_reads_keep_the_rules(users: Users, anonymous: Client, server: ServerThread) -> None:
    owner, stranger = users.create(), users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="ruled"))
    within(5, lambda: server.server.cache.enabled)
    for _ in range(3):
        assert (
            failure(
                lambda: stranger.orgs.GetOrganization(opb.GetOrganizationRequest(org="ruled"))
            ).code
            is grpc.StatusCode.NOT_FOUND
        )
        assert (
            failure(
                lambda: anonymous.orgs.GetOrganization(opb.GetOrganizationRequest(org="ruled"))
            ).code
            is grpc.StatusCode.UNAUTHENTICATED
        )
