"""Audit events, written in the transaction of the change they record."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection


@dataclass(frozen=True)
class AuditEvent:
    method: str
    actor_id: uuid.UUID | None
    org_id: uuid.UUID | None
    target: str
    outcome: str = "OK"


async def record(conn: AsyncConnection, event: AuditEvent) -> None:
    await conn.execute(
        "INSERT INTO audit_events (org_id, actor_id, method, target, outcome)"
        " VALUES (%s, %s, %s, %s, %s)",
        [event.org_id, event.actor_id, event.method, event.target, event.outcome],
    )
