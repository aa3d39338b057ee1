"""Users and API tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection, sql
from psycopg.errors import UniqueViolation
from psycopg.rows import class_row

from spoke_grpc.errors import AlreadyExists
from spoke_grpc.pagination import PageRequest
from spoke_grpc.store import returned_row
from spoke_grpc.tokens import IssuedToken
from spoke_grpc.types import User


@dataclass(frozen=True)
class ApiTokenRow:
    id: uuid.UUID
    prefix: str
    description: str
    created_at: dt.datetime


_USER_COLUMNS = sql.SQL("id, email, display_name, is_admin, created_at")
_TOKEN_COLUMNS = sql.SQL("id, prefix, description, created_at")


async def insert_user(
    conn: AsyncConnection, *, email: str, display_name: str, is_admin: bool
) -> User:
    try:
        async with conn.cursor(row_factory=class_row(User)) as cur:
            await cur.execute(
                sql.SQL(
                    "INSERT INTO users (email, display_name, is_admin) VALUES (%s, %s, %s)"
                    " RETURNING {}"
                ).format(_USER_COLUMNS),
                [email, display_name, is_admin],
            )
            row = await cur.fetchone()
    except UniqueViolation:
        raise AlreadyExists("user", email) from None
    return returned_row(row)


async def find_user(conn: AsyncConnection, ref: uuid.UUID | str) -> User | None:
    """The user with this id, or with this email (any case)."""
    where = sql.SQL("id = %s" if isinstance(ref, uuid.UUID) else "lower(email) = lower(%s)")
    async with conn.cursor(row_factory=class_row(User)) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM users WHERE {}").format(_USER_COLUMNS, where), [ref]
        )
        return await cur.fetchone()


async def count_users(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM users")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def lock_user(conn: AsyncConnection, user_id: uuid.UUID) -> bool | None:
    """Locks the user's row ``FOR NO KEY UPDATE`` to the end of the transaction and returns
    whether the user is a platform admin (None: no such user). The lock serialises the
    per-user caps' checks; it does not wait for, or hold up, the foreign-key checks (``FOR
    KEY SHARE``) of rows that reference the user."""
    cur = await conn.execute(
        "SELECT is_admin FROM users WHERE id = %s FOR NO KEY UPDATE", [user_id]
    )
    row = await cur.fetchone()
    return bool(row[0]) if row else None


async def count_live_tokens(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    """The user's API tokens that are not revoked."""
    cur = await conn.execute(
        "SELECT count(*) FROM api_tokens WHERE user_id = %s AND revoked_at IS NULL", [user_id]
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def insert_token(
    conn: AsyncConnection, *, user_id: uuid.UUID, token: IssuedToken, description: str
) -> ApiTokenRow:
    async with conn.cursor(row_factory=class_row(ApiTokenRow)) as cur:
        await cur.execute(
            sql.SQL(
                "INSERT INTO api_tokens (user_id, token_hash, prefix, description)"
                " VALUES (%s, %s, %s, %s) RETURNING {}"
            ).format(_TOKEN_COLUMNS),
            [user_id, token.digest, token.prefix, description],
        )
        row = await cur.fetchone()
    return returned_row(row)


async def list_tokens(
    conn: AsyncConnection, user_id: uuid.UUID, page: PageRequest
) -> list[ApiTokenRow]:
    """Active tokens, newest first; keyset on (created_at, id)."""
    after = sql.SQL("AND (created_at, id) < (%s, %s)" if page.after else "")
    async with conn.cursor(row_factory=class_row(ApiTokenRow)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT {} FROM api_tokens WHERE user_id = %s AND revoked_at IS NULL {}"
                " ORDER BY created_at DESC, id DESC LIMIT %s"
            ).format(_TOKEN_COLUMNS, after),
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
