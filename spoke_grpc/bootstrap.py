"""The first platform admin, created when the users table is empty.

Its token is written to a new 0600 file (never printed), so a fresh ``make run`` can be
used at once. An advisory lock keeps concurrent starts from creating two.

The file is created exclusively inside the transaction that creates the admin: an
existing file (perhaps holding the token of a server on another database) is never
replaced, and when the file cannot be written no admin is created.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.config import Settings
from spoke_grpc.database import connect
from spoke_grpc.domain.users import NewUser, create_user
from spoke_grpc.store import users

# Under ``.example`` (RFC 2606): a valid address that no mail can ever reach.
BOOTSTRAP_EMAIL = "admin@spoke.example"
_LOCK_KEY = 0x5370_6B65  # "Spke"
_OTHERWISE = (
    "or create an admin with 'spoke-grpc users create --email EMAIL --admin' (no admin was created)"
)


class BootstrapError(Exception):
    """The bootstrap admin's token file cannot be written; nothing was created."""


async def ensure_bootstrap_admin(pool: AsyncConnectionPool, token_file: Path) -> Path | None:
    """Creates the admin and writes its token to ``token_file``; None if users exist.

    Raises BootstrapError, creating no admin, when ``token_file`` exists or cannot be
    written.
    """
    async with pool.connection() as conn:
        return await _ensure(conn, token_file)


async def bootstrap_before_serving(
    database_url: str, settings: Settings, token_file: Path
) -> Path | None:
    """``ensure_bootstrap_admin`` on a connection of its own, for ``serve`` to call before
    it listens: once health answers SERVING, the token file is there to read. It connects
    directly (``SPOKE_DIRECT_DATABASE_URL`` when set), as what takes advisory locks does."""
    timeout = max(1, int(settings.pool_timeout_seconds))
    async with await connect(
        settings.direct_url(database_url), settings, connect_timeout=timeout, autocommit=True
    ) as conn:
        return await _ensure(conn, token_file)


async def _ensure(conn: AsyncConnection, token_file: Path) -> Path | None:
    written = False
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            if await users.count_users(conn):
                return None
            created = await create_user(
                conn,
                NewUser(email=BOOTSTRAP_EMAIL, display_name="Bootstrap admin", is_admin=True),
                actor_id=None,
                method="bootstrap",
            )
            write_new_secret(token_file, created.token.value + "\n")
            written = True
    except BaseException:
        if written:  # the admin was not committed: its token must not stay behind
            _discard(token_file)
        raise
    return token_file


def write_new_secret(path: Path, text: str) -> None:
    """Creates ``path`` readable by its owner only (0600) holding ``text``, flushed to disk.

    Raises BootstrapError if ``path`` already exists (it is left as it was) or cannot be
    written (nothing is left behind).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a directory" if blocker else _reason(exc)
        raise BootstrapError(
            f"cannot create the directory of bootstrap token file {path}: {reason};"
            f" set SPOKE_BOOTSTRAP_TOKEN_FILE to a writable path, {_OTHERWISE}"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise BootstrapError(
            f"bootstrap token file {path} already exists (perhaps from a server on another"
            " database); remove it, or set SPOKE_BOOTSTRAP_TOKEN_FILE to a new path, " + _OTHERWISE
        ) from None
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        try:
            os.fchmod(fd, 0o600)
            data = text.encode()
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _discard(path)
        raise _unwritable(path, exc) from None
    _fsync_directory(path.parent)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _unwritable(path: Path, exc: OSError) -> BootstrapError:
    return BootstrapError(
        f"cannot write bootstrap token file {path}: {_reason(exc)};"
        f" set SPOKE_BOOTSTRAP_TOKEN_FILE to a writable path, {_OTHERWISE}"
    )


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


def _fsync_directory(directory: Path) -> None:
    """Makes the new file's name durable too (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
