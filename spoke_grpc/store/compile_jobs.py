"""Compile jobs: one row per CompileVersion or CheckCompatibility call that compiled (or was
answered from the cache), and the organization's count of them this UTC month.

The month is the database's: ``date_trunc('month', now())`` in the session's UTC, the same
month key every usage record uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection


@dataclass(frozen=True)
class CompileJob:
    org_id: uuid.UUID
    kind: str  # 'compile' | 'compatibility'
    module_id: uuid.UUID
    module_name: str
    version_id: uuid.UUID
    version: str
    languages: Sequence[str]
    outcome: str  # 'compiled' | 'cached' | 'failed' | 'timed_out' | 'too_large'
    duration_ms: int
    requested_by: uuid.UUID | None
    against_version_id: uuid.UUID | None = None
    against_version: str | None = None


async def record(conn: AsyncConnection, job: CompileJob) -> None:
    await conn.execute(
        "INSERT INTO compile_jobs (org_id, kind, module_id, module_name, version_id, version,"
        " against_version_id, against_version, languages, outcome, duration_ms, requested_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            job.org_id,
            job.kind,
            job.module_id,
            job.module_name,
            job.version_id,
            job.version,
            job.against_version_id,
            job.against_version,
            list(job.languages),
            job.outcome,
            job.duration_ms,
            job.requested_by,
        ],
    )


@dataclass(frozen=True)
class MonthCount:
    """This UTC month's compile jobs so far, and the seconds left in the month."""

    count: int
    seconds_left: int


async def this_month(conn: AsyncConnection, org_id: uuid.UUID) -> MonthCount:
    cur = await conn.execute(
        "SELECT coalesce((SELECT compile_jobs FROM org_usage_periods"
        "   WHERE org_id = %s AND period_start = date_trunc('month', now())::date), 0),"
        " ceil(extract(epoch FROM date_trunc('month', now()) + interval '1 month' - now()))",
        [org_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("the month's compile jobs query returned no row")
    return MonthCount(int(row[0]), int(row[1]))


async def count_one(conn: AsyncConnection, org_id: uuid.UUID) -> None:
    """Adds one compile job to this month's usage record."""
    await conn.execute(
        "INSERT INTO org_usage_periods AS p (org_id, period_start, compile_jobs)"
        " VALUES (%s, date_trunc('month', now())::date, 1)"
        " ON CONFLICT (org_id, period_start) DO UPDATE SET compile_jobs = p.compile_jobs + 1",
        [org_id],
    )
