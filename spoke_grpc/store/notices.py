"""Notices emailed to an organization's admins: usage alerts and webhooks the server
disabled. The rows that record them (``quota_alerts``, ``webhooks``) are the outbox: the
mailer claims one whose notice is due ``FOR UPDATE SKIP LOCKED``, emails every admin, and
marks it sent (or backs off) in the same transaction. Notices older than a day are not
sent (email was off, or the mail server down, for that long: they are stale).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

STALE_AFTER = dt.timedelta(days=1)


@dataclass(frozen=True)
class DueNotice:
    """A claimed notice: ``kind`` is ``quota_alert`` or ``webhook_disabled``; ``key`` its
    row's key beyond ``org_id``."""

    kind: str
    org_id: uuid.UUID
    key: list[str]
    attempts: int
    org_name: str
    org_display_name: str
    subject: str
    detail: str


_CLAIM_ALERT = """
SELECT 'quota_alert' AS kind, a.org_id, ARRAY[a.quota, a.threshold::text, a.period] AS key,
       a.notice_attempts AS attempts, o.name AS org_name, o.display_name AS org_display_name,
       a.quota AS subject,
       a.threshold || '%% of the ' || a.period || ' limit: ' || a.used || ' of ' || a.quota_limit
           AS detail
FROM quota_alerts a JOIN organizations o ON o.id = a.org_id
WHERE a.notice_sent_at IS NULL AND a.notice_next_at <= now() AND a.created_at > now() - %s
ORDER BY a.notice_next_at
LIMIT 1
FOR UPDATE OF a SKIP LOCKED
"""

_CLAIM_WEBHOOK = """
SELECT 'webhook_disabled' AS kind, w.org_id, ARRAY[w.id::text] AS key,
       w.notice_attempts AS attempts, o.name AS org_name, o.display_name AS org_display_name,
       w.url AS subject, w.disabled_reason AS detail
FROM webhooks w JOIN organizations o ON o.id = w.org_id
WHERE w.disabled_at IS NOT NULL AND NOT w.enabled AND w.notice_sent_at IS NULL
  AND w.notice_next_at <= now() AND w.disabled_at > now() - %s
ORDER BY w.notice_next_at
LIMIT 1
FOR UPDATE OF w SKIP LOCKED
"""

_WHERE = {
    "quota_alert": (
        sql.Identifier("quota_alerts"),
        sql.SQL("org_id = %s AND quota = %s AND threshold = %s::integer AND period = %s"),
    ),
    "webhook_disabled": (sql.Identifier("webhooks"), sql.SQL("org_id = %s AND id = %s::uuid")),
}


async def any_due(conn: AsyncConnection) -> bool:
    """Whether a notice may be due, one table at a time (see ``store.webhooks.any_due``)."""
    for query in (
        "SELECT EXISTS (SELECT 1 FROM quota_alerts WHERE notice_sent_at IS NULL"
        " AND notice_next_at <= now() AND created_at > now() - %s)",
        "SELECT EXISTS (SELECT 1 FROM webhooks WHERE disabled_at > now() - %s"
        " AND notice_sent_at IS NULL AND notice_next_at <= now())",
    ):
        cur = await conn.execute(query, [STALE_AFTER])
        row = await cur.fetchone()
        if row and row[0]:
            return True
    return False


async def claim_next(conn: AsyncConnection) -> DueNotice | None:
    """Locks the next due notice no other process holds, in the caller's transaction."""
    async with conn.cursor(row_factory=class_row(DueNotice)) as cur:
        for query in (_CLAIM_ALERT, _CLAIM_WEBHOOK):
            await cur.execute(query, [STALE_AFTER])
            found = await cur.fetchone()
            if found is not None:
                return found
    return None


async def admin_emails(conn: AsyncConnection, org_id: uuid.UUID) -> list[str]:
    """The emails of the organization's admins, its owner included."""
    cur = await conn.execute(
        "SELECT u.email FROM users u WHERE u.id IN ("
        " SELECT user_id FROM organization_members WHERE org_id = %s AND role = 'admin'"
        " UNION SELECT owner_id FROM organizations WHERE id = %s) ORDER BY u.email",
        [org_id, org_id],
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def mark_sent(conn: AsyncConnection, notice: DueNotice) -> None:
    table, where = _WHERE[notice.kind]
    await conn.execute(
        sql.SQL("UPDATE {} SET notice_sent_at = now() WHERE {}").format(table, where),
        [notice.org_id, *notice.key],
    )


async def mark_failed(conn: AsyncConnection, notice: DueNotice, retry_in: dt.timedelta) -> None:
    table, where = _WHERE[notice.kind]
    await conn.execute(
        sql.SQL(
            "UPDATE {} SET notice_attempts = notice_attempts + 1,"
            " notice_next_at = now() + %s WHERE {}"
        ).format(table, where),
        [retry_in, notice.org_id, *notice.key],
    )
