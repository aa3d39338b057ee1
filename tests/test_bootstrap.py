"""The bootstrap platform admin: created only while there are no users, its token written to
a new 0600 file in the same transaction, and never over an existing file.

Each test runs on its own migrated database, on pools with autocommit connections (how the
server's pool works) and without, since the bootstrap must not depend on either.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.bootstrap import BOOTSTRAP_EMAIL, BootstrapError, ensure_bootstrap_admin
from tests import harness
from tests.test_cli import TOKEN_RE


@pytest.fixture
def migrated_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    try:
        yield url
    finally:
        harness.drop_database(pg_admin_url, url)


@pytest.fixture(params=[True, False], ids=["autocommit", "transactional"])
def autocommit(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


def bootstrap(url: str, autocommit: bool, *token_files: Path) -> list[Path | BaseException | None]:
    """Runs ``ensure_bootstrap_admin`` once per token file, concurrently, on one pool."""

    async def run() -> list[Path | BaseException | None]:
        pool = AsyncConnectionPool(
            url,
            min_size=len(token_files),
            max_size=len(token_files),
            open=False,
            kwargs={"autocommit": autocommit},
        )
        await pool.open(wait=True, timeout=10)
        try:
            return await asyncio.gather(
                *(ensure_bootstrap_admin(pool, path) for path in token_files),
                return_exceptions=True,
            )
        finally:
            await pool.close()

    return asyncio.run(run())


def users_and_audit_events(url: str) -> tuple[int, int]:
    with harness.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM audit_events)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def token_owner(url: str, token: str) -> tuple[Any, ...] | None:
    with harness.connect(url) as conn:
        return conn.execute(
            "SELECT u.email, u.is_admin FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = sha256(convert_to(%s, 'UTF8'))",
            [token],
        ).fetchone()


def test_first_start_creates_the_admin_and_a_0600_token_file(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    token_file = tmp_path / "new-dir" / "token"
    assert bootstrap(migrated_url, autocommit, token_file) == [token_file]
    token = token_file.read_text()
    assert token.endswith("\n")
    assert TOKEN_RE.fullmatch(token.strip())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_owner(migrated_url, token.strip()) == (BOOTSTRAP_EMAIL, True)
    assert users_and_audit_events(migrated_url) == (1, 1)


def test_when_users_exist_nothing_is_created_or_written(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    first = tmp_path / "first"
    assert bootstrap(migrated_url, autocommit, first) == [first]
    # Neither a new file nor an existing one is touched.
    existing = tmp_path / "existing"
    existing.write_text("keep\n")
    second = tmp_path / "second"
    assert bootstrap(migrated_url, autocommit, second, existing) == [None, None]
    assert not second.exists()
    assert existing.read_text() == "keep\n"
    assert users_and_audit_events(migrated_url) == (1, 1)


def test_concurrent_starts_create_one_admin(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    files = [tmp_path / f"token-{i}" for i in range(4)]
    results = bootstrap(migrated_url, autocommit, *files)
    assert sorted(results, key=lambda r: r is None) == [
        *(p for p in files if p.exists()),
        None,
        None,
        None,
    ]
    assert [p.exists() for p in files].count(True) == 1
    assert users_and_audit_events(migrated_url) == (1, 1)


def test_an_existing_token_file_is_left_alone_and_no_admin_is_created(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("another database's admin token\n")
    token_file.chmod(0o644)
    [result] = bootstrap(migrated_url, autocommit, token_file)
    assert isinstance(result, BootstrapError)
    message = str(result)
    assert f"bootstrap token file {token_file} already exists" in message
    assert "SPOKE_BOOTSTRAP_TOKEN_FILE" in message
    assert "spoke-grpc users create" in message
    assert token_file.read_text() == "another database's admin token\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o644
    assert users_and_audit_events(migrated_url) == (0, 0)


def test_a_dangling_symlink_is_not_followed(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    target = tmp_path / "elsewhere"
    token_file = tmp_path / "token"
    token_file.symlink_to(target)
    [result] = bootstrap(migrated_url, autocommit, token_file)
    assert isinstance(result, BootstrapError)
    assert "already exists" in str(result)
    assert not target.exists()
    assert users_and_audit_events(migrated_url) == (0, 0)


@pytest.mark.parametrize(
    "relative", ["a-file/token", "a-file/deeper/token"], ids=["under-a-file", "deeper"]
)
def test_an_unwritable_path_creates_no_admin(
    migrated_url: str, tmp_path: Path, autocommit: bool, relative: str
) -> None:
    (tmp_path / "a-file").write_text("")
    token_file = tmp_path / relative
    [result] = bootstrap(migrated_url, autocommit, token_file)
    assert isinstance(result, BootstrapError)
    assert f"{tmp_path / 'a-file'} is not a directory" in str(result)
    assert users_and_audit_events(migrated_url) == (0, 0)


def test_a_failed_commit_removes_the_token_file(
    migrated_url: str, tmp_path: Path, autocommit: bool
) -> None:
    """A deferred constraint fails at COMMIT, after the file was written: the token of an
    admin that does not exist must not stay behind."""
    with harness.connect(migrated_url) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON users"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    token_file = tmp_path / "token"
    [result] = bootstrap(migrated_url, autocommit, token_file)
    assert isinstance(result, psycopg.errors.RaiseException), result
    assert not token_file.exists()
    assert users_and_audit_events(migrated_url) == (0, 0)
