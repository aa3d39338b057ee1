"""The first platform admin, created when the users table is empty.

Its token is written to a 0600 file (never printed), so a fresh ``make run`` can be
used at once. An advisory lock keeps concurrent starts from creating two.
"""

from __future__ import annotations

import os
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from spoke_grpc.domain.users import NewUser, create_user
from spoke_grpc.store import users

BOOTSTRAP_EMAIL = "admin@spoke.localhost"
_LOCK_KEY = 0x5370_6B65  # "Spke"


async def ensure_bootstrap_admin(pool: AsyncConnectionPool, token_file: Path) -> Path | None:
    """Creates the admin and writes its token to ``token_file``; None if users exist."""
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        if await users.count_users(conn):
            return None
        created = await create_user(
            conn,
            NewUser(email=BOOTSTRAP_EMAIL, display_name="Bootstrap admin", is_admin=True),
            actor_id=None,
            method="bootstrap",
        )
        write_secret(token_file, created.token.value + "\n")
    return token_file


def write_secret(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
