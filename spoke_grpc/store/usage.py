"""Usage rows: API requests per hour and per month, compile jobs per month, and the monthly
gauges (modules, versions, storage bytes as last recorded in the month)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

from spoke_grpc.pagination import PageRequest

# One statement per flush. It first claims the batch: the writer's row (one per usage buffer,
# see migrations/0012) takes the batch number only if it is above the last one applied, so a
# batch retried after its COMMIT's reply was lost adds nothing. Counts of organizations
# deleted meanwhile are dropped (the join), rows are written in (org, hour) order so that
# concurrent flushes never deadlock, and the hour totals come back for this process's view
# of the rate quota: the new ones, or the stored ones when the batch was applied before.
# Rows of writers silent for WRITER_RETENTION are pruned, skipping any another flush holds.
_FLUSH = """
WITH claim AS (
    INSERT INTO usage_flush_writers AS w (writer, batch) VALUES (%(writer)s, %(batch)s)
    ON CONFLICT (writer) DO UPDATE SET batch = EXCLUDED.batch, written_at = now()
    WHERE w.batch < EXCLUDED.batch
    RETURNING w.writer
), pruned AS (
    DELETE FROM usage_flush_writers WHERE writer IN (
        SELECT writer FROM usage_flush_writers
        WHERE written_at < now() - %(retention)s::interval AND writer <> %(writer)s
        FOR UPDATE SKIP LOCKED)
), batch AS (
    SELECT b.org_id, b.hour_start, b.requests
    FROM unnest(%(orgs)s::uuid[], %(hours)s::timestamptz[], %(counts)s::bigint[])
         AS b (org_id, hour_start, requests)
    JOIN organizations o ON o.id = b.org_id
    WHERE EXISTS (SELECT FROM claim)
), monthly AS (
    INSERT INTO org_usage_periods AS p (org_id, period_start, api_requests)
    SELECT org_id, date_trunc('month', hour_start AT TIME ZONE 'UTC')::date, sum(requests)
    FROM batch GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (org_id, period_start)
    DO UPDATE SET api_requests = p.api_requests + EXCLUDED.api_requests
), hourly AS (
    INSERT INTO org_api_requests_hourly AS h (org_id, hour_start, requests)
    SELECT org_id, hour_start, requests FROM batch ORDER BY 1, 2
    ON CONFLICT (org_id, hour_start) DO UPDATE SET requests = h.requests + EXCLUDED.requests
    RETURNING h.org_id, h.hour_start, h.requests
)
SELECT org_id, hour_start, requests FROM hourly
UNION ALL
SELECT h.org_id, h.hour_start, h.requests
FROM org_api_requests_hourly h
JOIN unnest(%(orgs)s::uuid[], %(hours)s::timestamptz[]) AS k (org_id, hour_start)
    USING (org_id, hour_start)
WHERE NOT EXISTS (SELECT FROM claim)
"""

# How long a silent writer's last batch number is kept: a batch retried later than this
# after its lost reply would be counted again (the database was away that long).
WRITER_RETENTION = dt.timedelta(days=7)


@dataclass(frozen=True)
class Batch:
    """Counts per (org, hour) that one writer (usage buffer) adds as its flush number ``number``."""

    writer: uuid.UUID
    number: int
    counts: Mapping[tuple[uuid.UUID, dt.datetime], int]


async def flush(conn: AsyncConnection, batch: Batch) -> dict[tuple[uuid.UUID, dt.datetime], int]:
    """Adds the batch's counts to the database unless that batch was applied already;
    returns the totals of its hours."""
    keys = sorted(batch.counts)
    cur = await conn.execute(
        _FLUSH,
        {
            "writer": batch.writer,
            "batch": batch.number,
            "retention": WRITER_RETENTION,
            "orgs": [org for org, _ in keys],
            "hours": [hour for _, hour in keys],
            "counts": [batch.counts[key] for key in keys],
        },
    )
    return {(row[0], row[1]): int(row[2]) for row in await cur.fetchall()}


# The live gauges of one organization (%(org)s), in one place for every query that needs them.
_GAUGES = sql.SQL(
    "SELECT (SELECT count(*) FROM modules WHERE org_id = %(org)s) AS modules,"
    " count(*) AS versions, coalesce(sum(size_bytes), 0)::bigint AS storage_bytes"
    " FROM module_versions WHERE org_id = %(org)s"
)


@dataclass(frozen=True)
class Gauges:
    modules: int
    versions: int
    storage_bytes: int


@dataclass(frozen=True)
class LiveUsage:
    """Gauges from live state, this month's counters and this hour's flushed requests, and
    the last batch number applied for the reading process's usage buffer (None: none yet)."""

    modules: int
    versions: int
    storage_bytes: int
    compile_jobs: int
    api_requests: int
    api_requests_this_hour: int
    writer_batch: int | None


async def live_usage(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    month: dt.date,
    hour: dt.datetime,
    writer: uuid.UUID,
) -> LiveUsage:
    async with conn.cursor(row_factory=class_row(LiveUsage)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT g.modules, g.versions, g.storage_bytes,"
                " coalesce(p.compile_jobs, 0) AS compile_jobs,"
                " coalesce(p.api_requests, 0) AS api_requests,"
                " coalesce((SELECT requests FROM org_api_requests_hourly"
                "   WHERE org_id = %(org)s AND hour_start = %(hour)s), 0)"
                "   AS api_requests_this_hour,"
                " (SELECT batch FROM usage_flush_writers WHERE writer = %(writer)s)"
                "   AS writer_batch"
                " FROM ({}) AS g LEFT JOIN org_usage_periods p"
                "   ON p.org_id = %(org)s AND p.period_start = %(month)s"
            ).format(_GAUGES),
            {"org": org_id, "month": month, "hour": hour, "writer": writer},
        )
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("usage query returned no row")
    return row


async def gauges(conn: AsyncConnection, org_id: uuid.UUID) -> Gauges:
    """Modules, versions and stored bytes of the organization, counted now."""
    cur = await conn.execute(_GAUGES, {"org": org_id})
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("gauges query returned no row")
    return Gauges(int(row[0]), int(row[1]), int(row[2]))


async def record_gauges(conn: AsyncConnection, org_id: uuid.UUID) -> None:
    """Stores the live gauges on this UTC month's record (after a change to them)."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO org_usage_periods AS p (org_id, period_start, modules, versions,"
            " storage_bytes)"
            " SELECT %(org)s, date_trunc('month', now())::date, g.* FROM ({}) AS g"
            " ON CONFLICT (org_id, period_start) DO UPDATE SET modules = EXCLUDED.modules,"
            " versions = EXCLUDED.versions, storage_bytes = EXCLUDED.storage_bytes"
        ).format(_GAUGES),
        {"org": org_id},
    )


@dataclass(frozen=True)
class PeriodRow:
    period_start: dt.date
    modules: int
    versions: int
    storage_bytes: int
    compile_jobs: int
    api_requests: int


async def periods(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    *,
    first: dt.date,
    current: dt.date,
    page: PageRequest,
) -> list[PeriodRow]:
    """One record per month from ``current`` back to ``first`` (the org's creation month).

    A month without a row of its own carries the gauges of the latest month before it
    that has one (gauges are never reset by a new month) and zero counters.
    """
    before = page.after[0] if page.after else None
    async with conn.cursor(row_factory=class_row(PeriodRow)) as cur:
        await cur.execute(
            "SELECT m.month::date AS period_start,"
            " coalesce(g.modules, 0) AS modules, coalesce(g.versions, 0) AS versions,"
            " coalesce(g.storage_bytes, 0) AS storage_bytes,"
            " coalesce(p.compile_jobs, 0) AS compile_jobs,"
            " coalesce(p.api_requests, 0) AS api_requests"
            " FROM generate_series(%(current)s::timestamp, %(first)s::timestamp,"
            "   interval '-1 month') AS m (month)"
            " LEFT JOIN org_usage_periods p"
            "   ON p.org_id = %(org)s AND p.period_start = m.month::date"
            " LEFT JOIN LATERAL (SELECT modules, versions, storage_bytes FROM org_usage_periods"
            "   WHERE org_id = %(org)s AND period_start <= m.month::date"
            "   AND modules IS NOT NULL"
            "   ORDER BY period_start DESC LIMIT 1) AS g ON true"
            " WHERE %(before)s::date IS NULL OR m.month::date < %(before)s::date"
            " ORDER BY m.month DESC LIMIT %(limit)s",
            {
                "org": org_id,
                "current": current,
                "first": first,
                "before": before,
                "limit": page.fetch,
            },
        )
        return await cur.fetchall()
