"""Webhooks and their deliveries (the outbox ``spoke_grpc.webhook_dispatcher`` empties).

Deliveries are queued by ``spoke_grpc.store.events.append`` in the transaction of the
event. ``claim_next`` locks the longest-waiting due delivery that is the oldest pending one
of its webhook, ``FOR UPDATE SKIP LOCKED``, and the dispatcher keeps that lock while it
POSTs: a delivery is sent by one process at a time, and a webhook's next delivery is not
due until the one before it is delivered or given up (in order per webhook).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

from spoke_grpc.pagination import PageRequest
from spoke_grpc.store.visibility import ANONYMOUS, Reader, readable


@dataclass(frozen=True)
class Source:
    """A module whose versions a webhook subscribes to."""

    org_id: uuid.UUID
    org_name: str
    module_id: uuid.UUID
    module_name: str
    is_public: bool


async def find_source(
    conn: AsyncConnection,
    org_id: uuid.UUID | None,
    org_name: str | None,
    module_id: uuid.UUID | None,
    module_name: str | None,
    reader: Reader,
) -> Source | None:
    """The module (by id or name) of the organization (by id or name), if ``reader`` may
    read it."""
    org_column, org_value = ("id", org_id) if org_id is not None else ("name", org_name)
    module_column, module_value = (
        ("id", module_id) if module_id is not None else ("name", module_name)
    )
    query = sql.SQL(
        "SELECT o.id AS org_id, o.name AS org_name, m.id AS module_id, m.name AS module_name,"
        " m.is_public FROM organizations o JOIN modules m ON m.org_id = o.id"
        " WHERE o.{} = %s AND m.{} = %s AND {}"
    ).format(sql.Identifier(org_column), sql.Identifier(module_column), readable(reader, "m"))
    async with conn.cursor(row_factory=class_row(Source)) as cur:
        await cur.execute(query, [org_value, module_value])
        return await cur.fetchone()


@dataclass(frozen=True)
class WebhookRow:
    org_id: uuid.UUID
    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    secret_salt: bytes
    enabled: bool
    disabled_reason: str
    consecutive_failures: int
    source_org_id: uuid.UUID | None
    source_module_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class DeliveryRow:
    org_id: uuid.UUID
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    state: str
    attempts: int
    status_code: int
    last_error: str
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    created_at: dt.datetime


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery, with its event and where to send it."""

    org_id: uuid.UUID
    id: uuid.UUID
    webhook_id: uuid.UUID
    attempts: int
    first_attempt_at: dt.datetime | None
    url: str
    secret_salt: bytes
    event_id: uuid.UUID
    event_type: str
    event_created_at: dt.datetime
    data: dict[str, Any]
    event_org_id: uuid.UUID  # the event's organization (another one's, for a subscription)
    org_name: str  # the event organization's name
    visible: bool  # False: a subscribed module is no longer public


_WEBHOOK = sql.SQL(
    "org_id, id, url, events, description, secret_salt, enabled, disabled_reason,"
    " consecutive_failures, source_org_id, source_module_id, created_at, updated_at"
)
_DELIVERY = sql.SQL(
    "d.org_id, d.id, d.webhook_id, e.id AS event_id, e.type AS event_type, d.state,"
    " d.attempts, d.status_code, d.last_error, d.next_attempt_at, d.last_attempt_at,"
    " d.created_at FROM webhook_deliveries d"
    " JOIN events e ON (e.org_id, e.seq) = (d.event_org_id, d.event_seq)"
)
UPDATABLE = ("url", "events", "description", "enabled")


async def insert_webhook(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    url: str,
    events: Sequence[str],
    description: str,
    secret_salt: bytes,
    created_by: uuid.UUID,
    source: Source | None = None,
) -> WebhookRow:
    query = sql.SQL(
        "INSERT INTO webhooks (org_id, id, url, events, description, secret_salt, created_by,"
        " source_org_id, source_module_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING {}"
    ).format(_WEBHOOK)
    async with conn.cursor(row_factory=class_row(WebhookRow)) as cur:
        await cur.execute(
            query,
            [
                org_id,
                webhook_id,
                url,
                list(events),
                description,
                secret_salt,
                created_by,
                source.org_id if source else None,
                source.module_id if source else None,
            ],
        )
        row = await cur.fetchone()
    if row is None:  # pragma: no cover
        raise RuntimeError("webhook not inserted")
    return row


async def get_webhook(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, *, lock: bool = False
) -> WebhookRow | None:
    query = sql.SQL("SELECT {} FROM webhooks WHERE org_id = %s AND id = %s {}").format(
        _WEBHOOK, sql.SQL("FOR UPDATE" if lock else "")
    )
    async with conn.cursor(row_factory=class_row(WebhookRow)) as cur:
        await cur.execute(query, [org_id, webhook_id])
        return await cur.fetchone()


async def list_webhooks(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> list[WebhookRow]:
    after = sql.SQL("AND (created_at, id) > (%s, %s)" if page.after else "")
    query = sql.SQL(
        "SELECT {} FROM webhooks WHERE org_id = %s {} ORDER BY created_at, id LIMIT %s"
    ).format(_WEBHOOK, after)
    async with conn.cursor(row_factory=class_row(WebhookRow)) as cur:
        await cur.execute(query, [org_id, *(page.after or []), page.fetch])
        return await cur.fetchall()


async def update_webhook(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, changes: Mapping[str, Any]
) -> WebhookRow | None:
    """Sets ``changes`` (columns of ``UPDATABLE``, plus the server's own bookkeeping)."""
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(column)) for column in sorted(changes)]
    query = sql.SQL(
        "UPDATE webhooks SET {}, updated_at = now() WHERE org_id = %s AND id = %s RETURNING {}"
    ).format(sql.SQL(", ").join(assignments), _WEBHOOK)
    values = [changes[column] for column in sorted(changes)]
    async with conn.cursor(row_factory=class_row(WebhookRow)) as cur:
        await cur.execute(query, [*values, org_id, webhook_id])
        return await cur.fetchone()


async def delete_webhook(conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID) -> bool:
    cur = await conn.execute(
        "DELETE FROM webhooks WHERE org_id = %s AND id = %s", [org_id, webhook_id]
    )
    return cur.rowcount > 0


async def list_deliveries(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, page: PageRequest
) -> list[DeliveryRow]:
    """Newest first; keyset on (created_at, id) descending."""
    after = sql.SQL("AND (d.created_at, d.id) < (%s, %s)" if page.after else "")
    query = sql.SQL(
        "SELECT {} WHERE d.org_id = %s AND d.webhook_id = %s {}"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT %s"
    ).format(_DELIVERY, after)
    async with conn.cursor(row_factory=class_row(DeliveryRow)) as cur:
        await cur.execute(query, [org_id, webhook_id, *(page.after or []), page.fetch])
        return await cur.fetchall()


async def get_delivery(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryRow | None:
    query = sql.SQL("SELECT {} WHERE d.org_id = %s AND d.webhook_id = %s AND d.id = %s").format(
        _DELIVERY
    )
    async with conn.cursor(row_factory=class_row(DeliveryRow)) as cur:
        await cur.execute(query, [org_id, webhook_id, delivery_id])
        return await cur.fetchone()


async def requeue(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> uuid.UUID | None:
    """A new pending delivery of ``delivery_id``'s event, behind the webhook's queue."""
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_org_id, event_seq)"
        " SELECT org_id, webhook_id, event_org_id, event_seq FROM webhook_deliveries"
        " WHERE org_id = %s AND webhook_id = %s AND id = %s RETURNING id",
        [org_id, webhook_id, delivery_id],
    )
    row = await cur.fetchone()
    return row[0] if row else None


_CLAIM = sql.SQL("""
SELECT d.org_id, d.id, d.webhook_id, d.attempts, d.first_attempt_at, w.url, w.secret_salt,
       e.id AS event_id, e.type AS event_type, e.created_at AS event_created_at, e.data,
       e.org_id AS event_org_id, o.name AS org_name,
       (w.source_module_id IS NULL OR w.source_org_id = w.org_id OR EXISTS (
           SELECT 1 FROM modules m
           WHERE m.org_id = w.source_org_id AND m.id = w.source_module_id AND {public}))
           AS visible
FROM webhook_deliveries d
JOIN webhooks w ON (w.org_id, w.id) = (d.org_id, d.webhook_id)
JOIN events e ON (e.org_id, e.seq) = (d.event_org_id, d.event_seq)
JOIN organizations o ON o.id = e.org_id
WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND w.enabled
  AND NOT EXISTS (
      SELECT 1 FROM webhook_deliveries p
      WHERE p.org_id = d.org_id AND p.webhook_id = d.webhook_id
        AND p.state = 'pending' AND p.seq < d.seq)
ORDER BY d.next_attempt_at, d.seq
LIMIT 1
FOR UPDATE OF d SKIP LOCKED
""").format(public=readable(ANONYMOUS, "m"))


async def any_due(conn: AsyncConnection) -> bool:
    """Whether a delivery may be due (one table, no lock held after the statement): the
    idle dispatcher's check, so that it takes the claim's locks on five tables only when
    there is work (and never queues behind, or deadlocks with, DDL or a TRUNCATE)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM webhook_deliveries"
        " WHERE state = 'pending' AND next_attempt_at <= now())"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def claim_next(conn: AsyncConnection) -> DueDelivery | None:
    """Locks the next due delivery no other process holds, in the caller's transaction."""
    async with conn.cursor(row_factory=class_row(DueDelivery)) as cur:
        await cur.execute(_CLAIM)
        return await cur.fetchone()


# What every attempt records, whatever its outcome.
_ATTEMPTED = sql.SQL(
    "attempts = attempts + 1, status_code = %s, last_error = %s, last_attempt_at = now(),"
    " first_attempt_at = coalesce(first_attempt_at, now())"
)


async def mark_delivered(conn: AsyncConnection, due: DueDelivery, status_code: int) -> None:
    await conn.execute(
        sql.SQL(
            "UPDATE webhook_deliveries SET {}, state = 'delivered', finished_at = now()"
            " WHERE org_id = %s AND id = %s"
        ).format(_ATTEMPTED),
        [status_code, "", due.org_id, due.id],
    )
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = 0"
        " WHERE org_id = %s AND id = %s AND consecutive_failures <> 0",
        [due.org_id, due.webhook_id],
    )


async def mark_retry(
    conn: AsyncConnection, due: DueDelivery, status_code: int, error: str, retry_in: dt.timedelta
) -> None:
    await conn.execute(
        sql.SQL(
            "UPDATE webhook_deliveries SET {}, next_attempt_at = now() + %s"
            " WHERE org_id = %s AND id = %s"
        ).format(_ATTEMPTED),
        [status_code, error[:1000], retry_in, due.org_id, due.id],
    )


async def mark_failed(conn: AsyncConnection, due: DueDelivery, status_code: int, error: str) -> int:
    """The delivery is given up; returns the webhook's failed deliveries in a row."""
    await conn.execute(
        sql.SQL(
            "UPDATE webhook_deliveries SET {}, state = 'failed', finished_at = now()"
            " WHERE org_id = %s AND id = %s"
        ).format(_ATTEMPTED),
        [status_code, error[:1000], due.org_id, due.id],
    )
    cur = await conn.execute(
        "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1"
        " WHERE org_id = %s AND id = %s RETURNING consecutive_failures",
        [due.org_id, due.webhook_id],
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def disable(
    conn: AsyncConnection, org_id: uuid.UUID, webhook_id: uuid.UUID, reason: str
) -> None:
    await conn.execute(
        "UPDATE webhooks SET enabled = false, disabled_reason = %s, updated_at = now(),"
        " disabled_at = now(), notice_sent_at = NULL, notice_attempts = 0,"
        " notice_next_at = now() WHERE org_id = %s AND id = %s",
        [reason[:1000], org_id, webhook_id],
    )
