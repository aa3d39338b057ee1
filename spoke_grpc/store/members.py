"""Memberships and invitations of an organization.

An invitation's state is stored as pending, accepted, revoked or expired; a pending one
whose ``expires_at`` has passed reads as expired everywhere (``_STATE``), so listings are
accurate without a sweeper, and it is stored as expired when the same email is invited again.
"""

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
from spoke_grpc.types import Role


@dataclass(frozen=True)
class MemberRow:
    user_id: uuid.UUID
    email: str
    display_name: str
    role: str
    invited_by: uuid.UUID | None
    joined_at: dt.datetime


@dataclass(frozen=True)
class InvitationRow:
    org_id: uuid.UUID
    id: uuid.UUID
    email: str
    role: str
    state: str
    invited_by: uuid.UUID | None
    created_at: dt.datetime
    expires_at: dt.datetime


_MEMBER = sql.SQL(
    "m.user_id, u.email, u.display_name, m.role, m.invited_by, m.joined_at"
    " FROM organization_members m JOIN users u ON u.id = m.user_id"
)
_STATE = sql.SQL(
    "CASE WHEN i.state = 'pending' AND i.expires_at <= now() THEN 'expired' ELSE i.state END"
)
_INVITATION = sql.SQL(
    "i.org_id, i.id, i.email, i.role, {} AS state, i.invited_by, i.created_at, i.expires_at"
).format(_STATE)


async def insert_member(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    role: Role,
    invited_by: uuid.UUID | None,
) -> None:
    """Adds the membership; ALREADY_EXISTS when the user is already a member."""
    try:
        await conn.execute(
            "INSERT INTO organization_members (org_id, user_id, role, invited_by)"
            " VALUES (%s, %s, %s, %s)",
            [org_id, user_id, role.value, invited_by],
        )
    except UniqueViolation:
        raise AlreadyExists("member", str(user_id)) from None


async def get_member(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool = False
) -> MemberRow | None:
    """The membership; ``lock`` takes it FOR UPDATE (waits for the member's writes in flight)."""
    query = sql.SQL("SELECT {} WHERE m.org_id = %s AND m.user_id = %s{}").format(
        _MEMBER, sql.SQL(" FOR UPDATE OF m" if lock else "")
    )
    async with conn.cursor(row_factory=class_row(MemberRow)) as cur:
        await cur.execute(query, [org_id, user_id])
        return await cur.fetchone()


async def is_member_email(conn: AsyncConnection, org_id: uuid.UUID, email: str) -> bool:
    """Whether a member of the org has this email (any case): one statement, whether or
    not an account has it, so the answer's timing says no more than the answer."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM organization_members m JOIN users u ON u.id = m.user_id"
        " WHERE m.org_id = %s AND lower(u.email) = lower(%s))",
        [org_id, email],
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def lock_admins(conn: AsyncConnection, org_id: uuid.UUID) -> list[uuid.UUID]:
    """The org's admins, locked FOR UPDATE in a stable order: the last-admin rule's guard."""
    cur = await conn.execute(
        "SELECT user_id FROM organization_members WHERE org_id = %s AND role = 'admin'"
        " ORDER BY user_id FOR UPDATE",
        [org_id],
    )
    return [row[0] for row in await cur.fetchall()]


async def list_members(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> list[MemberRow]:
    """Members in the order they joined; keyset on (joined_at, user_id)."""
    after = sql.SQL("AND (m.joined_at, m.user_id) > (%s, %s)" if page.after else "")
    query = sql.SQL(
        "SELECT {} WHERE m.org_id = %s {} ORDER BY m.joined_at, m.user_id LIMIT %s"
    ).format(_MEMBER, after)
    async with conn.cursor(row_factory=class_row(MemberRow)) as cur:
        await cur.execute(query, [org_id, *(page.after or []), page.fetch])
        return await cur.fetchall()


async def set_role(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, role: Role
) -> None:
    await conn.execute(
        "UPDATE organization_members SET role = %s WHERE org_id = %s AND user_id = %s",
        [role.value, org_id, user_id],
    )


async def delete_member(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    cur = await conn.execute(
        "DELETE FROM organization_members WHERE org_id = %s AND user_id = %s", [org_id, user_id]
    )
    return cur.rowcount == 1


async def set_owner(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE organizations SET owner_id = %s, updated_at = now() WHERE id = %s",
        [user_id, org_id],
    )


async def insert_invitation(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    email: str,
    role: Role,
    token_hash: bytes,
    invited_by: uuid.UUID,
    ttl: dt.timedelta,
) -> InvitationRow:
    """A pending invitation; ALREADY_EXISTS while one is pending for the same email."""
    # A pending invitation that has expired no longer counts: store it as expired first.
    await conn.execute(
        "UPDATE org_invitations SET state = 'expired', closed_at = expires_at"
        " WHERE org_id = %s AND lower(email) = lower(%s) AND state = 'pending'"
        " AND expires_at <= now()",
        [org_id, email],
    )
    query = sql.SQL(
        "INSERT INTO org_invitations AS i (org_id, email, role, token_hash, invited_by,"
        " expires_at) VALUES (%s, %s, %s, %s, %s, now() + %s) RETURNING {}"
    ).format(_INVITATION)
    try:
        async with conn.cursor(row_factory=class_row(InvitationRow)) as cur:
            await cur.execute(query, [org_id, email, role.value, token_hash, invited_by, ttl])
            return returned_row(await cur.fetchone())
    except UniqueViolation:
        raise AlreadyExists("pending invitation", email) from None


async def list_invitations(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> list[InvitationRow]:
    """Every invitation of the org, newest first; keyset on (created_at, id)."""
    after = sql.SQL("AND (i.created_at, i.id) < (%s, %s)" if page.after else "")
    query = sql.SQL(
        "SELECT {} FROM org_invitations i WHERE i.org_id = %s {}"
        " ORDER BY i.created_at DESC, i.id DESC LIMIT %s"
    ).format(_INVITATION, after)
    async with conn.cursor(row_factory=class_row(InvitationRow)) as cur:
        await cur.execute(query, [org_id, *(page.after or []), page.fetch])
        return await cur.fetchall()


async def get_invitation(
    conn: AsyncConnection, org_id: uuid.UUID, invitation_id: uuid.UUID
) -> InvitationRow | None:
    query = sql.SQL(
        "SELECT {} FROM org_invitations i WHERE i.org_id = %s AND i.id = %s FOR UPDATE"
    ).format(_INVITATION)
    async with conn.cursor(row_factory=class_row(InvitationRow)) as cur:
        await cur.execute(query, [org_id, invitation_id])
        return await cur.fetchone()


async def invitation_by_token(conn: AsyncConnection, token_hash: bytes) -> InvitationRow | None:
    """The invitation whose returned or emailed token has this hash, locked FOR UPDATE."""
    query = sql.SQL(
        "SELECT {} FROM org_invitations i WHERE i.token_hash = %s OR i.email_token_hash = %s"
        " FOR UPDATE"
    ).format(_INVITATION)
    async with conn.cursor(row_factory=class_row(InvitationRow)) as cur:
        await cur.execute(query, [token_hash, token_hash])
        return await cur.fetchone()


async def close_invitation(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    invitation_id: uuid.UUID,
    *,
    state: str,
    by: uuid.UUID,
) -> InvitationRow:
    """Marks a pending invitation accepted or revoked, by ``by``."""
    column = sql.Identifier("accepted_by" if state == "accepted" else "revoked_by")
    query = sql.SQL(
        "UPDATE org_invitations AS i SET state = %s, {} = %s, closed_at = now()"
        " WHERE i.org_id = %s AND i.id = %s RETURNING {}"
    ).format(column, _INVITATION)
    async with conn.cursor(row_factory=class_row(InvitationRow)) as cur:
        await cur.execute(query, [state, by, org_id, invitation_id])
        return returned_row(await cur.fetchone())
