"""The real ``spoke-grpc`` console script, run as a subprocess the way an operator runs it."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import user_pb2

from tests.conftest import free_port
from tests.harness import Client

SPOKE_GRPC = Path(sys.executable).parent / "spoke-grpc"
TOKEN_RE = re.compile(r"^spoke_[A-Za-z0-9_-]{43}$")


def run_cli(
    *args: str, cwd: Path, database_url: str | None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``spoke-grpc ARGS`` with a clean spoke environment plus ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPOKE_") and k not in {"DATABASE_URL", "DEFAULT_QUOTA_TIER"}
    }
    base["SPOKE_DATA_DIR"] = str(cwd / ".spoke")
    if database_url is not None:
        base["DATABASE_URL"] = database_url
    base.update(env or {})
    return subprocess.run(
        [str(SPOKE_GRPC), *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 1, a single ``spoke-grpc: error:`` line on stderr, no traceback, no token."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spoke-grpc: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "spoke_" not in result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def create_user(
    database_url: str, cwd: Path, email: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli("users", "create", "--email", email, *extra, cwd=cwd, database_url=database_url)


def last_line_token(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    token = result.stdout.rstrip("\n").splitlines()[-1]
    assert TOKEN_RE.fullmatch(token), repr(token)
    return token


def test_users_create_prints_a_working_token_last(
    admin: Client,
    channel: grpc.Channel,
    database_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    result = create_user(database_url, tmp_path, "x@example.com", "--display-name", "X")
    token = last_line_token(result)

    me = Client(channel, token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
    assert (me.email, me.display_name, me.is_admin) == ("x@example.com", "X", False)

    # Only the token's SHA-256 is stored, never the token itself.
    stored = db.execute(
        "SELECT t.token_hash FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE u.email = 'x@example.com'"
    ).fetchall()
    assert stored == [(hashlib.sha256(token.encode()).digest(),)]
    audit = db.execute(
        "SELECT count(*) FROM audit_events WHERE target = %s", [f"users/{me.id}"]
    ).fetchone()
    assert audit == (1,)


def test_users_create_admin_makes_a_platform_admin(
    admin: Client, channel: grpc.Channel, database_url: str, tmp_path: Path
) -> None:
    token = last_line_token(create_user(database_url, tmp_path, "boss@example.com", "--admin"))
    client = Client(channel, token)
    me = client.users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
    assert me.is_admin
    assert me.email == "boss@example.com"
    # A platform admin may create users.
    made = client.users.CreateUser(user_pb2.CreateUserRequest(email="made@example.com"))
    assert made.user.email == "made@example.com"


def test_users_create_duplicate_email_any_case_is_a_one_line_error(
    admin: Client, database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    last_line_token(create_user(database_url, tmp_path, "dup@example.com"))
    result = create_user(database_url, tmp_path, "DUP@Example.COM")
    assert_one_line_error(result, "already exists")
    count = db.execute("SELECT count(*) FROM users WHERE lower(email) = 'dup@example.com'")
    assert count.fetchone() == (1,)


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("not-an-email", id="no-at-sign"),
        pytest.param("two@@example.com", id="double-at"),
        pytest.param("space in@example.com", id="space"),
        pytest.param("", id="empty"),
    ],
)
def test_users_create_invalid_email_is_a_one_line_error(
    admin: Client, database_url: str, db: psycopg.Connection[Any], tmp_path: Path, email: str
) -> None:
    result = create_user(database_url, tmp_path, email)
    assert_one_line_error(result, "email")
    assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)  # the bootstrap admin


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("users", "create", "--email", "x@example.com"), id="users-create"),
        pytest.param(("migrate", "--list"), id="migrate-list"),
        pytest.param(("migrate",), id="migrate"),
        pytest.param(("serve",), id="serve"),
        pytest.param(("serve", "--no-migrate"), id="serve-no-migrate"),
    ],
)
def test_unreachable_database_is_a_one_line_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    result = run_cli(
        *args,
        cwd=tmp_path,
        database_url=url,
        env={"SPOKE_POOL_TIMEOUT": "1", "SPOKE_LISTEN": f"127.0.0.1:{free_port()}"},
    )
    assert_one_line_error(result, "database unavailable")


def test_migrate_list_prints_nothing_when_up_to_date(
    admin: Client, database_url: str, tmp_path: Path
) -> None:
    result = run_cli("migrate", "--list", cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_migrate_applies_lists_and_rolls_back_a_fresh_database(
    fresh_url: str, tmp_path: Path
) -> None:
    pending = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url)
    assert pending.returncode == 0, pending.stderr
    ids = pending.stdout.split()
    assert ids and ids[0] == "0001_users"

    applied = run_cli("migrate", cwd=tmp_path, database_url=fresh_url)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "applied: " + ", ".join(ids)

    again = run_cli("migrate", cwd=tmp_path, database_url=fresh_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied: nothing (up to date)"

    back = run_cli("migrate", "--rollback", cwd=tmp_path, database_url=fresh_url)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"rolled back: {ids[-1]}"
    pending_again = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url)
    assert pending_again.stdout.split() == [ids[-1]]


def test_users_create_on_an_unmigrated_database_is_a_one_line_error(
    fresh_url: str, tmp_path: Path
) -> None:
    result = create_user(fresh_url, tmp_path, "early@example.com")
    assert_one_line_error(result, "migrat")


def test_bad_default_quota_tier_is_a_one_line_error(database_url: str, tmp_path: Path) -> None:
    result = run_cli(
        "migrate",
        "--list",
        cwd=tmp_path,
        database_url=database_url,
        env={"DEFAULT_QUOTA_TIER": "huge"},
    )
    assert_one_line_error(result, "DEFAULT_QUOTA_TIER", "huge")
    assert result.stdout == ""
