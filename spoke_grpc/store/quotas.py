"""Quota limits per organization."""

from __future__ import annotations

import uuid

from psycopg import AsyncConnection

from spoke_grpc.tiers import TIER_LIMITS, QuotaTier


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
