-- depends: 0002_organizations
-- Quota limits (NULL = unlimited) and usage counters. Monthly rows are kept, never
-- reset: one row per org per UTC month; hourly API request counts per UTC hour.

CREATE TABLE org_quotas (
    org_id                     uuid PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    tier                       text NOT NULL CHECK (tier IN ('small', 'medium', 'large', 'unlimited')),
    max_modules                bigint CHECK (max_modules >= 0),
    max_versions_per_module    bigint CHECK (max_versions_per_module >= 0),
    max_storage_bytes          bigint CHECK (max_storage_bytes >= 0),
    max_compile_jobs_per_month bigint CHECK (max_compile_jobs_per_month >= 0),
    max_api_requests_per_hour  bigint CHECK (max_api_requests_per_hour >= 0),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE org_usage_periods (
    org_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    period_start date NOT NULL CHECK (extract(day FROM period_start) = 1),
    compile_jobs bigint NOT NULL DEFAULT 0 CHECK (compile_jobs >= 0),
    api_requests bigint NOT NULL DEFAULT 0 CHECK (api_requests >= 0),
    PRIMARY KEY (org_id, period_start)
);

CREATE TABLE org_api_requests_hourly (
    org_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    hour_start timestamptz NOT NULL CHECK (date_trunc('hour', hour_start) = hour_start),
    requests   bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    PRIMARY KEY (org_id, hour_start)
);
