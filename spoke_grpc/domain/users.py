"""Users and their API tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection

from spoke_grpc import tokens
from spoke_grpc.domain import user_limits
from spoke_grpc.errors import NotFound
from spoke_grpc.store import audit, users
from spoke_grpc.store.users import ApiTokenRow
from spoke_grpc.types import Principal, User
from spoke_grpc.validation import MAX_DISPLAY_NAME, Violations, required_uuid


@dataclass(frozen=True)
class NewUser:
    email: str
    display_name: str = ""
    is_admin: bool = False


@dataclass(frozen=True)
class CreatedUser:
    user: User
    token: tokens.IssuedToken


async def create_user(
    conn: AsyncConnection, new: NewUser, *, actor_id: uuid.UUID | None, method: str
) -> CreatedUser:
    """Creates the user with a first API token; ALREADY_EXISTS for a taken email."""
    violations = Violations()
    email = violations.email("email", new.email)
    violations.text("display_name", new.display_name, max_length=MAX_DISPLAY_NAME)
    violations.raise_if_any()
    display_name = new.display_name.strip() or email.split("@", 1)[0]
    user = await users.insert_user(
        conn, email=email, display_name=display_name, is_admin=new.is_admin
    )
    token = tokens.issue()
    await users.insert_token(conn, user_id=user.id, token=token, description="initial token")
    await audit.record(
        conn,
        audit.AuditEvent(method=method, actor_id=actor_id, org_id=None, target=f"users/{user.id}"),
    )
    return CreatedUser(user=user, token=token)


async def create_api_token(
    conn: AsyncConnection,
    principal: Principal,
    description: str,
    *,
    max_live: int,
    method: str,
) -> tuple[ApiTokenRow, tokens.IssuedToken]:
    """A new token for the caller, unless they hold ``max_live`` live ones already (0: no
    cap; ``spoke_grpc.domain.user_limits``)."""
    violations = Violations()
    violations.text("description", description, max_length=MAX_DISPLAY_NAME)
    violations.raise_if_any()
    await user_limits.reserve_api_token(conn, principal, max_live)
    user_id = principal.user_id
    token = tokens.issue()
    row = await users.insert_token(conn, user_id=user_id, token=token, description=description)
    await audit.record(
        conn,
        audit.AuditEvent(
            method=method, actor_id=user_id, org_id=None, target=f"api_tokens/{row.id}"
        ),
    )
    return row, token


async def revoke_api_token(
    conn: AsyncConnection, user_id: uuid.UUID, token_ref: str, *, method: str
) -> None:
    """Revokes one of the user's own tokens; another user's token is NOT_FOUND."""
    token_id = required_uuid("api_token_id", token_ref)
    if not await users.revoke_token(conn, user_id, token_id):
        raise NotFound("api token", token_ref)
    await audit.record(
        conn,
        audit.AuditEvent(
            method=method, actor_id=user_id, org_id=None, target=f"api_tokens/{token_id}"
        ),
    )
