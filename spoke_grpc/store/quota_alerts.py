"""Usage alerts already raised: one row per organization, quota, threshold and period."""

from __future__ import annotations

import uuid

from psycopg import AsyncConnection


async def claim(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    quota: str,
    threshold: int,
    period: str,
    used: int,
    limit: int,
) -> bool:
    """Records the alert; False when it was raised already (this period)."""
    cur = await conn.execute(
        "INSERT INTO quota_alerts (org_id, quota, threshold, period, used, quota_limit)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        [org_id, quota, threshold, period, used, limit],
    )
    return await cur.fetchone() is not None
