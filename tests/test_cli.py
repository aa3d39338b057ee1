"""The real ``spoke-grpc`` console script, run as a subprocess the way an operator runs it."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import user_pb2

from tests import harness
from tests.conftest import free_port
from tests.harness import Client

SPOKE_GRPC = Path(sys.executable).parent / "spoke-grpc"
TOKEN_RE = re.compile(r"^spoke_[A-Za-z0-9_-]{43}$")


def cli_env(
    cwd: Path, database_url: str | None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A clean spoke environment plus ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SPOKE_") and k not in {"DATABASE_URL", "DEFAULT_QUOTA_TIER"}
    }
    base["SPOKE_DATA_DIR"] = str(cwd / ".spoke")
    if database_url is not None:
        base["DATABASE_URL"] = database_url
    base.update(env or {})
    return base


def run_cli(
    *args: str,
    cwd: Path,
    database_url: str | None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Runs ``spoke-grpc ARGS`` with a clean spoke environment plus ``env``."""
    return subprocess.run(
        [str(SPOKE_GRPC), *args],
        cwd=cwd,
        env=cli_env(cwd, database_url, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def serve_expecting_failure(
    cwd: Path, database_url: str | None, env: Mapping[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """``spoke-grpc serve`` on an ephemeral port that must exit by itself (a hang times out).

    Logs are at WARNING so that stderr holds only what goes wrong; INFO lines about the
    start (migrations applied, serving) are not errors.
    """
    return run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        *args,
        cwd=cwd,
        database_url=database_url,
        env={"SPOKE_LOG_LEVEL": "WARNING", "SPOKE_POOL_TIMEOUT": "2", **(env or {})},
        timeout=30,
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
        pytest.param("a,b@example.com", id="list"),
        pytest.param('"A" <a@example.com>', id="display-name"),
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


BAD_URLS = [
    pytest.param("notaurl", "no scheme", id="not-a-url"),
    pytest.param("mysql://u:pw@localhost/spoke", "'mysql'", id="mysql"),
    pytest.param("postgresql://u:s3cret@[::1/spoke", "not a valid URL", id="unclosed-ipv6"),
    pytest.param("postgresql://u:s3cret@h:port/spoke", "not a valid URL", id="bad-port"),
    pytest.param("postgresql://u:s3cret@h/spoke?nosuch=1", "nosuch", id="unknown-option"),
]


@pytest.mark.parametrize(("url", "fragment"), BAD_URLS)
def test_bad_database_url_is_a_one_line_error_for_every_command(
    tmp_path: Path, url: str, fragment: str
) -> None:
    for args in (("migrate", "--list"), ("users", "create", "--email", "x@example.com")):
        result = run_cli(*args, cwd=tmp_path, database_url=url)
        line = assert_one_line_error(result, "DATABASE_URL", fragment)
        assert "s3cret" not in line
    result = serve_expecting_failure(tmp_path, url)
    assert_one_line_error(result, "DATABASE_URL", fragment)
    assert not (tmp_path / ".spoke").exists()  # no embedded server was started instead


def users_and_audit_events(database_url: str) -> tuple[int, int]:
    with harness.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM audit_events)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize(
    ("token_path", "fragment"),
    [
        pytest.param("/proc/nope/token", "No such file or directory", id="under-proc"),
        pytest.param("{tmp}/a-file/token", "a-file is not a directory", id="under-a-file"),
        pytest.param("{tmp}/a-dir", "already exists", id="is-a-directory"),
    ],
)
def test_unwritable_bootstrap_token_file_is_a_one_line_error_and_creates_no_admin(
    fresh_url: str, tmp_path: Path, token_path: str, fragment: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "a-dir").mkdir()
    token_file = token_path.format(tmp=tmp_path)
    result = serve_expecting_failure(
        tmp_path, fresh_url, {"SPOKE_BOOTSTRAP_TOKEN_FILE": token_file}
    )
    assert_one_line_error(result, f"bootstrap token file {token_file}", fragment)
    assert users_and_audit_events(fresh_url) == (0, 0)
    assert (tmp_path / "a-file").read_text() == "not a directory\n"
    assert list((tmp_path / "a-dir").iterdir()) == []


def test_existing_bootstrap_token_file_is_not_overwritten(fresh_url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "bootstrap-token"
    token_file.write_text("an older server's token\n")
    token_file.chmod(0o640)
    result = serve_expecting_failure(
        tmp_path, fresh_url, {"SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file)}
    )
    line = assert_one_line_error(result, f"bootstrap token file {token_file} already exists")
    for advice in ("remove it", "SPOKE_BOOTSTRAP_TOKEN_FILE", "spoke-grpc users create"):
        assert advice in line
    assert token_file.read_text() == "an older server's token\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o640
    assert users_and_audit_events(fresh_url) == (0, 0)


def test_a_taken_address_fails_before_anything_is_created(fresh_url: str, tmp_path: Path) -> None:
    """Checked first: no migration, no bootstrap admin, no token file for a server that
    cannot listen."""
    token_file = tmp_path / "bootstrap-token"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = serve_expecting_failure(
            tmp_path,
            fresh_url,
            {"SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file)},
            "--listen",
            address,
        )
    assert_one_line_error(result, f"cannot listen on {address}", "in use", "--listen")
    assert not token_file.exists()
    with psycopg.connect(fresh_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)  # not even the migrations ran


@pytest.fixture
def second_fresh_url(pg_admin_url: str) -> Iterator[str]:
    url = harness.create_database(pg_admin_url, prefix="spoke_fresh")
    try:
        yield url
    finally:
        harness.drop_database(pg_admin_url, url)


def serve_until_ready(cwd: Path, database_url: str, token_file: Path) -> str:
    """Runs ``serve`` until it says it is serving, stops it with SIGTERM; returns its stdout."""
    out = cwd / f"serve-{time.monotonic_ns()}.out"
    env = cli_env(
        cwd,
        database_url,
        {"SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file), "SPOKE_SHUTDOWN_GRACE": "1"},
    )
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [str(SPOKE_GRPC), "serve", "--listen", "127.0.0.1:0"],
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in out.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, "serve did not start within 30s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out.read_text(), stderr)
    assert "Traceback" not in stderr
    return out.read_text()


def test_bootstrap_token_of_one_database_is_never_replaced_by_a_server_on_another(
    fresh_url: str, second_fresh_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "bootstrap-token"
    first = serve_until_ready(tmp_path, fresh_url, token_file)
    assert f"bootstrap platform-admin token written to {token_file}" in first
    token = token_file.read_text()
    assert TOKEN_RE.fullmatch(token.strip())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert users_and_audit_events(fresh_url) == (1, 1)

    # A server on another (empty) database refuses rather than replace the token.
    result = serve_expecting_failure(
        tmp_path, second_fresh_url, {"SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file)}
    )
    assert_one_line_error(result, "already exists")
    assert token_file.read_text() == token
    assert users_and_audit_events(second_fresh_url) == (0, 0)

    # The first server starts again: users exist, nothing is written.
    again = serve_until_ready(tmp_path, fresh_url, token_file)
    assert "bootstrap" not in again
    assert token_file.read_text() == token
    assert users_and_audit_events(fresh_url) == (1, 1)


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        pytest.param(("--no-migrate",), {}, "--no-migrate", id="no-migrate"),
        pytest.param((), {"SPOKE_AUTO_MIGRATE": "false"}, "SPOKE_AUTO_MIGRATE", id="env"),
    ],
)
def test_serve_without_migrating_refuses_a_database_with_pending_migrations(
    fresh_url: str, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], fragment: str
) -> None:
    pending = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url).stdout.split()
    assert pending
    result = serve_expecting_failure(tmp_path, fresh_url, env, *args)
    assert_one_line_error(result, "pending migration", fragment, "spoke-grpc migrate")
    after = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url)
    assert after.stdout.split() == pending
    assert not (tmp_path / ".spoke").exists()


def test_migrate_rollback_all_needs_yes(fresh_url: str, tmp_path: Path) -> None:
    applied = run_cli("migrate", cwd=tmp_path, database_url=fresh_url)
    assert applied.returncode == 0, applied.stderr
    ids = applied.stdout.strip().removeprefix("applied: ").split(", ")

    refused = run_cli("migrate", "--rollback-all", cwd=tmp_path, database_url=fresh_url)
    assert_one_line_error(refused, "--rollback-all", "every table", "--yes")
    assert refused.stdout == ""
    listed = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url)
    assert listed.stdout == ""  # nothing was rolled back
    with harness.connect(fresh_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)

    done = run_cli("migrate", "--rollback-all", "--yes", cwd=tmp_path, database_url=fresh_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rolled back: " + ", ".join(reversed(ids))
    listed = run_cli("migrate", "--list", cwd=tmp_path, database_url=fresh_url)
    assert listed.stdout.split() == ids
    with harness.connect(fresh_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


def test_missing_migrations_directory_is_a_one_line_error(
    database_url: str, tmp_path: Path
) -> None:
    result = run_cli(
        "migrate",
        cwd=tmp_path,
        database_url=database_url,
        env={"SPOKE_MIGRATIONS_DIR": str(tmp_path / "nowhere")},
    )
    assert_one_line_error(result, "no migrations found", "SPOKE_MIGRATIONS_DIR")


def test_unusable_embedded_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = run_cli(
        "migrate",
        "--list",
        cwd=tmp_path,
        database_url=None,
        env={"SPOKE_DATA_DIR": str(tmp_path / "a-file" / "data")},
    )
    assert_one_line_error(result, "embedded PostgreSQL", "SPOKE_DATA_DIR")
