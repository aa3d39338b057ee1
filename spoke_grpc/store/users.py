"""Users and API tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.tokens import IssuedToken
from spoke_grpc.types import Principal


@dataclass(frozen=True)
class UserRow:
    id: uuid.UUID
    email: str
    display_name: str
    is_admin: bool
    created_at: dt.datetime


@dataclass(frozen=True)
class ApiTokenRow:
    id: uuid.UUID
    prefix: str
    description: str
    created_at: dt.datetime


_USER_COLUMNS = "id, email, display_name, is_admin, created_at"
_TOKEN_COLUMNS = "id, prefix, description, created_at"


async def insert_user(
    conn: AsyncConnection, *, email: str, display_name: str, is_admin: bool
) -> UserRow:
    try:
        async with conn.cursor(row_factory=class_row(UserRow)) as cur:
            await cur.execute(
                f"INSERT INTO users (email, display_name, is_admin) VALUES (%s, %s, %s)"
                f" RETURNING {_USER_COLUMNS}",
                [email, display_name, is_admin],
            )
            row = await cur.fetchone()
    except UniqueViolation:
        raise AlreadyExists("user", email) from None
    assert row is not None
    return row


async def get_user(conn: AsyncConnection, user_id: uuid.UUID) -> UserRow | None:
    async with conn.cursor(row_factory=class_row(UserRow)) as cur:
        await cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", [user_id])
        return await cur.fetchone()


async def count_users(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM users")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def insert_token(
    conn: AsyncConnection, *, user_id: uuid.UUID, token: IssuedToken, description: str
) -> ApiTokenRow:
    async with conn.cursor(row_factory=class_row(ApiTokenRow)) as cur:
        await cur.execute(
            f"INSERT INTO api_tokens (user_id, token_hash, prefix, description)"
            f" VALUES (%s, %s, %s, %s) RETURNING {_TOKEN_COLUMNS}",
            [user_id, token.digest, token.prefix, description],
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def principal_for_token(conn: AsyncConnection, token_digest: bytes) -> Principal | None:
    cur = await conn.execute(
        "SELECT u.id, u.email, u.is_admin, t.id FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL",
        [token_digest],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return Principal(user_id=row[0], email=row[1], is_admin=row[2], token_id=row[3])


async def list_tokens(
    conn: AsyncConnection, user_id: uuid.UUID, page: PageRequest
) -> list[ApiTokenRow]:
    """Active tokens, newest first; keyset on (created_at, id)."""
    after = "AND (created_at, id) < (%s, %s)" if page.after else ""
    async with conn.cursor(row_factory=class_row(ApiTokenRow)) as cur:
        await cur.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens"
            f" WHERE user_id = %s AND revoked_at IS NULL {after}"
            " ORDER BY created_at DESC, id DESC LIMIT %s",
            [user_id, *(page.after or []), page.fetch],
        )
        return await cur.fetchall()


async def revoke_token(conn: AsyncConnection, user_id: uuid.UUID, token_id: uuid.UUID) -> bool:
    cur = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now()"
        " WHERE id = %s AND user_id = %s AND revoked_at IS NULL",
        [token_id, user_id],
    )
    return cur.rowcount == 1
