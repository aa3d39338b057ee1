"""The events an organization publishes (to its webhooks and to ``WatchEvents``).

Domain code calls ``emit`` next to the audit event of the change, in the same transaction.
An event's ``data`` holds ids, names and roles, never emails or file contents: who receives
an event may see less than whoever caused it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection

from spoke_grpc.store import events as store
from spoke_grpc.store.events import WILDCARD, EventRow


class EventType(enum.StrEnum):
    VERSION_CREATED = "version.created"
    MODULE_CREATED = "module.created"
    MODULE_UPDATED = "module.updated"
    MODULE_DELETED = "module.deleted"
    MEMBER_ADDED = "member.added"
    MEMBER_REMOVED = "member.removed"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    INVITATION_CREATED = "invitation.created"
    INVITATION_ACCEPTED = "invitation.accepted"
    QUOTA_THRESHOLD_CROSSED = "quota.threshold_crossed"
    ORGANIZATION_UPDATED = "organization.updated"


# What a webhook or a watcher may subscribe to.
SUBSCRIBABLE: frozenset[str] = frozenset({*(t.value for t in EventType), WILDCARD})


async def emit(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    event_type: EventType,
    data: Mapping[str, Any],
    *,
    module_id: uuid.UUID | None = None,
) -> EventRow:
    """Publishes the event with the caller's transaction (see ``spoke_grpc.store.events``)."""
    return await store.append(conn, org_id, event_type.value, data, module_id=module_id)
