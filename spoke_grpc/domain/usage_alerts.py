"""Usage alerts: a ``quota.threshold_crossed`` event when an organization's usage reaches a
threshold (by default 80% and 100%) of one of its limits, once per threshold and period.

Thresholds come from the organization's settings (``quota_alert_thresholds``: percents
separated by commas, e.g. ``50,90,100``; ``off`` for none). Periods: the UTC month for
modules, versions per module, storage and compile jobs, the UTC hour for API requests.
Allocation quotas and compile jobs are checked in the transaction of the change that used
them; API requests after the usage buffer's flush (``spoke_grpc.usage``). The record of
alerts raised (``quota_alerts``) makes each one exactly once, across processes. The mailer
emails each alert to the organization's admins when email is on.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping

from psycopg import AsyncConnection

from spoke_grpc.domain import events
from spoke_grpc.domain.events import EventType
from spoke_grpc.store import compile_jobs as compile_store
from spoke_grpc.store import quota_alerts, quotas, usage
from spoke_grpc.types import OrgContext

SETTING = "quota_alert_thresholds"
DEFAULT_THRESHOLDS: tuple[int, ...] = (80, 100)
MAX_THRESHOLD = 1000
MAX_THRESHOLDS = 10


def threshold_problem(value: str) -> str | None:
    """Why ``value`` is not a thresholds setting; None when it is one."""
    if value.strip().lower() in {"off", "none", ""}:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > MAX_THRESHOLDS:
        return f"at most {MAX_THRESHOLDS} thresholds"
    for part in parts:
        if not (part.isascii() and part.isdigit()) or not 1 <= int(part) <= MAX_THRESHOLD:
            return (
                f"{SETTING} must be percents from 1 to {MAX_THRESHOLD} separated by commas"
                f" (e.g. 80,100), or off; got {part[:20]!r}"
            )
    return None


def thresholds(settings: Mapping[str, str]) -> tuple[int, ...]:
    """The organization's thresholds, ascending (the defaults when unset or unusable)."""
    raw = settings.get(SETTING)
    if raw is None or threshold_problem(raw) is not None:
        return DEFAULT_THRESHOLDS
    if raw.strip().lower() in {"off", "none", ""}:
        return ()
    return tuple(sorted({int(p) for p in raw.split(",")}))


def crossed(levels: tuple[int, ...], used: int, limit: int | None) -> list[int]:
    """The thresholds ``used`` has reached out of ``limit`` (none when unlimited)."""
    if limit is None or limit <= 0:
        return []
    return [t for t in levels if used * 100 >= t * limit]


def month_period(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m")


def hour_period(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H")


async def raise_alerts(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    settings: Mapping[str, str],
    *,
    quota: str,
    used: int,
    limit: int | None,
    period: str,
    extra: Mapping[str, str] | None = None,
) -> list[int]:
    """Emits one event per threshold reached and not yet raised this period; returns them."""
    raised: list[int] = []
    if limit is None:
        return raised
    for threshold in crossed(thresholds(settings), used, limit):
        key = quota + (f"/{extra['module_id']}" if extra and "module_id" in extra else "")
        if not await quota_alerts.claim(conn, org_id, key, threshold, period, used, limit):
            continue
        await events.emit(
            conn,
            org_id,
            EventType.QUOTA_THRESHOLD_CROSSED,
            {
                "quota": quota,
                "threshold_percent": threshold,
                "used": used,
                "limit": limit,
                "period": period,
                **(extra or {}),
            },
        )
        raised.append(threshold)
    return raised


async def check_allocations(
    conn: AsyncConnection, org: OrgContext, *, module_id: uuid.UUID | None = None
) -> None:
    """After modules or versions were added: modules, storage and (for ``module_id``) the
    module's versions against their limits."""
    settings = org.org.settings
    if not thresholds(settings):
        return
    limits = (await quotas.get_quotas(conn, org.id)).limits
    period = month_period(dt.datetime.now(dt.UTC))
    gauges = await usage.gauges(conn, org.id)
    await raise_alerts(
        conn,
        org.id,
        settings,
        quota="modules",
        used=gauges.modules,
        limit=limits.max_modules,
        period=period,
    )
    await raise_alerts(
        conn,
        org.id,
        settings,
        quota="storage_bytes",
        used=gauges.storage_bytes,
        limit=limits.max_storage_bytes,
        period=period,
    )
    if module_id is not None and limits.max_versions_per_module is not None:
        cur = await conn.execute(
            "SELECT count(*) FROM module_versions WHERE org_id = %s AND module_id = %s",
            [org.id, module_id],
        )
        row = await cur.fetchone()
        await raise_alerts(
            conn,
            org.id,
            settings,
            quota="versions_per_module",
            used=int(row[0]) if row else 0,
            limit=limits.max_versions_per_module,
            period=period,
            extra={"module_id": str(module_id)},
        )


async def check_compile_jobs(conn: AsyncConnection, org: OrgContext) -> None:
    """After a compile job was counted."""
    if not thresholds(org.org.settings):
        return
    limit = (await quotas.get_quotas(conn, org.id)).limits.max_compile_jobs_per_month
    if limit is None:
        return
    month = await compile_store.this_month(conn, org.id)
    await raise_alerts(
        conn,
        org.id,
        org.org.settings,
        quota="compile_jobs_per_month",
        used=month.count,
        limit=limit,
        period=month_period(dt.datetime.now(dt.UTC)),
    )


async def check_api_requests(
    conn: AsyncConnection, org_id: uuid.UUID, hour: dt.datetime, used: int, limit: int
) -> None:
    """After a usage flush found ``used`` requests in ``hour``; reads the org's settings
    (it may have changed them since the calls)."""
    cur = await conn.execute("SELECT settings FROM organizations WHERE id = %s", [org_id])
    row = await cur.fetchone()
    if row is None:
        return
    await raise_alerts(
        conn,
        org_id,
        dict(row[0] or {}),
        quota="api_requests_per_hour",
        used=used,
        limit=limit,
        period=hour_period(hour),
    )
