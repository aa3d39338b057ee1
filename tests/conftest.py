from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import member_pb2, user_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from spoke_grpc.servicers.convert import ROLE_TO_PROTO
from spoke_grpc.types import Role
from tests import harness
from tests.harness import Client, ServerThread

TENANT_TABLES = "users, organizations, audit_events"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    # Not under pytest's tmp_path: that tree is private to root (the embedded server runs
    # as its own user) and is pruned by concurrent pytest runs.
    data_dir = Path(tempfile.mkdtemp(prefix="spoke-test-pg-"))
    data_dir.chmod(0o755)
    return harness.admin_url(data_dir)


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> Iterator[str]:
    url = harness.migrated_template(pg_admin_url)
    yield url
    harness.drop_database(pg_admin_url, url)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    yield url
    harness.drop_database(pg_admin_url, url)


@pytest.fixture
def fresh_url(pg_admin_url: str) -> Iterator[str]:
    """An empty database with no migrations applied, dropped afterwards."""
    url = harness.create_database(pg_admin_url, prefix="spoke_fresh")
    try:
        yield url
    finally:
        harness.drop_database(pg_admin_url, url)


@pytest.fixture(scope="session")
def settings() -> Settings:
    # Every test calls from 127.0.0.1: the whole suite would share one address's anonymous
    # allowance (tests/interceptors/test_anonymous_rate.py has a server of its own).
    return Settings(
        pool_min_size=2, pool_max_size=20, shutdown_grace_seconds=1, anonymous_rate_limit=0
    )


@pytest.fixture(scope="session")
def server(settings: Settings, database_url: str) -> Iterator[ServerThread]:
    thread = ServerThread(settings, database_url)
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with harness.connect(database_url) as conn:
        yield conn


@pytest.fixture
def admin(
    server: ServerThread, channel: grpc.Channel, db: psycopg.Connection[Any], tmp_path: Path
) -> Client:
    """Fresh state for the test, and a platform admin made by the real bootstrap."""
    db.execute(f"TRUNCATE {TENANT_TABLES} CASCADE")
    # The server hears of the TRUNCATE within milliseconds; the test may call sooner.
    server.server.cache.clear()
    server.server.responses.clear()
    token_file = server.run(ensure_bootstrap_admin(server.server.pool, tmp_path / "token"))
    assert token_file is not None
    client = Client(channel, token_file.read_text().strip())
    me = client.users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
    client.user_id, client.email = me.id, me.email
    return client


class Users:
    """Makes users through the real CreateUser RPC."""

    def __init__(self, admin: Client, db: psycopg.Connection[Any]) -> None:
        self._admin = admin
        self._db = db
        self._count = 0

    def create(self, name: str = "", *, is_admin: bool = False) -> Client:
        self._count += 1
        email = f"{name or 'user'}{self._count}@example.com"
        response = self._admin.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, is_admin=is_admin)
        )
        return Client(self._admin.channel, response.token, response.user.id, email)

    def join(self, org_id: str, user: Client, role: Role) -> None:
        """Makes ``user`` a member through the real AddMember RPC (as the platform admin)."""
        self._admin.members.AddMember(
            member_pb2.AddMemberRequest(org=org_id, user=user.user_id, role=ROLE_TO_PROTO[role])
        )


@pytest.fixture
def users(admin: Client, db: psycopg.Connection[Any]) -> Users:
    return Users(admin, db)


@pytest.fixture
def anonymous(channel: grpc.Channel) -> Client:
    return Client(channel)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
