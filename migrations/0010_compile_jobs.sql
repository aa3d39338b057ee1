-- depends: 0009_usage_gauges
-- One row per compile job (CompileVersion, CheckCompatibility): what was compiled, for which
-- languages, how long it took and how it ended. Jobs are history: they keep the module and
-- version they name (no foreign key to them) when those are deleted; they go with their
-- organization. The monthly count the quota enforces is org_usage_periods.compile_jobs,
-- kept in the same transaction as the job's row.

CREATE TABLE compile_jobs (
    org_id         uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    kind           text NOT NULL CHECK (kind IN ('compile', 'compatibility')),
    module_id      uuid NOT NULL,
    module_name    text COLLATE "C" NOT NULL,
    version_id     uuid NOT NULL,
    version        text NOT NULL,
    -- CheckCompatibility's against_version.
    against_version_id uuid,
    against_version    text,
    languages      text[] NOT NULL DEFAULT '{}',
    outcome        text NOT NULL
                   CHECK (outcome IN ('compiled', 'cached', 'failed', 'timed_out', 'too_large')),
    duration_ms    integer NOT NULL CHECK (duration_ms >= 0),
    requested_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    CHECK ((kind = 'compatibility') = (against_version_id IS NOT NULL))
);
CREATE INDEX compile_jobs_org_time_idx ON compile_jobs (org_id, created_at DESC);
