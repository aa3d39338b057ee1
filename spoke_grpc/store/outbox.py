"""The email outbox: one row per invitation email to send.

A row is written in the transaction that creates its invitation, so an invitation is
never lost and never emailed unless it was committed. The mailer claims one due row at
a time ``FOR UPDATE SKIP LOCKED`` and keeps the lock while it sends: with several
server processes each email is sent by one of them. No token is ever stored here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection
from psycopg.rows import class_row

_CLAIM = """
SELECT o.org_id, o.id, o.invitation_id, o.attempts,
       i.email, i.role, i.expires_at,
       i.state = 'pending' AND i.expires_at > now() AS pending,
       org.name AS org_name, org.display_name AS org_display_name,
       inviter.display_name AS inviter_name, inviter.email AS inviter_email
FROM email_outbox o
JOIN org_invitations i ON (i.org_id, i.id) = (o.org_id, o.invitation_id)
JOIN organizations org ON org.id = o.org_id
LEFT JOIN users inviter ON inviter.id = i.invited_by
WHERE o.sent_at IS NULL AND o.next_attempt_at <= now()
ORDER BY o.next_attempt_at
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
FOR KEY SHARE OF i SKIP LOCKED
"""


@dataclass(frozen=True)
class DueEmail:
    """A claimed outbox row with what its email says."""

    org_id: uuid.UUID
    id: uuid.UUID
    invitation_id: uuid.UUID
    attempts: int
    email: str
    role: str
    expires_at: datetime
    pending: bool
    org_name: str
    org_display_name: str
    inviter_name: str | None
    inviter_email: str | None


async def enqueue(conn: AsyncConnection, org_id: uuid.UUID, invitation_id: uuid.UUID) -> None:
    """Queues the invitation's email; call it in the transaction that creates the invitation."""
    await conn.execute(
        "INSERT INTO email_outbox (org_id, invitation_id) VALUES (%s, %s)",
        [org_id, invitation_id],
    )


async def claim_next(conn: AsyncConnection) -> DueEmail | None:
    """Locks the longest-waiting due row that no other process holds, inside the caller's
    transaction; None when nothing is due.

    The invitation row is held ``FOR KEY SHARE``: revoking or accepting it is not delayed,
    but deleting it (with its org) waits for the send instead of deadlocking with it.
    """
    async with conn.cursor(row_factory=class_row(DueEmail)) as cur:
        await cur.execute(_CLAIM)
        return await cur.fetchone()


async def mark_sent(conn: AsyncConnection, due: DueEmail, email_token_hash: bytes) -> None:
    """The email went out: its token (by digest) becomes valid, the row is done."""
    await conn.execute(
        "UPDATE org_invitations SET email_token_hash = %s WHERE org_id = %s AND id = %s",
        [email_token_hash, due.org_id, due.invitation_id],
    )
    await conn.execute(
        "UPDATE email_outbox SET sent_at = now() WHERE org_id = %s AND id = %s",
        [due.org_id, due.id],
    )


async def mark_dropped(conn: AsyncConnection, due: DueEmail, reason: str) -> None:
    """The row is done without an email (its invitation is no longer pending)."""
    await conn.execute(
        "UPDATE email_outbox SET sent_at = now(), last_error = %s WHERE org_id = %s AND id = %s",
        [reason[:1000], due.org_id, due.id],
    )


async def mark_failed(
    conn: AsyncConnection, due: DueEmail, error: str, retry_in: timedelta
) -> None:
    """The send failed: count the attempt and try again after ``retry_in``."""
    await conn.execute(
        "UPDATE email_outbox SET attempts = attempts + 1, last_error = %s,"
        " next_attempt_at = now() + %s WHERE org_id = %s AND id = %s",
        [error[:1000], retry_in, due.org_id, due.id],
    )
