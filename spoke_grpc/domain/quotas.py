"""Quotas: limits per organization, allocation checks inside the creating transaction, and
the hourly API request rate.

Allocation quotas (modules, versions per module, storage bytes) are measured from live
state after taking the org's quota row ``FOR UPDATE``: concurrent creates in one org queue
there, so each counts what the ones before it committed and no limit is ever passed, across
any number of server processes. Rate quotas are windows: compile jobs per UTC month (checked
and counted in the compile's transaction) and API requests per UTC hour (counted in memory,
``spoke_grpc.usage``). Read-only calls are never refused for quota.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import AsyncConnection

from spoke_grpc.domain import usage_alerts
from spoke_grpc.errors import PermissionDenied, QuotaExceeded
from spoke_grpc.store import audit, compile_jobs, organizations, quotas, usage
from spoke_grpc.store.quotas import QuotaRow
from spoke_grpc.tiers import QuotaTier
from spoke_grpc.types import OrgContext, Principal


@dataclass(frozen=True)
class QuotaUpdate:
    """A new tier (limits reset to it first) and/or limits to set (None: unlimited)."""

    tier: QuotaTier | None
    limits: Mapping[str, int | None]


async def update_quotas(
    conn: AsyncConnection,
    org: OrgContext,
    update: QuotaUpdate,
    *,
    principal: Principal,
    method: str,
) -> QuotaRow:
    if not principal.is_admin:  # the declared policy says so too; never rely on one check
        raise PermissionDenied("UpdateQuotas is for platform admins only")
    if update.tier is not None:
        await quotas.set_tier(conn, org.id, update.tier)
        await organizations.update_org(conn, org.id, {"quota_tier": update.tier.value})
    if update.limits:
        await quotas.set_limits(conn, org.id, update.limits)
    changed = (["tier"] if update.tier else []) + sorted(update.limits)
    await audit.record(
        conn,
        audit.AuditEvent(
            method=method,
            actor_id=principal.user_id,
            org_id=org.id,
            target=f"organizations/{org.name}/quotas:{','.join(changed)}",
        ),
    )
    return await quotas.get_quotas(conn, org.id)


def _subject(org: OrgContext) -> str:
    return f"organizations/{org.name}"


async def reserve_module(conn: AsyncConnection, org: OrgContext) -> None:
    """Raises unless one more module fits; call it in the transaction that creates it."""
    limits = (await quotas.get_quotas(conn, org.id, lock=True)).limits
    if limits.max_modules is None:
        return
    used = (await usage.gauges(conn, org.id)).modules
    if used >= limits.max_modules:
        raise QuotaExceeded(
            quota="module", subject=_subject(org), current=used, limit=limits.max_modules
        )


async def reserve_version(
    conn: AsyncConnection, org: OrgContext, module_id: uuid.UUID, size_bytes: int
) -> None:
    """Raises unless one more version of the module, of ``size_bytes``, fits; holds the
    org's quota lock to the end of the transaction, so call it just before the insert."""
    await check_version(conn, org, module_id, size_bytes, lock=True)


async def check_version(
    conn: AsyncConnection,
    org: OrgContext,
    module_id: uuid.UUID,
    size_bytes: int,
    *,
    lock: bool = False,
) -> None:
    """Raises unless one more version of the module, of ``size_bytes``, fits (without the
    lock: an early answer before expensive work; ``reserve_version`` decides)."""
    limits = (await quotas.get_quotas(conn, org.id, lock=lock)).limits
    if limits.max_versions_per_module is not None:
        cur = await conn.execute(
            "SELECT count(*) FROM module_versions WHERE org_id = %s AND module_id = %s",
            [org.id, module_id],
        )
        row = await cur.fetchone()
        versions = int(row[0]) if row else 0
        if versions >= limits.max_versions_per_module:
            raise QuotaExceeded(
                quota="versions_per_module",
                subject=f"{_subject(org)}/modules/{module_id}",
                current=versions,
                limit=limits.max_versions_per_module,
            )
    if limits.max_storage_bytes is not None:
        stored = (await usage.gauges(conn, org.id)).storage_bytes
        if stored + size_bytes > limits.max_storage_bytes:
            raise QuotaExceeded(
                quota="storage_bytes",
                subject=_subject(org),
                current=stored,
                limit=limits.max_storage_bytes,
            )


async def record_gauges(conn: AsyncConnection, org: OrgContext) -> None:
    """Stores the org's live gauges on this month's usage record (after they changed)."""
    await usage.record_gauges(conn, org.id)


def check_api_rate(org: OrgContext, requests_this_hour: int, now: dt.datetime) -> None:
    """Raises when this call (already counted) goes past the hourly limit."""
    limit = org.limits.max_api_requests_per_hour if org.limits else None
    if limit is None or requests_this_hour <= limit:
        return
    window_end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    raise QuotaExceeded(
        quota="api_requests_per_hour",
        subject=_subject(org),
        current=requests_this_hour - 1,
        limit=limit,
        retry_after_seconds=max(1, math.ceil((window_end - now).total_seconds())),
    )


async def check_compile_job(conn: AsyncConnection, org: OrgContext) -> None:
    """Raises when this month's compile jobs have reached the limit: an early answer, without
    the lock, before a compile costs a worker (``count_compile_job`` decides)."""
    await _compile_jobs_left(conn, org, lock=False)


async def count_compile_job(conn: AsyncConnection, org: OrgContext) -> None:
    """Counts one compile job this UTC month, or raises when the month's limit is reached.

    Under the org's quota row lock (held to the commit), in the transaction that records
    the job: concurrent compiles count one at a time, and a job is counted if and only if
    its record commits (fail closed).
    """
    await _compile_jobs_left(conn, org, lock=True)
    await compile_jobs.count_one(conn, org.id)
    await usage_alerts.check_compile_jobs(conn, org)


async def _compile_jobs_left(conn: AsyncConnection, org: OrgContext, *, lock: bool) -> None:
    limit = (await quotas.get_quotas(conn, org.id, lock=lock)).limits.max_compile_jobs_per_month
    if limit is None:
        return
    month = await compile_jobs.this_month(conn, org.id)
    if month.count >= limit:
        raise QuotaExceeded(
            quota="compile_jobs_per_month",
            subject=_subject(org),
            current=month.count,
            limit=limit,
            retry_after_seconds=max(1, month.seconds_left),
        )
