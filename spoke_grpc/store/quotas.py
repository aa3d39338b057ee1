"""Quota limits per organization (NULL: unlimited)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from spoke_grpc.tiers import LIMIT_COLUMNS, TIER_LIMITS, QuotaLimits, QuotaTier


async def set_tier(conn: AsyncConnection, org_id: uuid.UUID, tier: QuotaTier) -> None:
    """Creates or resets the organization's limits to ``tier``'s."""
    limits = TIER_LIMITS[tier]
    await conn.execute(
        "INSERT INTO org_quotas (org_id, tier, max_modules, max_versions_per_module,"
        " max_storage_bytes, max_compile_jobs_per_month, max_api_requests_per_hour)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (org_id) DO UPDATE SET tier = EXCLUDED.tier,"
        " max_modules = EXCLUDED.max_modules,"
        " max_versions_per_module = EXCLUDED.max_versions_per_module,"
        " max_storage_bytes = EXCLUDED.max_storage_bytes,"
        " max_compile_jobs_per_month = EXCLUDED.max_compile_jobs_per_month,"
        " max_api_requests_per_hour = EXCLUDED.max_api_requests_per_hour,"
        " updated_at = now()",
        [
            org_id,
            tier.value,
            limits.max_modules,
            limits.max_versions_per_module,
            limits.max_storage_bytes,
            limits.max_compile_jobs_per_month,
            limits.max_api_requests_per_hour,
        ],
    )


@dataclass(frozen=True)
class QuotaRow:
    tier: QuotaTier
    limits: QuotaLimits


async def get_quotas(conn: AsyncConnection, org_id: uuid.UUID, *, lock: bool = False) -> QuotaRow:
    """The organization's limits; ``lock`` (FOR UPDATE) serialises the org's allocations."""
    query = sql.SQL("SELECT tier, {} FROM org_quotas WHERE org_id = %s{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in LIMIT_COLUMNS),
        sql.SQL(" FOR UPDATE" if lock else ""),
    )
    cur = await conn.execute(query, [org_id])
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError(f"organization {org_id} has no quota row")
    return QuotaRow(QuotaTier(row[0]), QuotaLimits(*row[1:]))


async def set_limits(
    conn: AsyncConnection, org_id: uuid.UUID, limits: Mapping[str, int | None]
) -> None:
    """Sets exactly the limit columns in ``limits`` (None: unlimited)."""
    if not limits.keys() <= set(LIMIT_COLUMNS):
        raise ValueError(f"not limits: {sorted(limits.keys() - set(LIMIT_COLUMNS))}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in limits
    )
    await conn.execute(
        sql.SQL("UPDATE org_quotas SET {}, updated_at = now() WHERE org_id = %s").format(
            assignments
        ),
        [*limits.values(), org_id],
    )
