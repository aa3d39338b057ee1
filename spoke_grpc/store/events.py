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

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from spoke_grpc.store.visibility import ANONYMOUS, Reader, readable, sees_private

WILDCARD = "*"
# The one event type outsiders may watch, for public modules.
PUBLIC_EVENT_TYPE = "version.created"


# The webhooks an event goes to: the organization's own, subscribed to its type (or to
# everything), and subscriptions to the event's module's versions, from any organization
# while the module is public (or from its own).
_FAN_OUT = sql.SQL(
    "INSERT INTO webhook_deliveries (org_id, webhook_id, event_org_id, event_seq)"
    " SELECT w.org_id, w.id, %(org)s, %(seq)s FROM webhooks w"
    " WHERE w.enabled AND ("
    "   (w.org_id = %(org)s AND w.source_module_id IS NULL"
    "    AND (%(type)s = ANY (w.events) OR {wildcard} = ANY (w.events)))"
    "   OR (%(type)s = {version} AND w.source_org_id = %(org)s"
    "    AND w.source_module_id = %(module)s"
    "    AND (w.org_id = %(org)s OR EXISTS (SELECT 1 FROM modules m"
    "         WHERE m.org_id = %(org)s AND m.id = %(module)s AND {public}))))"
    " ORDER BY w.created_at, w.id"
).format(
    wildcard=sql.Literal("*"),
    version=sql.Literal("version.created"),
    public=readable(ANONYMOUS, "m"),
)


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
        _FAN_OUT, {"org": org_id, "seq": seq, "type": event_type, "module": module_id}
    )
    return event


def _watchable(reader: Reader) -> sql.Composable:
    """Which of an org's events ``reader`` may watch (``e`` is the event row): every event
    for those who see the org's private modules (members, platform admins), otherwise only
    the ``version.created`` events of modules the reader may read (public ones), by the
    one visibility rule, checked at each read."""
    return sql.SQL(
        "({private} OR (e.type = {version} AND EXISTS (SELECT 1 FROM modules m"
        " WHERE m.org_id = e.org_id AND m.id = e.module_id AND {readable})))"
    ).format(
        private=sees_private(reader, sql.Identifier("e", "org_id")),
        version=sql.Literal(PUBLIC_EVENT_TYPE),
        readable=readable(reader, "m"),
    )


async def seq_of(
    conn: AsyncConnection, org_id: uuid.UUID, event_id: uuid.UUID, reader: Reader
) -> int | None:
    """The number of the org's event ``event_id``; None if it has none that ``reader`` may
    watch."""
    query = sql.SQL("SELECT e.seq FROM events e WHERE e.org_id = %s AND e.id = %s AND {}").format(
        _watchable(reader)
    )
    cur = await conn.execute(query, [org_id, event_id])
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def last_seq(conn: AsyncConnection, org_id: uuid.UUID) -> int:
    """The number of the org's last committed event (0: none)."""
    cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM events WHERE org_id = %s", [org_id])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def watchable_after(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    after_seq: int,
    types: Sequence[str],
    reader: Reader,
    limit: int,
) -> tuple[list[EventRow], int]:
    """Up to ``limit`` events after ``after_seq`` that ``reader`` may watch, of ``types`` (all
    when empty), oldest first; and the number read up to (the cursor to continue from)."""
    query = sql.SQL(
        "SELECT e.org_id, e.seq, e.id, e.type, e.module_id, e.data, e.created_at,"
        " {watchable} AS shown FROM events e"
        " WHERE e.org_id = %s AND e.seq > %s ORDER BY e.seq LIMIT %s"
    ).format(watchable=_watchable(reader))
    cur = await conn.execute(query, [org_id, after_seq, limit])
    rows = await cur.fetchall()
    wanted = set(types)
    shown = [EventRow(*row[:7]) for row in rows if row[7] and (not wanted or row[3] in wanted)]
    return shown, (int(rows[-1][1]) if rows else after_seq)
