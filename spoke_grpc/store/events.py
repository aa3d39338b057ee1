"""Organization events and the webhook deliveries they fan out to.

``append`` runs in the transaction of the change the event records: the event is committed
with the change or not at all. It numbers the event from the organization's counter row,
which stays locked until the transaction ends, so an organization's events commit in the
order of their numbers (a reader that saw event n saw all before it). In the same statement
batch it queues one delivery for each enabled webhook of the organization subscribed to the
event's type (or to ``*``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

WILDCARD = "*"


@dataclass(frozen=True)
class EventRow:
    org_id: uuid.UUID
    seq: int
    id: uuid.UUID
    type: str
    module_id: uuid.UUID | None
    data: dict[str, Any]
    created_at: dt.datetime


async def append(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    event_type: str,
    data: Mapping[str, Any],
    *,
    module_id: uuid.UUID | None = None,
) -> EventRow:
    """Records the event and queues its webhook deliveries; call it in the change's transaction."""
    cur = await conn.execute(
        "INSERT INTO org_event_counters AS c (org_id, last_seq) VALUES (%s, 1)"
        " ON CONFLICT (org_id) DO UPDATE SET last_seq = c.last_seq + 1 RETURNING last_seq",
        [org_id],
    )
    row = await cur.fetchone()
    if row is None:  # pragma: no cover - INSERT … RETURNING always returns the row
        raise RuntimeError("no event number")
    seq = int(row[0])
    async with conn.cursor(row_factory=class_row(EventRow)) as events:
        await events.execute(
            "INSERT INTO events (org_id, seq, type, module_id, data) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING org_id, seq, id, type, module_id, data, created_at",
            [org_id, seq, event_type, module_id, Jsonb(dict(data))],
        )
        event = await events.fetchone()
    if event is None:  # pragma: no cover
        raise RuntimeError("event not recorded")
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_seq)"
        " SELECT org_id, id, %s FROM webhooks"
        " WHERE org_id = %s AND enabled AND (%s = ANY (events) OR %s = ANY (events))"
        " ORDER BY created_at, id",
        [seq, org_id, event_type, WILDCARD],
    )
    return event


async def seq_of(conn: AsyncConnection, org_id: uuid.UUID, event_id: uuid.UUID) -> int | None:
    """The number of the org's event ``event_id``; None if it has none such."""
    cur = await conn.execute(
        "SELECT seq FROM events WHERE org_id = %s AND id = %s", [org_id, event_id]
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def after(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    after_seq: int,
    types: Sequence[str],
    limit: int,
) -> list[EventRow]:
    """The org's events numbered after ``after_seq``, oldest first, of ``types`` (all when
    empty)."""
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            "SELECT org_id, seq, id, type, module_id, data, created_at FROM events"
            " WHERE org_id = %s AND seq > %s AND (cardinality(%s::text[]) = 0 OR type = ANY (%s))"
            " ORDER BY seq LIMIT %s",
            [org_id, after_seq, list(types), list(types), limit],
        )
        return await cur.fetchall()
