"""The read path's cache: reads cost no statement, and changes made anywhere are seen by
every process within a second (at once by the process that made them); a read in flight
cannot bring back what a change made stale; a missing org costs what a hidden one costs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from spoke.v1 import member_pb2 as mpb
from spoke.v1 import module_pb2, user_pb2
from spoke.v1 import organization_pb2 as opb

from spoke_grpc import tokens
from spoke_grpc.cache import AccessCache, CacheListener, Key
from spoke_grpc.config import Settings
from spoke_grpc.store.access import Resolved
from spoke_grpc.types import Principal, Role, User
from tests.conftest import Users
from tests.harness import (
    Client,
    ServerThread,
    checkouts,
    failure,
    notifications_applied,
    usage_flush_paused,
)

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


class PausedMiss:
    """Holds the first cache miss whose key matches after its database read, before it
    stores what it read, until the test releases it."""

    def __init__(self, server: ServerThread, key: Key) -> None:
        self._server = server
        self._key = key
        self.reached = threading.Event()
        self._release = asyncio.Event()  # waited on the server's loop

    async def __call__(self, key: Key) -> None:
        if key != self._key or self.reached.is_set():
            return
        self.reached.set()
        await self._release.wait()

    def release(self) -> None:
        self._server.loop.call_soon_threadsafe(self._release.set)


@contextlib.contextmanager
def paused_miss(server: ServerThread, key: Key) -> Iterator[PausedMiss]:
    cache = server.server.cache
    paused = PausedMiss(server, key)
    cache.after_miss_read = paused
    try:
        yield paused
    finally:
        paused.release()
        cache.after_miss_read = None


@pytest.fixture
def other_process(database_url: str) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    """A second server on the same database, as another replica would be."""
    thread = ServerThread(Settings(), database_url)
    channel = grpc.insecure_channel(thread.address)
    within(5, lambda: thread.server.cache.enabled)
    yield thread, channel
    channel.close()
    thread.stop()


def test_reads_hit_the_cache(
    users: Users, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="cached"))
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    notifications_applied(server, db)  # the creation's, which would empty the entry
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


@pytest.mark.parametrize("via", ["rpc", "sql"])
@pytest.mark.parametrize("change", ["revoke-token", "remove-member", "suspend"])
def test_a_read_in_flight_cannot_bring_back_what_a_change_made_stale(
    users: Users,
    admin: Client,
    db: psycopg.Connection[Any],
    server: ServerThread,
    change: str,
    via: str,
) -> None:
    """The read misses the cache and reads the database; the change commits and its
    invalidation is applied (this process's own at commit for ``rpc``, the notification
    for both); only then does the read finish: what it read must not be stored."""
    owner, member = users.create(), users.create()
    org = owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="racy")).organization
    users.join(org.id, member, Role.VIEWER)
    token_id = member.users.ListApiTokens(user_pb2.ListApiTokensRequest()).api_tokens[0].id
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    request = opb.GetOrganizationRequest(org="racy")
    read = lambda: member.orgs.GetOrganization(request)  # noqa: E731
    stale_puts = cache.stale_puts
    with paused_miss(server, (tokens.digest(member.token), "racy", False)) as paused:
        in_flight = member.orgs.GetOrganization.future(request)
        assert paused.reached.wait(10), "the read never missed the cache"
        if (change, via) == ("revoke-token", "rpc"):
            member.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=token_id))
        elif (change, via) == ("revoke-token", "sql"):
            db.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s", [token_id])
        elif (change, via) == ("remove-member", "rpc"):
            owner.members.RemoveMember(mpb.RemoveMemberRequest(org="racy", user_id=member.user_id))
        elif (change, via) == ("remove-member", "sql"):
            db.execute(
                "DELETE FROM organization_members WHERE org_id = %s AND user_id = %s",
                [org.id, member.user_id],
            )
        elif via == "rpc":
            admin.orgs.UpdateOrganization(
                opb.UpdateOrganizationRequest(
                    org="racy",
                    organization=opb.Organization(status=opb.ORGANIZATION_STATUS_SUSPENDED),
                    update_mask=FieldMask(paths=["status"]),
                )
            )
        else:
            db.execute("UPDATE organizations SET status = 'suspended' WHERE id = %s", [org.id])
        notifications_applied(server, db)
        paused.release()
        # The read in flight answers with what it read, from before the change.
        answer = in_flight.result(timeout=10).organization
        assert answer.status == opb.ORGANIZATION_STATUS_ACTIVE
    # The next call is refused (or, for a suspension, which refuses writes, reports it).
    if change == "revoke-token":
        assert code_of(read) is grpc.StatusCode.UNAUTHENTICATED
    elif change == "remove-member":
        assert code_of(read) is grpc.StatusCode.NOT_FOUND
    else:
        assert read().organization.status == opb.ORGANIZATION_STATUS_SUSPENDED
    assert cache.stale_puts == stale_puts + 1  # the read in flight stored nothing


def test_a_lost_listener_turns_the_cache_off_until_it_is_back(
    users: Users, admin: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="silent"))
    cache, listener = server.server.cache, server.server.cache_listener
    read = lambda: owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="silent"))  # noqa: E731
    me = lambda: owner.users.GetCurrentUser(ME)  # noqa: E731
    within(5, lambda: cache.enabled)
    notifications_applied(server, db)
    read()
    assert len(cache) > 0
    # Its connection killed: the cache is emptied, and the listener comes back on its own.
    reconnects = listener.reconnects
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'spoke-grpc-cache' AND datname = current_database()"
    )
    within(5, lambda: listener.reconnects > reconnects)
    assert len(cache) == 0
    within(5, lambda: cache.enabled)
    # Silent (stopped here, so that it stays away): the cache turns off once the silence
    # outlasts MAX_SILENCE_SECONDS, and then every read goes to the database.
    server.run(listener.stop())
    try:
        read()
        within(5, lambda: not cache.enabled)
        with usage_flush_paused(server):
            assert [checkouts(server, read) for _ in range(3)] == [1, 1, 1]
            assert [checkouts(server, me) for _ in range(3)] == [1, 1, 1]
        assert len(cache) == 0
        # A revocation that nobody hears (no listener to hear it) is refused at once.
        db.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = %s", [owner.user_id])
        assert code_of(me) is grpc.StatusCode.UNAUTHENTICATED
        assert code_of(read) is grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.run(_start(listener))
    within(5, lambda: cache.enabled)
    notifications_applied(server, db)
    # Back on: reads are cached again, and the revoked token stays refused.
    admin_read = lambda: admin.orgs.GetOrganization(opb.GetOrganizationRequest(org="silent"))  # noqa: E731
    with usage_flush_paused(server):
        assert [checkouts(server, admin_read) for _ in range(3)] == [1, 0, 0]
    assert code_of(me) is grpc.StatusCode.UNAUTHENTICATED


async def _start(listener: CacheListener) -> None:
    listener.start()


def test_the_cache_is_bounded() -> None:
    cache = AccessCache(max_entries=3)
    cache.pinged()
    for i in range(10):
        cache.put((bytes([i]), None, False), Resolved(principal=None, org=None), cache.generation)
    assert len(cache) == 3


def _caller(n: int, user_id: uuid.UUID | None = None) -> Resolved:
    user = User(user_id or uuid.uuid4(), f"u{n}@example.com", "", False, dt.datetime.now(dt.UTC))
    return Resolved(principal=Principal(user=user, token_id=uuid.uuid4()), org=None)


def test_missing_orgs_cannot_push_out_real_entries() -> None:
    cache = AccessCache(max_entries=10, max_missing=3)
    cache.pinged()
    for i in range(5):
        cache.put((bytes([i]), None, False), _caller(i), cache.generation)
    for i in range(100):  # a flood of made-up names
        cache.put((b"stranger", f"made-up-{i}", False), _caller(99), cache.generation)
    assert (len(cache), cache.missing) == (5 + 3, 3)
    assert all(cache.get((bytes([i]), None, False)) is not None for i in range(5))


def test_invalidation_records_are_bounded_and_forgetting_one_only_drops_puts() -> None:
    cache = AccessCache(max_generations=4)
    cache.pinged()
    user_id = uuid.uuid4()
    value = _caller(0, user_id)
    before = cache.generation  # a miss starts, then many other users change
    for _ in range(10):
        cache.invalidate_user(uuid.uuid4())
    assert len(cache._invalidated) == 4
    # What it read may have depended on a forgotten record: dropped, to be read again.
    assert not cache.put((b"a", None, False), value, before)
    # A miss that started after the records it would need were kept is stored.
    assert cache.put((b"a", None, False), value, cache.generation)
    # One that started before its own user's invalidation is dropped.
    since = cache.generation
    cache.invalidate_user(user_id)
    assert not cache.put((b"b", None, False), value, since)
    assert cache.stale_puts == 2


def test_unknown_tokens_are_not_remembered_missing_orgs_are_until_created(
    users: Users, server: ServerThread
) -> None:
    owner = users.create()
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    size, missing = len(cache), cache.missing
    for _ in range(3):
        failure(lambda: owner.orgs.GetOrganization(opb.GetOrganizationRequest(org="nowhere")))
        failure(lambda: Client(owner.channel, "spoke_" + "x" * 43).users.GetCurrentUser(ME))
    assert (len(cache), cache.missing) == (size + 1, missing + 1)  # one entry: the missing org
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


def test_a_missing_org_costs_what_a_hidden_one_costs(
    users: Users, anonymous: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    """Existence is not a timing oracle: for a stranger or an anonymous caller, an org that
    does not exist and one they may not see (no public modules) take the same path, one
    database read the first time, none after, and fail the same way."""
    owner, stranger = users.create(), users.create()
    owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="hidden"))
    within(5, lambda: server.server.cache.enabled)
    notifications_applied(server, db)
    calls: dict[str, Callable[[str], Callable[[], Any]]] = {
        "stranger-get": lambda org: (
            lambda: stranger.orgs.GetOrganization(opb.GetOrganizationRequest(org=org))
        ),
        "stranger-list": lambda org: (
            lambda: stranger.modules.ListModules(module_pb2.ListModulesRequest(org=org))
        ),
        "anonymous-list": lambda org: (
            lambda: anonymous.modules.ListModules(module_pb2.ListModulesRequest(org=org))
        ),
    }
    with usage_flush_paused(server):
        for name, call in calls.items():
            seen = {}
            for org in ("hidden", "absent"):
                refused = call(org)
                costs = [checkouts(server, functools.partial(failure, refused)) for _ in range(3)]
                error = failure(refused)
                seen[org] = (costs, error.code, error.message.replace(org, "<org>"))
            assert seen["hidden"] == seen["absent"], name
            assert seen["absent"][:2] == ([1, 0, 0], grpc.StatusCode.NOT_FOUND), name


@pytest.mark.parametrize("where", ["this-process", "other-process"])
def test_a_missing_org_is_found_once_it_is_created(
    users: Users,
    admin: Client,
    db: psycopg.Connection[Any],
    server: ServerThread,
    database_url: str,
    where: str,
) -> None:
    owner = users.create()
    cache = server.server.cache
    within(5, lambda: cache.enabled)
    read = lambda: admin.orgs.GetOrganization(opb.GetOrganizationRequest(org="later"))  # noqa: E731
    notifications_applied(server, db)
    with usage_flush_paused(server):
        costs = [checkouts(server, lambda: code_of(read)) for _ in range(2)]
    assert costs == [1, 0]  # remembered missing
    assert code_of(read) is grpc.StatusCode.NOT_FOUND
    if where == "this-process":  # by another caller than the one who remembered it missing
        owner.orgs.CreateOrganization(opb.CreateOrganizationRequest(name="later"))
    else:
        elsewhere = ServerThread(Settings(), database_url)
        try:
            with grpc.insecure_channel(elsewhere.address) as channel:
                Client(channel, owner.token).orgs.CreateOrganization(
                    opb.CreateOrganizationRequest(name="later")
                )
        finally:
            elsewhere.stop()
        notifications_applied(server, db)
    assert read().organization.name == "later"


def test_each_listener_hears_only_its_own_pings(database_url: str) -> None:
    """Replicas ping themselves on channels of their own: with 8 listeners on one database,
    each hears its own pings and nothing of the others' (before, every listener heard every
    replica's pings: 4·N notifications a second each, N² in all;
    benchmarks/listener_fanout.py measures the rate for 1, 4 and 16)."""

    async def run() -> list[list[str]]:
        heard: list[list[str]] = [[] for _ in range(8)]
        enough = asyncio.Event()
        listeners = [CacheListener(AccessCache(), database_url, Settings()) for _ in heard]

        def hear(i: int, payload: str) -> None:
            heard[i].append(payload)
            if all(len(h) >= 3 for h in heard):
                enough.set()

        for i, listener in enumerate(listeners):
            listener.heard = functools.partial(hear, i)
            listener.start()
        try:
            await asyncio.wait_for(enough.wait(), 30)
        finally:
            for listener in listeners:
                await listener.stop()
        return heard

    heard = asyncio.run(run())
    assert all(set(payloads) == {"ping"} for payloads in heard), heard
