"""Quota tiers: named sets of limits. ``None`` means unlimited. Bytes are binary."""

from __future__ import annotations

import enum
from dataclasses import dataclass

GIB = 2**30


class QuotaTier(enum.StrEnum):
    """Stored as these strings; the proto enum is ``QUOTA_TIER_<NAME>``."""

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    UNLIMITED = "unlimited"


@dataclass(frozen=True)
class QuotaLimits:
    max_modules: int | None
    max_versions_per_module: int | None
    max_storage_bytes: int | None
    max_compile_jobs_per_month: int | None
    max_api_requests_per_hour: int | None


# QuotaLimits' fields, which are also org_quotas' columns.
LIMIT_COLUMNS: tuple[str, ...] = (
    "max_modules",
    "max_versions_per_module",
    "max_storage_bytes",
    "max_compile_jobs_per_month",
    "max_api_requests_per_hour",
)

TIER_LIMITS: dict[QuotaTier, QuotaLimits] = {
    QuotaTier.SMALL: QuotaLimits(10, 100, 5 * GIB, 5_000, 5_000),
    QuotaTier.MEDIUM: QuotaLimits(50, 500, 25 * GIB, 25_000, 25_000),
    QuotaTier.LARGE: QuotaLimits(200, 2_000, 100 * GIB, 100_000, 100_000),
    QuotaTier.UNLIMITED: QuotaLimits(None, None, None, None, None),
}
