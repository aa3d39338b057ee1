"""Test harness: real PostgreSQL databases, a real grpc.aio server on an ephemeral port in
a background thread, and generated client stubs, the way users call the service."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import psycopg
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from psycopg import sql
from spoke.v1 import (
    event_pb2_grpc,
    member_pb2_grpc,
    module_pb2_grpc,
    organization_pb2_grpc,
    quota_pb2_grpc,
    user_pb2_grpc,
    webhook_pb2_grpc,
)

from spoke_grpc import cache, migrations
from spoke_grpc.config import REPO_ROOT, Settings
from spoke_grpc.database import with_database
from spoke_grpc.server import SpokeServer

T = TypeVar("T")
MIGRATIONS = REPO_ROOT / "migrations"


def admin_url(tmp_dir: Path) -> str:
    """The server tests create their databases on: DATABASE_URL, or an embedded one."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from spoke_grpc.embedded import start_server

    return start_server(tmp_dir, delete_on_exit=True)


def create_database(url: str, *, template: str | None = None, prefix: str = "spoke_test") -> str:
    """Creates a uniquely named database (optionally cloned) and returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query)
    return with_database(url, name)


def database_name(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


def drop_database(url: str, database_url: str) -> None:
    name = database_name(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrated_template(url: str) -> str:
    database_url = create_database(url, prefix="spoke_tpl")
    migrations.apply(database_url, MIGRATIONS)
    return database_url


class ServerThread:
    """A SpokeServer on its own event loop in a daemon thread. ``listen`` must take IPv4
    loopback calls (``[::]:0`` takes IPv6 ones too): ``address`` is on 127.0.0.1."""

    def __init__(
        self, settings: Settings, database_url: str, *, listen: str = "127.0.0.1:0", **options: Any
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(_make_server(settings, database_url, **options))
        self.port = self.run(self.server.start(listen))
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _make_server(settings: Settings, database_url: str, **options: Any) -> SpokeServer:
    return SpokeServer(settings, database_url, **options)


class _Bound:
    """A stub whose methods send the client's metadata and a timeout."""

    def __init__(self, stub: Any, metadata: Callable[[], list[tuple[str, str]]]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", 30)
            return method(request, metadata=self._metadata(), **kwargs)

        call.future = lambda request, **kw: method.future(  # type: ignore[attr-defined]
            request, metadata=self._metadata(), timeout=30, **kw
        )
        call.with_call = lambda request, **kw: method.with_call(  # type: ignore[attr-defined]
            request, metadata=self._metadata(), timeout=30, **kw
        )
        return call


@dataclass
class Client:
    """Generated stubs for every spoke.v1 service, calling as ``token`` (None: anonymous)."""

    channel: grpc.Channel
    token: str | None = None
    user_id: str = ""
    email: str = ""
    users: Any = field(init=False)
    orgs: Any = field(init=False)
    members: Any = field(init=False)
    quotas: Any = field(init=False)
    modules: Any = field(init=False)
    webhooks: Any = field(init=False)
    events: Any = field(init=False)

    def __post_init__(self) -> None:
        self.users = _Bound(user_pb2_grpc.UserServiceStub(self.channel), self.metadata)
        self.orgs = _Bound(
            organization_pb2_grpc.OrganizationServiceStub(self.channel), self.metadata
        )
        self.members = _Bound(member_pb2_grpc.MemberServiceStub(self.channel), self.metadata)
        self.quotas = _Bound(quota_pb2_grpc.QuotaServiceStub(self.channel), self.metadata)
        self.modules = _Bound(module_pb2_grpc.ModuleServiceStub(self.channel), self.metadata)
        self.webhooks = _Bound(webhook_pb2_grpc.WebhookServiceStub(self.channel), self.metadata)
        self.events = _Bound(event_pb2_grpc.EventServiceStub(self.channel), self.metadata)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


@dataclass(frozen=True)
class RpcFailure:
    """A failed call with its google.rpc details unpacked."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status

    def detail(self, kind: type[T]) -> T:
        for packed in self.status.details:
            message = kind()  # type: ignore[call-arg]
            if packed.Is(message.DESCRIPTOR):  # type: ignore[attr-defined]
                packed.Unpack(message)  # type: ignore[arg-type]
                return message
        raise AssertionError(f"no {kind.__name__} in details: {list(self.status.details)}")

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo:
        return self.detail(error_details_pb2.ErrorInfo)

    @property
    def field_violations(self) -> dict[str, str]:
        bad = self.detail(error_details_pb2.BadRequest)
        return {v.field: v.description for v in bad.field_violations}


def failure(call: Callable[[], Any]) -> RpcFailure:
    """Runs ``call``, which must fail, and returns its status with details."""
    try:
        call()
    except grpc.RpcError as exc:
        return failure_of(exc)
    raise AssertionError("the call succeeded")


def failure_of(exc: grpc.RpcError) -> RpcFailure:
    """A failed call's status with its details, which every failure must carry."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, f"{exc.code()} without google.rpc.Status details: {exc.details()}"  # type: ignore[attr-defined]
    assert exc.code() is not grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    return RpcFailure(exc.code(), exc.details() or "", status)  # type: ignore[attr-defined]


def all_pages(fetch: Callable[[str], Any], items: str) -> list[list[Any]]:
    """Follows ``next_page_token`` from the first page to the last; returns each page's items.

    ``fetch(token)`` makes one List call; ``items`` names the response's repeated field.
    """
    pages: list[list[Any]] = []
    token = ""
    while True:
        response = fetch(token)
        pages.append(list(getattr(response, items)))
        token = response.next_page_token
        if not token:
            return pages


def database_text(db: psycopg.Connection[Any]) -> str:
    """Every row of every table in the database as text (bytea as hex): a dump to search."""
    tables = db.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    ).fetchall()
    parts = []
    for (table,) in tables:
        query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
        parts.extend(row[0] for row in db.execute(query).fetchall())
    return "\n".join(parts)


def lock_waiters(
    db: psycopg.Connection[Any], *, blocked_by: int | None = None, relation: str | None = None
) -> list[int]:
    """Backends of this database waiting for a lock: one that ``blocked_by`` (a backend pid)
    holds, and/or one on table ``relation``."""
    conditions = [
        sql.SQL("a.datname = current_database()"),
        sql.SQL("a.wait_event_type = 'Lock'"),
    ]
    params: list[Any] = []
    if blocked_by is not None:
        conditions.append(sql.SQL("%s = ANY (pg_blocking_pids(a.pid))"))
        params.append(blocked_by)
    if relation is not None:
        conditions.append(
            sql.SQL(
                "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted"
                " AND l.relation = %s::regclass)"
            )
        )
        params.append(relation)
    query = sql.SQL("SELECT a.pid FROM pg_stat_activity a WHERE {} ORDER BY a.pid").format(
        sql.SQL(" AND ").join(conditions)
    )
    return [pid for (pid,) in db.execute(query, params).fetchall()]


def wait_for_lock_waiter(
    db: psycopg.Connection[Any],
    *,
    blocked_by: int | None = None,
    relation: str | None = None,
    timeout: float = 15,
) -> int:
    """The pid of the one backend waiting as ``lock_waiters`` describes, once there is one:
    proof that a call in flight reached that lock (the pg_locks waiter technique)."""
    deadline = time.monotonic() + timeout
    while True:
        waiters = lock_waiters(db, blocked_by=blocked_by, relation=relation)
        if waiters:
            assert len(waiters) == 1, f"several backends wait: {waiters}"
            return waiters[0]
        assert time.monotonic() < deadline, f"no backend came to wait ({blocked_by=}, {relation=})"
        time.sleep(0.01)  # polling the database's own record of the wait, not a guess


@contextmanager
def usage_flush_paused(server: ServerThread) -> Iterator[None]:
    """The usage flush takes a pooled connection of its own every interval: paused while
    a call's checkouts are counted, so that it cannot land inside one."""
    usage = server.server.usage
    server.run(usage.stop())

    async def restart() -> None:
        usage.start()

    try:
        yield
    finally:
        server.run(restart())


def checkouts(server: ServerThread, call: Callable[[], Any]) -> int:
    """How many pool connections ``call`` took (inside ``usage_flush_paused``)."""
    before = server.server.pool.get_stats().get("requests_num", 0)
    call()
    return int(server.server.pool.get_stats().get("requests_num", 0) - before)


def notifications_applied(server: ServerThread, db: psycopg.Connection[Any]) -> None:
    """Returns once ``server``'s cache has acted on every notification committed so far.

    PostgreSQL delivers notifications in commit order: once the listener has heard a marker
    sent now, it has applied everything committed before it."""
    marker = f"ping:test-{uuid.uuid4()}"
    heard = threading.Event()
    listener = server.server.cache_listener

    def hear(payload: str) -> None:
        if payload == marker:
            heard.set()

    listener.heard = hear
    try:
        for _ in range(10):  # sent again while the listener is (re)connecting
            db.execute("SELECT pg_notify(%s, %s)", [cache.CHANNEL, marker])
            if heard.wait(1):
                return
        raise AssertionError("the cache listener never heard the marker")
    finally:
        listener.heard = None


@contextmanager
def connect(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


__all__ = ["any_pb2"]
